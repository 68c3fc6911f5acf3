//! polld's Subversion backend.

/// Registered by the binary as `type = "svn"`.
pub struct SvnBackend;
