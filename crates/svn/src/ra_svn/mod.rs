//! The cheap check over `svn://`: a small client of svn's own protocol on a connection
//! kept from poll to poll, instead of an `svn info` process (about 8 ms of CPU each).
//!
//! A poll is `get-latest-rev` (the repository's youngest revision); when that is the
//! revision this poller saw last, the answer is known and the poll ends after one round
//! trip. Otherwise `stat` at that revision gives the polled URL's last changed
//! revision, exactly what `svn info` reports as "Last Changed Rev".
//!
//! A kept connection the server has closed meanwhile is noticed on use and opened
//! again, once per poll. A connection that cannot be made, or an answer this client
//! does not know, is left to `svn info` (see `check.rs`).
//!
//! Written here rather than taken from a crate: no Rust crate speaks ra_svn without
//! linking Subversion's C libraries and APR (the bindings), which would put a C
//! library's networking, and its failures, inside the daemon. What the check needs is
//! small and stable since svn 1.0: the wire format (`wire.rs`), a greeting, ANONYMOUS or
//! CRAM-MD5 (`cram.rs`) and two commands (`session.rs`), every read bounded.

mod conn;
mod cram;
mod error;
mod session;
mod wire;

use tokio::sync::Mutex;

use crate::check::{Problem, Seen};
use crate::command::Login;
use crate::error::SvnError;
use crate::info::Info;

use error::RaError;
use session::Session;
pub(crate) use session::Target;

pub(crate) struct RaSvnCheck {
    target: Target,
    /// The kept session; taken out while in use, so a poll cut off by its deadline
    /// leaves none behind in an unknown state.
    session: Mutex<Option<Session>>,
}

impl RaSvnCheck {
    pub(crate) fn new(target: Target) -> RaSvnCheck {
        RaSvnCheck {
            target,
            session: Mutex::new(None),
        }
    }

    /// The polled URL's [`Info`]; `None` when it is `last`'s, the repository not having
    /// moved since.
    pub(crate) async fn check(
        &self,
        login: &Login,
        last: Option<&Seen>,
    ) -> Result<Option<Seen>, Problem> {
        let mut slot = self.session.lock().await;
        let (mut session, reused) = match slot.take() {
            Some(session) => (session, true),
            None => (self.open(login).await?, false),
        };
        let seen = match self.exchange(&mut session, login, last).await {
            Err(RaError::Broken(_)) if reused => {
                // Most likely the server dropped the idle connection: once more, afresh.
                session = self.open(login).await?;
                self.exchange(&mut session, login, last)
                    .await
                    .map_err(problem)?
            }
            answer => answer.map_err(problem)?,
        };
        *slot = Some(session);
        Ok(seen)
    }

    async fn open(&self, login: &Login) -> Result<Session, Problem> {
        Session::open(&self.target, login).await.map_err(problem)
    }

    async fn exchange(
        &self,
        session: &mut Session,
        login: &Login,
        last: Option<&Seen>,
    ) -> Result<Option<Seen>, RaError> {
        let youngest = session.latest_revision(login).await?;
        if let Some(last) = last
            && last.uuid == session.uuid
            && last.info.youngest == youngest
        {
            return Ok(None);
        }
        let last_changed = session
            .last_changed(youngest, login)
            .await?
            .ok_or_else(|| RaError::Failure("the URL names nothing in the repository".into()))?;
        if last_changed > youngest {
            return Err(RaError::protocol(format!(
                "last changed revision {last_changed} is after the youngest, {youngest}"
            )));
        }
        Ok(Some(Seen {
            uuid: session.uuid.clone(),
            info: Info {
                youngest,
                last_changed,
                url: self.target.url.clone(),
                root: session.root.clone(),
            },
        }))
    }
}

/// What the poll does about `error`.
fn problem(error: RaError) -> Problem {
    match error {
        RaError::AuthFailed(message) => Problem::Fail(SvnError::Authentication {
            via: "svn://",
            message,
        }),
        RaError::LoginNeeded => Problem::Fail(SvnError::LoginNeeded { via: "svn://" }),
        // svn may still get through (a proxy, IPv6 when this tried IPv4) and otherwise
        // says why in its own words.
        RaError::Connect(_) | RaError::Broken(_) | RaError::Failure(_) => Problem::Fallback {
            reason: error.to_string(),
            sticky: false,
        },
        RaError::Malformed(_) | RaError::Protocol(_) | RaError::NoMechanism(_) => {
            Problem::Fallback {
                reason: error.to_string(),
                sticky: true,
            }
        }
    }
}
