//! One svn poller: `svn info`, compare with the cursor, and only then `svn log`.

use async_trait::async_trait;
use polld_backend::{Cursor, NewChange, PollError, PollOutcome, Poller};

use crate::LogContext;
use crate::changes::{self, Context};
use crate::command::{Login, Svn};
use crate::cursor;
use crate::error::SvnError;
use crate::info::{self, Info};
use crate::location::Location;
use crate::log;
use crate::split::Splitter;

/// Revisions asked for per `svn log` run. Pages keep each run's output, and so the
/// memory of one poll's parsing, bounded however far behind the poller is; the loop
/// keeps asking until it reaches the revision `svn info` reported, so nothing is
/// skipped.
const PAGE: u64 = 100;

pub(crate) struct Settings {
    pub(crate) name: String,
    /// As configured: may hold credentials, so it is used only to scrub messages.
    pub(crate) repo: String,
    pub(crate) location: Location,
    pub(crate) splitter: Splitter,
    /// The `username` key, else the URL's user.
    pub(crate) username: Option<String>,
    pub(crate) password_env: Option<String>,
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
        let url = &self.settings.location.url;
        // The trailing `@` pins the peg revision to HEAD explicitly, so an `@` inside
        // the URL's path is never read as one.
        let answer = self
            .settings
            .svn
            .run("info", &[], &format!("{url}@"), login, &self.log())
            .await?;
        let info = info::parse(&answer)?;
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
            Some(old) => self.read_log(old + 1, &info, login).await?,
        };
        Ok(PollOutcome::Advanced {
            cursor: cursor::encode(info.last_changed)?,
            changes,
        })
    }

    /// Every revision in `from..=info.last_changed` that touched the polled URL, page by
    /// page, oldest first.
    async fn read_log(
        &self,
        from: u64,
        info: &Info,
        login: &Login,
    ) -> Result<Vec<NewChange>, SvnError> {
        let prefix = info.prefix()?;
        let context = Context {
            prefix: &prefix,
            splitter: &self.settings.splitter,
        };
        // Pinned to the youngest revision `svn info` saw, so commits arriving meanwhile
        // cannot change what this poll reads; the next poll gets them.
        let target = format!("{}@{}", self.settings.location.url, info.youngest);
        let to = info.last_changed;
        let mut changes = Vec::new();
        let mut start = from;
        loop {
            let options = [
                "--verbose".to_owned(),
                "--revision".to_owned(),
                format!("{start}:{to}"),
                "--limit".to_owned(),
                PAGE.to_string(),
            ];
            let page = self
                .settings
                .svn
                .run("log", &options, &target, login, &self.log())
                .await?;
            let mut count = 0;
            let mut last: Option<u64> = None;
            log::parse(&page, |entry| {
                let after = last.unwrap_or(start.saturating_sub(1));
                if entry.revision <= after || entry.revision > to {
                    return Err(SvnError::LogOrder {
                        got: entry.revision,
                        from,
                        to,
                        after,
                    });
                }
                last = Some(entry.revision);
                count += 1;
                changes.extend(changes::from_entry(entry, &context)?);
                Ok(())
            })?;
            match last {
                Some(last) if count >= PAGE && last < to => start = last + 1,
                _ => break,
            }
        }
        for change in &changes {
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
        Ok(changes)
    }
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
