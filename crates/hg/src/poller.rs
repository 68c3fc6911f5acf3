//! One hg poller: list the remote's heads, compare with the cursor, and only then pull
//! and walk.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use polld_backend::filter::PathFilter;
use polld_backend::limits::Files;
use polld_backend::{Cursor, NewChange, PollError, PollOutcome, Poller};

use crate::LogContext;
use crate::cursor::{self, State};
use crate::error::HgError;
use crate::heads::{self, HttpAuth, RemoteHeads, WireClient};
use crate::location::{Location, Transport};
use crate::mirror::Mirror;
use crate::walk::{self, Found};
use crate::watch::Watch;

/// http(s) credentials as configured: resolved at every poll.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuthConfig {
    pub(crate) username: Option<String>,
    pub(crate) password_env: Option<String>,
}

pub(crate) struct Settings {
    pub(crate) name: String,
    /// As configured: may hold credentials, so it is used only to scrub messages.
    pub(crate) repo: String,
    pub(crate) location: Location,
    pub(crate) watch: Watch,
    pub(crate) auth: AuthConfig,
    /// `paths` and `ignore_paths`, checked on every file a change is read with.
    pub(crate) paths: Arc<PathFilter>,
}

pub(crate) struct HgPoller {
    settings: Settings,
    /// The repo as it may be logged.
    shown_repo: String,
    mirror: Mirror,
    wire: Option<WireClient>,
    /// Serialises use of the mirror should the core ever overlap two polls of one poller.
    mirror_lock: tokio::sync::Mutex<()>,
}

/// The credentials of one poll.
struct Credentials {
    username: String,
    password: Option<String>,
}

impl Credentials {
    /// An `[auth]` section for this one remote (`prefix = *`: the rc is used for one
    /// command against one remote). Written to a 0600 temp file, never to argv.
    fn rc_section(&self) -> String {
        let mut text = format!(
            "[auth]\npolld.prefix = *\npolld.schemes = http https\npolld.username = {}\n",
            self.username
        );
        if let Some(password) = &self.password {
            text.push_str(&format!("polld.password = {password}\n"));
        }
        text
    }
}

impl HgPoller {
    pub(crate) fn new(settings: Settings, mirror: Mirror, wire: Option<WireClient>) -> HgPoller {
        HgPoller {
            shown_repo: polld_backend::redact::strip_userinfo(&settings.repo),
            settings,
            mirror,
            wire,
            mirror_lock: tokio::sync::Mutex::new(()),
        }
    }

    fn log(&self) -> LogContext<'_> {
        LogContext {
            poller: &self.settings.name,
            repo: &self.shown_repo,
        }
    }

    async fn poll_inner(&self, cursor: Option<&Cursor>) -> Result<PollOutcome, HgError> {
        let old = cursor.map(cursor::decode).transpose()?;
        let credentials = self.credentials()?;
        let new = self
            .settings
            .watch
            .select(self.remote_heads(credentials.as_ref()).await?);
        if old.as_ref() == Some(&new) {
            return Ok(PollOutcome::Unchanged);
        }

        let _mirror_guard = self.mirror_lock.lock().await;
        let secret_rc = credentials.as_ref().map(Credentials::rc_section);
        let changes = match &old {
            None => {
                self.fill_mirror(&new.nodes(), secret_rc.as_deref()).await?;
                Vec::new()
            }
            Some(old) => self.report(old, &new, secret_rc.as_deref()).await?,
        };
        Ok(PollOutcome::Advanced {
            cursor: cursor::encode(&new)?,
            changes,
        })
    }

    fn credentials(&self) -> Result<Option<Credentials>, HgError> {
        let location = &self.settings.location;
        let auth = &self.settings.auth;
        let Some(username) = auth
            .username
            .clone()
            .or_else(|| location.url_username.clone())
        else {
            return Ok(None);
        };
        let password = match &auth.password_env {
            Some(var) => {
                Some(std::env::var(var).map_err(|_| HgError::MissingPassword(var.clone()))?)
            }
            None => location.url_password.clone(),
        };
        let unusable = |s: &str| s.contains(['\n', '\r']) || s.trim() != s;
        if unusable(&username) || password.as_deref().is_some_and(unusable) {
            return Err(HgError::UnusableCredentials);
        }
        Ok(Some(Credentials { username, password }))
    }

    async fn remote_heads(
        &self,
        credentials: Option<&Credentials>,
    ) -> Result<RemoteHeads, HgError> {
        let location = &self.settings.location;
        match (&location.transport, &self.wire) {
            (Transport::Http(url), Some(wire)) => {
                let auth = credentials.map(|c| HttpAuth {
                    username: &c.username,
                    password: c.password.as_deref(),
                });
                let watch = &self.settings.watch;
                wire.heads(
                    url,
                    auth.as_ref(),
                    watch.lists_branches(),
                    watch.lists_bookmarks(),
                )
                .await
            }
            _ => heads::parse_polld_heads(&self.mirror.remote_heads(&location.source).await?),
        }
    }

    /// Makes sure the mirror has `nodes`, pulling those it lacks. The first poll does
    /// this too, so later polls pull increments and a stripped head can still be
    /// recognised.
    async fn fill_mirror(&self, nodes: &[&str], secret_rc: Option<&str>) -> Result<(), HgError> {
        if nodes.is_empty() {
            return Ok(());
        }
        let present = if self.mirror.exists().await {
            self.mirror.present(nodes).await?
        } else {
            self.mirror.init().await?;
            HashSet::new()
        };
        let missing: Vec<&str> = nodes
            .iter()
            .copied()
            .filter(|n| !present.contains(*n))
            .collect();
        if !missing.is_empty() {
            tracing::debug!(
                poller = self.settings.name,
                repo = self.shown_repo,
                heads = missing.len(),
                mirror = %self.mirror.dir().display(),
                "pulling"
            );
            self.mirror
                .pull(&self.settings.location.source, &missing, secret_rc)
                .await?;
        }
        Ok(())
    }

    async fn report(
        &self,
        old: &State,
        new: &State,
        secret_rc: Option<&str>,
    ) -> Result<Vec<NewChange>, HgError> {
        let new_nodes = new.nodes();
        if new_nodes.is_empty() {
            // Every watched name is gone from the remote: just forget them.
            return Ok(Vec::new());
        }
        self.fill_mirror(&new_nodes, secret_rc).await?;
        let old_nodes = old.nodes();
        let mut known = HashSet::new();
        let mut gone = HashSet::new();
        for (node, kept) in self.mirror.old_heads(&old_nodes, &new_nodes).await? {
            if !kept {
                gone.insert(node.clone());
            }
            known.insert(node);
        }
        let known_nodes: Vec<&str> = known.iter().map(String::as_str).collect();
        let fresh = if known.is_empty() {
            // Nothing bounds the walk, so only the new heads are reported (see `walk`):
            // read just those, not a whole history.
            self.mirror.changesets_of(&new_nodes).await?
        } else {
            self.mirror.changesets(&new_nodes, &known_nodes).await?
        };
        let found = Found {
            fresh: &fresh,
            known: &known,
            gone: &gone,
        };
        let names = self.settings.watch.names(old, new);
        let mut changes =
            walk::changes(&names, old, new, &found, &self.settings.paths, &self.log());
        // Merges list what they brought to the branch, as git's first-parent diff does:
        // one `hg status` each (merges are few; the template cannot say this).
        let merges: HashSet<&str> = fresh
            .iter()
            .filter(|cs| cs.parents.len() > 1)
            .map(|cs| cs.node.as_str())
            .collect();
        for change in changes.iter_mut() {
            if merges.contains(change.revision.as_str()) {
                let mut files = Files::filtered(&self.settings.paths);
                for file in self.mirror.files_against_p1(&change.revision).await? {
                    files.push(file);
                }
                (change.files, change.files_total) = files.into_parts();
            }
        }
        tracing::debug!(
            poller = self.settings.name,
            repo = self.shown_repo,
            fresh = fresh.len(),
            changes = changes.len(),
            "remote moved"
        );
        Ok(changes)
    }
}

#[async_trait]
impl Poller for HgPoller {
    async fn poll(&self, cursor: Option<&Cursor>) -> Result<PollOutcome, PollError> {
        self.poll_inner(cursor)
            .await
            .map_err(|e| e.into_poll_error(&self.settings.repo))
    }

    fn describe(&self) -> String {
        self.settings.watch.summary().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_become_an_auth_section_for_any_http_scheme() {
        let credentials = Credentials {
            username: "ada".into(),
            password: Some("p w#;".into()),
        };
        assert_eq!(
            credentials.rc_section(),
            "[auth]\npolld.prefix = *\npolld.schemes = http https\n\
             polld.username = ada\npolld.password = p w#;\n"
        );
        let user_only = Credentials {
            username: "ada".into(),
            password: None,
        };
        assert!(!user_only.rc_section().contains("password"));
    }
}
