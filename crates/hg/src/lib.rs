//! polld's Mercurial backend.
//!
//! Each poll first lists the remote's branch heads and bookmarks without pulling: over
//! http(s) with two GETs of hg's wire protocol (`?cmd=branchmap`,
//! `?cmd=listkeys&namespace=bookmarks`), elsewhere (local path, `file://`, `ssh://`)
//! with one `hg polld-heads` (polld's own extension, making the same two calls through
//! hg's peer). When the watched heads are where the cursor says, the poll ends there:
//! no pull, no disk write. Otherwise the new heads are pulled into a per-poller mirror
//! and the new changesets are read from it with one `hg log` template.
//!
//! Mercurial is driven through the `hg` client only, isolated from the user's and the
//! repositories' configuration and bounded in time (see `hg.rs`).
//!
//! Choices worth knowing when reading a poller's output:
//!
//! - The first poll reports nothing but already pulls the watched heads, so that the
//!   second poll pulls increments and can recognise a stripped head.
//! - The cursor is `{"branches": {"default": ["<node>", ...]}, "bookmarks": {"@":
//!   "<node>"}}`: full hashes, every head of a branch (also when it has several, and
//!   closed heads too).
//! - A named branch reports only changesets on that branch (a changeset of another
//!   branch merged into it is not reported; the merge is); a bookmark reports
//!   `only(new, known)`. A changeset new on two watched names is reported once.
//! - Closing a branch is a changeset on it, reported like any other; the closed head
//!   stays in the cursor, and a commit that reopens the branch is reported too.
//! - A head that is gone from the remote (stripped, rewritten; or a bookmark moved
//!   backwards or sideways) is logged with a warning; what is reported is every
//!   changeset no previously known head reaches. If the mirror has none of a name's
//!   previous heads (it was deleted and they are gone from the remote), only the new
//!   heads are reported: never a whole history.
//! - Text that is not UTF-8 (file names) is converted lossily (U+FFFD).

mod cacerts;
mod cursor;
mod error;
mod heads;
mod hg;
mod location;
mod mirror;
mod poller;
mod walk;
mod watch;

use std::sync::Arc;

use polld_backend::{Backend, Poller, PollerContext, Refusal, StringList};
use serde::Deserialize;

use crate::heads::WireClient;
use crate::location::{Location, Transport};
use crate::mirror::Mirror;
use crate::poller::{AuthConfig, HgPoller, Settings};
use crate::watch::Watch;

/// The `poller` and `repo` fields of this crate's log lines (the repo without
/// credentials): never a secret.
pub(crate) struct LogContext<'a> {
    pub(crate) poller: &'a str,
    pub(crate) repo: &'a str,
}

/// The Mercurial backend; register it with `registry.register(HgBackend::new())`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HgBackend;

impl HgBackend {
    pub fn new() -> HgBackend {
        HgBackend
    }
}

/// An hg poller's own keys (the core has already taken the common ones).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HgConfig {
    /// Named branches to watch, names or globs (one string or a list); absent:
    /// `["default"]`. `[]` with `bookmarks` watches bookmarks only.
    #[serde(default)]
    pub branches: Option<StringList>,
    /// Bookmarks to watch, names or globs.
    #[serde(default)]
    pub bookmarks: StringList,
    /// Login for http(s) basic auth (overrides a user in the URL).
    #[serde(default)]
    pub username: Option<String>,
    /// The environment variable holding the http(s) password, read at every poll.
    #[serde(default)]
    pub password_env: Option<String>,
}

impl Backend for HgBackend {
    const TYPE: &'static str = "hg";
    type Config = HgConfig;

    fn build(&self, context: PollerContext, config: HgConfig) -> Result<Arc<dyn Poller>, Refusal> {
        let scrub = |message: String| polld_backend::redact::scrub(&message, &context.repo);
        let location = Location::parse(&context.repo, &context.config_dir)
            .map_err(|message| Refusal::at("repo", scrub(message)))?;
        let default_branches = StringList(vec!["default".to_owned()]);
        let branches = config.branches.as_ref().unwrap_or(&default_branches);
        let watch = Watch::new(&branches.0, &config.bookmarks.0)?;
        let auth = auth_config(&config, &location)?;
        let wire = match location.transport {
            Transport::Http(_) => Some(WireClient::new(context.timeout, context.ca_file.clone())),
            _ => None,
        };
        let mirror = Mirror::new(
            context.mirror_dir,
            context.secrets_dir,
            context.timeout,
            context.ca_file,
        )
        .map_err(|e| scrub(e.to_string()))?;
        Ok(Arc::new(HgPoller::new(
            Settings {
                name: context.name,
                repo: context.repo,
                location,
                watch,
                auth,
                paths: context.paths,
            },
            mirror,
            wire,
        )))
    }
}

/// Refuses credential keys that cannot apply to the repo, so that they are not silently
/// ignored.
fn auth_config(config: &HgConfig, location: &Location) -> Result<AuthConfig, String> {
    let is_http = matches!(location.transport, Transport::Http(_));
    if (config.username.is_some() || config.password_env.is_some()) && !is_http {
        return Err(
            "username and password_env apply only to http(s) repos (ssh uses your ssh keys)".into(),
        );
    }
    if config.username.as_deref().is_some_and(str::is_empty) {
        return Err("username is empty".into());
    }
    match config.password_env.as_deref() {
        Some("") => Err("password_env is empty: it names an environment variable".into()),
        Some(_) if config.username.is_none() && location.url_username.is_none() => {
            Err("password_env needs a username (the username key or user@ in the URL)".into())
        }
        _ => Ok(AuthConfig {
            username: config.username.clone(),
            password_env: config.password_env.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HgConfig {
        HgConfig::default()
    }

    #[test]
    fn credentials_only_over_http() {
        let local = Location::parse("/srv/r", std::path::Path::new("/")).unwrap();
        let http = Location::parse("https://h/r", std::path::Path::new("/")).unwrap();
        let mut c = config();
        c.password_env = Some("PW".into());
        assert!(auth_config(&c, &http).unwrap_err().contains("username"));
        c.username = Some("ada".into());
        assert!(auth_config(&c, &http).is_ok());
        assert!(auth_config(&c, &local).unwrap_err().contains("http"));
    }
}
