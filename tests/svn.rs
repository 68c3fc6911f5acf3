//! End-to-end: `polld once` against real Subversion repositories.
