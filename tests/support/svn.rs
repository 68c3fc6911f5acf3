//! Fixtures for Subversion: repositories, working copies, svnserve.
