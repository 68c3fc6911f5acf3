//! What can go wrong talking to svnserve, sorted by what the poll should do about it.

use super::wire::Malformed;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RaError {
    /// No connection could be made: `svn info` is asked instead, so the error a user
    /// sees is svn's own.
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The connection broke mid-exchange (a kept connection the server closed while
    /// idle, most often): reconnected once.
    #[error("the connection broke: {0}")]
    Broken(#[source] std::io::Error),
    #[error(transparent)]
    Malformed(Malformed),
    /// Well-formed, but not what this client knows how to read.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// The server has no mechanism this client speaks (a SASL-only svnserve).
    #[error("no authentication mechanism polld speaks among {0}")]
    NoMechanism(String),
    /// The server refused the credentials: its own words ("Password incorrect").
    #[error("{0}")]
    AuthFailed(String),
    /// The server wants a login and none is configured.
    #[error("the server asks for a login and none is configured")]
    LoginNeeded,
    /// The server answered a command with an error (no such path, access denied).
    #[error("the server answered with an error: {0}")]
    Failure(String),
}

impl RaError {
    pub(crate) fn protocol(what: impl Into<String>) -> RaError {
        RaError::Protocol(what.into())
    }
}
