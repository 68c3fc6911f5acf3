//! One svn poller: the cheap check (or `svn info`), compare with the cursor, and only
//! then `svn log`.

use std::sync::Arc;

use async_trait::async_trait;
use polld_backend::filter::PathFilter;
use polld_backend::limits::MAX_CHANGES_PER_POLL;
use polld_backend::process::ProcessError;
use polld_backend::{Cursor, NewChange, PollError, PollOutcome, Poller};

use crate::LogContext;
use crate::changes::{self, Context};
use crate::check::CheapCheck;
use crate::command::{Login, Svn};
use crate::cursor;
use crate::error::SvnError;
use crate::info::{self, Info};
use crate::location::Location;
use crate::log;
use crate::split::Splitter;

/// Revisions asked for per `svn log` run. Pages keep each run's output, and so the
/// memory of one poll's parsing, bounded however far behind the poller is; the loop
/// keeps asking until it reaches the revision `svn info` reported (or has read
/// [`MAX_CHANGES_PER_POLL`] changes, and the next poll follows at once), so nothing is
/// skipped.
const PAGE: u64 = 100;

/// The most one `svn log` run may print. svn's output is read whole before it is parsed,
/// so this is the memory one poll's log may take. A page that prints more is asked for
/// again at half the size, down to one revision; a single revision that still prints
/// more (a message of tens of megabytes) is read without its message.
const MAX_LOG_BYTES: usize = 32 * 1024 * 1024;

/// The most `svn info` may print: one short XML document.
const MAX_INFO_BYTES: usize = 1024 * 1024;

/// The comments of a revision read without its message.
const MESSAGE_NOT_READ: &str =
    "[polld: message not read: this revision's log is larger than 32 MiB]";

pub(crate) struct Settings {
    pub(crate) name: String,
    /// As configured: may hold credentials, so it is used only to scrub messages.
    pub(crate) repo: String,
    pub(crate) location: Location,
    pub(crate) splitter: Splitter,
    /// `paths` and `ignore_paths`, checked on each file as placed by the splitter.
    pub(crate) paths: Arc<PathFilter>,
    /// The `username` key, else the URL's user.
    pub(crate) username: Option<String>,
    pub(crate) password_env: Option<String>,
    /// In-process over `svn://` and `http(s)://`; `svn info` otherwise.
    pub(crate) cheap: CheapCheck,
    pub(crate) svn: Svn,
}

pub(crate) struct SvnPoller {
    settings: Settings,
    /// The repo as it may be logged.
    shown_repo: String,
}

impl SvnPoller {
    pub(crate) fn new(settings: Settings) -> SvnPoller {
        let shown_repo = polld_backend::redact::strip_userinfo(&settings.repo);
        SvnPoller {
            settings,
            shown_repo,
        }
    }

    fn log(&self) -> LogContext<'_> {
        LogContext {
            poller: &self.settings.name,
            repo: &self.shown_repo,
        }
    }

    /// The login for this poll: the password is read from the environment now, so a
    /// rotated secret is picked up without a reload.
    fn login(&self) -> Result<Login, SvnError> {
        let settings = &self.settings;
        let password = match &settings.password_env {
            Some(name) => {
                Some(std::env::var(name).map_err(|_| SvnError::MissingPassword(name.clone()))?)
            }
            None => settings.location.url_password.clone(),
        };
        Ok(Login {
            username: settings.username.clone(),
            password,
        })
    }

    async fn poll_with(
        &self,
        cursor: Option<&Cursor>,
        login: &Login,
    ) -> Result<PollOutcome, SvnError> {
        let old = cursor.map(cursor::decode).transpose()?;
        let info = match self.settings.cheap.info(login, &self.log()).await? {
            Some(info) => info,
            None => self.svn_info(login).await?,
        };
        let changes = match old {
            Some(old) if old == info.last_changed => return Ok(PollOutcome::Unchanged),
            None => {
                tracing::debug!(
                    poller = self.settings.name,
                    repo = self.shown_repo,
                    revision = info.last_changed,
                    "first poll: recorded the last changed revision"
                );
                Vec::new()
            }
            Some(old) if old > info.last_changed => {
                tracing::warn!(
                    poller = self.settings.name,
                    repo = self.shown_repo,
                    cursor = old,
                    revision = info.last_changed,
                    "the repository's last changed revision went backwards (repository \
                     replaced or reloaded?); continuing from it without reporting anything"
                );
                Vec::new()
            }
            Some(old) => {
                let log = self.read_log(old + 1, &info, login).await?;
                if let Some(last) = log.stopped_at {
                    return Ok(PollOutcome::Partial {
                        cursor: cursor::encode(last)?,
                        changes: log.changes,
                    });
                }
                log.changes
            }
        };
        Ok(PollOutcome::Advanced {
            cursor: cursor::encode(info.last_changed)?,
            changes,
        })
    }

    /// `svn info` of the polled URL.
    async fn svn_info(&self, login: &Login) -> Result<Info, SvnError> {
        // The trailing `@` pins the peg revision to HEAD explicitly, so an `@` inside
        // the URL's path is never read as one.
        let answer = self
            .settings
            .svn
            .run(
                "info",
                &[],
                &format!("{}@", self.settings.location.url),
                MAX_INFO_BYTES,
                login,
                &self.log(),
            )
            .await?;
        info::parse(&answer)
    }

    /// The revisions in `from..=info.last_changed` that touched the polled URL, page by
    /// page, oldest first, until [`MAX_CHANGES_PER_POLL`] changes are read.
    async fn read_log(&self, from: u64, info: &Info, login: &Login) -> Result<Log, SvnError> {
        let prefix = info.prefix()?;
        let context = Context {
            prefix: &prefix,
            splitter: &self.settings.splitter,
            paths: &self.settings.paths,
        };
        // Pinned to the youngest revision the check saw, so commits arriving meanwhile
        // cannot change what this poll reads; the next poll gets them.
        let target = format!("{}@{}", self.settings.location.url, info.youngest);
        let to = info.last_changed;
        let mut log = Log {
            changes: Vec::new(),
            stopped_at: None,
        };
        let mut start = from;
        let mut page = PAGE;
        let started = std::time::Instant::now();
        loop {
            let remaining = MAX_CHANGES_PER_POLL.saturating_sub(log.changes.len());
            let limit = page.min(u64::try_from(remaining).unwrap_or(PAGE)).max(1);
            let (output, message_read) =
                match self.run_log(&target, start, to, limit, login, true).await {
                    Ok(output) => (output, true),
                    Err(error) if is_too_big(&error) && page > 1 => {
                        page /= 2;
                        continue;
                    }
                    Err(error) if is_too_big(&error) => {
                        // One revision whose log alone is too big: a huge message.
                        // Read it again without the message, which is noted instead.
                        let output = self.run_log(&target, start, to, 1, login, false).await?;
                        (output, false)
                    }
                    Err(error) => return Err(error),
                };
            let mut count = 0;
            let mut last: Option<u64> = None;
            log::parse(&output, |mut entry| {
                let after = last.unwrap_or(start.saturating_sub(1));
                if entry.revision <= after || entry.revision > to {
                    return Err(SvnError::LogOrder {
                        got: entry.revision,
                        from,
                        to,
                        after,
                    });
                }
                if !message_read {
                    entry.message = Some(MESSAGE_NOT_READ.to_owned());
                }
                last = Some(entry.revision);
                count += 1;
                log.changes.extend(changes::from_entry(entry, &context)?);
                Ok(())
            })?;
            match last {
                Some(last) if count >= limit && last < to => {
                    // Enough for one poll, or long enough that the rest had better be
                    // a new poll than risk the poll's overall deadline.
                    if log.changes.len() >= MAX_CHANGES_PER_POLL
                        || started.elapsed() >= self.settings.svn.timeout
                    {
                        log.stopped_at = Some(last);
                        break;
                    }
                    start = last + 1;
                }
                _ => break,
            }
        }
        for change in &log.changes {
            tracing::debug!(
                poller = self.settings.name,
                repo = self.shown_repo,
                branch = change.branch.as_deref().unwrap_or("(trunk)"),
                project = change.project.as_deref(),
                revision = change.revision,
                files = change.files.len(),
                "new change"
            );
        }
        Ok(log)
    }

    /// One `svn log --verbose` run: up to `limit` revisions from `start` to `to`, with
    /// their messages or (`with_message` false) only their author and date.
    async fn run_log(
        &self,
        target: &str,
        start: u64,
        to: u64,
        limit: u64,
        login: &Login,
        with_message: bool,
    ) -> Result<Vec<u8>, SvnError> {
        let mut options = vec![
            "--verbose".to_owned(),
            "--revision".to_owned(),
            format!("{start}:{to}"),
            "--limit".to_owned(),
            limit.to_string(),
        ];
        if !with_message {
            for property in ["svn:author", "svn:date"] {
                options.push("--with-revprop".to_owned());
                options.push(property.to_owned());
            }
        }
        self.settings
            .svn
            .run("log", &options, target, MAX_LOG_BYTES, login, &self.log())
            .await
    }
}

/// What one poll read from `svn log`.
struct Log {
    changes: Vec<NewChange>,
    /// The last revision read when the poll stopped before the last changed one, at
    /// [`MAX_CHANGES_PER_POLL`] changes or after reading for a whole `timeout`.
    stopped_at: Option<u64>,
}

/// Whether `svn` printed more than it was allowed to.
fn is_too_big(error: &SvnError) -> bool {
    matches!(
        error,
        SvnError::Run {
            source: ProcessError::TooMuchOutput { .. },
            ..
        }
    )
}

#[async_trait]
impl Poller for SvnPoller {
    async fn poll(&self, cursor: Option<&Cursor>) -> Result<PollOutcome, PollError> {
        let repo = &self.settings.repo;
        let login = self.login().map_err(|e| e.into_poll_error(repo, None))?;
        self.poll_with(cursor, &login)
            .await
            .map_err(|e| e.into_poll_error(repo, login.password.as_deref()))
    }

    fn describe(&self) -> String {
        let mut line = self.settings.splitter.describe();
        if let Some(user) = &self.settings.username {
            line.push_str(&format!(", as {user}"));
        }
        line
    }
}
