//! The cheap "has it moved?" check without a process: the same [`Info`] `svn info`
//! gives, asked for in-process over `svn://` (`ra_svn.rs`) and `http(s)://`
//! (`dav.rs`). `svn+ssh://` and `file://` keep `svn info`.
//!
//! Both transports first ask for the repository's youngest revision, which changes with
//! every commit anywhere in the repository. The [`Info`] last read is kept in memory
//! with the repository's UUID and youngest revision: while they are the same, the
//! polled URL cannot have changed either, and that one question is the whole check.
//! (The cursor is still compared with the Info's last changed revision as before, so a
//! cursor the core failed to store is never mistaken for a current one.)
//!
//! What the check cannot answer is left to `svn info`, which then decides the poll as
//! it always did:
//! - a connection that cannot be made or breaks twice, or an error answer (no such
//!   path, access denied): for this poll only, so the error is svn's own;
//! - an answer the check does not understand (another authentication scheme than
//!   Basic or CRAM-MD5, a redirect, missing headers, odd XML): for the next hour, so a
//!   server the check cannot talk to costs one failed request an hour, not one a poll.
//!
//! Each new reason is logged once, at debug. A wrong password, a login the server asks
//! for and none is configured, and the deadline fail the poll directly: asking `svn`
//! would offer the same credentials a second time, or take a second `timeout`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::LogContext;
use crate::command::Login;
use crate::dav::DavCheck;
use crate::error::SvnError;
use crate::info::Info;
use crate::location::{Location, Scheme};
use crate::ra_svn::{RaSvnCheck, Target};

/// How long an answer the check does not understand sends a poller to `svn info`.
const PAUSE: Duration = Duration::from_secs(3600);

/// svnserve's port when the URL names none.
const SVN_PORT: u16 = 3690;

/// An [`Info`] and the repository it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) uuid: String,
    pub(crate) info: Info,
}

/// Why the check gave no answer.
#[derive(Debug)]
pub(crate) enum Problem {
    /// `svn info` is asked instead; `sticky` keeps asking it for [`PAUSE`].
    Fallback { reason: String, sticky: bool },
    /// The poll fails with this.
    Fail(SvnError),
}

impl Problem {
    /// An answer the check does not understand.
    pub(crate) fn sticky(reason: impl Into<String>) -> Problem {
        Problem::Fallback {
            reason: reason.into(),
            sticky: true,
        }
    }
}

enum Transport {
    Dav(DavCheck),
    RaSvn(RaSvnCheck),
}

impl Transport {
    fn name(&self) -> &'static str {
        match self {
            Transport::Dav(_) => "http(s)",
            Transport::RaSvn(_) => "svn://",
        }
    }
}

pub(crate) struct CheapCheck {
    transport: Option<Transport>,
    timeout: Duration,
    /// The last answer: reused while the repository's youngest revision is the same.
    last: Mutex<Option<Arc<Seen>>>,
    /// Until when `svn info` is used instead, after an answer the check did not
    /// understand.
    paused_until: Mutex<Option<Instant>>,
    /// The last reason logged for using `svn info`, so each is logged once.
    logged: Mutex<String>,
}

impl CheapCheck {
    /// The check for `location`; one that always defers to `svn info` for schemes it
    /// does not speak, or a URL it cannot take apart.
    pub(crate) fn new(
        location: &Location,
        ca_file: Option<PathBuf>,
        timeout: Duration,
    ) -> CheapCheck {
        let transport = match location.scheme {
            Scheme::Svn | Scheme::Http => Canonical::parse(&location.url).map(|url| {
                if location.scheme == Scheme::Svn {
                    Transport::RaSvn(RaSvnCheck::new(Target {
                        host: url
                            .host
                            .trim_start_matches('[')
                            .trim_end_matches(']')
                            .into(),
                        port: url.port,
                        url: url.url,
                    }))
                } else {
                    Transport::Dav(DavCheck::new(url.url, url.origin, ca_file, timeout))
                }
            }),
            Scheme::File | Scheme::SvnSsh => None,
        };
        CheapCheck {
            transport,
            timeout,
            last: Mutex::new(None),
            paused_until: Mutex::new(None),
            logged: Mutex::new(String::new()),
        }
    }

    /// The polled URL's [`Info`], or `None` when `svn info` must be asked.
    pub(crate) async fn info(
        &self,
        login: &Login,
        log: &LogContext<'_>,
    ) -> Result<Option<Info>, SvnError> {
        let Some(transport) = &self.transport else {
            return Ok(None);
        };
        let paused_until = *lock(&self.paused_until);
        if paused_until.is_some_and(|until| Instant::now() < until) {
            return Ok(None);
        }
        let last = lock(&self.last).clone();
        let asked = async {
            match transport {
                Transport::Dav(dav) => dav.check(login, last.as_deref()).await,
                Transport::RaSvn(ra_svn) => ra_svn.check(login, last.as_deref()).await,
            }
        };
        let answer = tokio::time::timeout(self.timeout, asked)
            .await
            .map_err(|_| SvnError::CheckTimeout {
                via: transport.name(),
                timeout: self.timeout,
            })?;
        match answer {
            Ok(None) => Ok(last.map(|seen| seen.info.clone())),
            Ok(Some(seen)) => {
                let info = seen.info.clone();
                *lock(&self.last) = Some(Arc::new(seen));
                Ok(Some(info))
            }
            Err(Problem::Fail(error)) => Err(error),
            Err(Problem::Fallback { reason, sticky }) => {
                if sticky {
                    *lock(&self.paused_until) = Some(Instant::now() + PAUSE);
                }
                let mut logged = lock(&self.logged);
                if *logged != reason {
                    tracing::debug!(
                        poller = log.poller,
                        repo = log.repo,
                        via = transport.name(),
                        reason = %reason,
                        for_an_hour = sticky,
                        "the cheap check cannot answer; asking `svn info`"
                    );
                    *logged = reason;
                }
                Ok(None)
            }
        }
    }
}

/// A lock whose holder cannot have panicked mid-update (plain assignments), so a
/// poisoned one is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A repository URL in the form svn itself canonicalises it to: scheme and host in
/// lower case, no default port, no empty path segments, no trailing `/`. The servers
/// derive the root URL they report from it, so root and URL compare as svn's do.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Canonical {
    /// The whole URL.
    url: String,
    /// `scheme://host[:port]`.
    origin: String,
    /// The host as written in URLs (an IPv6 address in brackets).
    host: String,
    port: u16,
}

impl Canonical {
    fn parse(url: &str) -> Option<Canonical> {
        let parsed = url::Url::parse(url).ok()?;
        if parsed.query().is_some()
            || parsed.fragment().is_some()
            || !parsed.username().is_empty()
            || parsed.password().is_some()
        {
            return None;
        }
        let scheme = parsed.scheme().to_ascii_lowercase();
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())?
            .to_ascii_lowercase();
        let default = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            "svn" => SVN_PORT,
            _ => return None,
        };
        let port = parsed.port().filter(|&port| port != default);
        let origin = match port {
            Some(port) => format!("{scheme}://{host}:{port}"),
            None => format!("{scheme}://{host}"),
        };
        let mut path = String::new();
        for segment in parsed.path().split('/').filter(|s| !s.is_empty()) {
            path.push('/');
            path.push_str(segment);
        }
        Some(Canonical {
            url: format!("{origin}{path}"),
            origin,
            host,
            port: port.unwrap_or(default),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_urls_are_svns() {
        let svn = Canonical::parse("SVN://Host.Example:3690/repo//trunk/").unwrap();
        assert_eq!(svn.url, "svn://host.example/repo/trunk");
        assert_eq!((svn.host.as_str(), svn.port), ("host.example", 3690));
        let http = Canonical::parse("https://[::1]:8443/svn/r%C3%A9po%20x").unwrap();
        assert_eq!(http.url, "https://[::1]:8443/svn/r%C3%A9po%20x");
        assert_eq!(http.origin, "https://[::1]:8443");
        assert_eq!(Canonical::parse("http://h:80/").unwrap().url, "http://h");
        assert_eq!(Canonical::parse("http://h/r?x=1"), None);
        assert_eq!(Canonical::parse("http://u@h/r"), None);
        assert_eq!(Canonical::parse("file:///srv/r"), None);
    }
}
