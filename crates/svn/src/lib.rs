//! polld's Subversion backend.
//!
//! Each poll first asks for the revision at which anything at or below the polled URL
//! last changed. Over `svn://` and `http(s)://` that is the cheap check, in-process: a
//! kept svnserve connection or a pooled HTTP client asks the server directly (see
//! `check.rs`), usually one round trip and no process. Elsewhere, and whenever the
//! cheap check cannot answer, it is `svn info --xml`. When that revision is the
//! cursor's, the poll ends there. Otherwise `svn log --xml --verbose` is read, a page
//! of revisions at a time, from the revision after the cursor up to that one, and each
//! revision becomes one change per (project, branch) its paths land on under the
//! `split` rule.
//!
//! The log always goes through the `svn` command-line client (see `command.rs` for
//! exactly how it is run: no shell, a private config dir, the password on stdin, a
//! timeout), so every repository access method svn has works: `file://`, `svn://`,
//! `svn+ssh://`, `http(s)://`. Its XML is parsed as a stream (see `xml.rs` and
//! `log.rs`).
//!
//! Choices worth knowing when reading a poller's output:
//!
//! - The first poll records the revision and reports nothing.
//! - The cursor is `{"revision": N}`, the polled URL's last changed revision.
//! - No revision is skipped, however many arrived since the last poll.
//! - Paths outside the polled URL are dropped; the rest are made relative to it
//!   before `split` places them. A branch root itself is never a file, so creating or
//!   deleting a branch is not a change.

mod changes;
mod check;
mod command;
mod cursor;
mod dav;
mod error;
mod http_client;
mod info;
mod location;
mod log;
mod poller;
mod ra_svn;
#[cfg(test)]
mod same_info_tests;
mod split;
mod xml;

use std::sync::Arc;

use polld_backend::{Backend, Poller, PollerContext, Refusal};
use serde::Deserialize;

use crate::check::CheapCheck;
use crate::command::Svn;
use crate::location::Location;
use crate::poller::{Settings, SvnPoller};
use crate::split::Splitter;

pub use crate::split::Split;

/// The `poller` and `repo` fields of this crate's log lines (the repo without
/// credentials): never a secret.
pub(crate) struct LogContext<'a> {
    pub(crate) poller: &'a str,
    pub(crate) repo: &'a str,
}

/// The Subversion backend; register it with `registry.register(SvnBackend::new())`.
/// Each `svn` run is given the poller's `timeout` before it is killed and the poll
/// fails.
#[derive(Debug, Clone, Copy, Default)]
pub struct SvnBackend;

impl SvnBackend {
    pub fn new() -> SvnBackend {
        SvnBackend
    }
}

/// An svn poller's own keys (the core has already taken the common ones).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SvnConfig {
    /// How a changed path becomes (project, branch, file); default `"trunk"`.
    #[serde(default)]
    pub split: Split,
    /// The login for `svn://` and `http(s)://` repos.
    #[serde(default)]
    pub username: Option<String>,
    /// The environment variable holding the password, read at every poll.
    #[serde(default)]
    pub password_env: Option<String>,
}

impl Backend for SvnBackend {
    const TYPE: &'static str = "svn";
    type Config = SvnConfig;

    fn build(&self, context: PollerContext, config: SvnConfig) -> Result<Arc<dyn Poller>, Refusal> {
        let scrub = |message: String| polld_backend::redact::scrub(&message, &context.repo);
        let location = Location::parse(&context.repo, &context.config_dir)
            .map_err(|message| Refusal::at("repo", scrub(message)))?;
        let splitter =
            Splitter::new(&config.split).map_err(|message| Refusal::at("split", message))?;
        let username = check_login(&config, &location)?;
        if let Some(ca_file) = &context.ca_file
            && ca_file.to_string_lossy().contains(';')
        {
            return Err(Refusal::at(
                "ca_file",
                "svn reads a ';' in the ca_file path as a list separator: rename the file",
            ));
        }
        Ok(Arc::new(SvnPoller::new(Settings {
            cheap: CheapCheck::new(&location, context.ca_file.clone(), context.timeout),
            svn: Svn {
                config_dir: context.mirror_dir.join("svn-config"),
                timeout: context.timeout,
                ca_file: context.ca_file,
            },
            name: context.name,
            repo: context.repo,
            location,
            splitter,
            paths: context.paths,
            username,
            password_env: config.password_env,
        })))
    }
}

/// Refuses credential keys that cannot apply to the repo, so that a typo in `repo` is
/// not silently accepted with credentials that are then never used. Returns the login
/// to use: the `username` key, else the URL's.
fn check_login(config: &SvnConfig, location: &Location) -> Result<Option<String>, String> {
    let has_keys = config.username.is_some() || config.password_env.is_some();
    if has_keys && !location.scheme.takes_password() {
        return Err(
            "username and password_env apply only to svn:// and http(s):// repos \
                    (svn+ssh logs in with ssh; file:// needs no login)"
                .into(),
        );
    }
    if config.username.as_deref() == Some("") {
        return Err("username is empty".into());
    }
    let username = config
        .username
        .clone()
        .or_else(|| location.url_username.clone());
    match config.password_env.as_deref() {
        Some("") => Err("password_env is empty: it names an environment variable".into()),
        Some(_) if username.is_none() => {
            Err("password_env needs a username (the username key or user@ in the URL)".into())
        }
        _ => Ok(username),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Builds a poller and returns its `describe()` line.
    fn build(repo: &str, keys: &str) -> Result<String, String> {
        let config: SvnConfig = toml_like(keys);
        SvnBackend::new()
            .build(
                PollerContext::new("p", repo, "/etc/polld", Path::new("/var/lib/polld")),
                config,
            )
            .map(|poller| poller.describe())
            .map_err(|refusal| refusal.message)
    }

    /// The keys as JSON (serde_json is at hand; the core feeds TOML the same way).
    fn toml_like(json: &str) -> SvnConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn validates_keys() {
        assert!(build("svn://h/r", "{}").is_ok());
        assert_eq!(build("svn://h/r", "{}").unwrap(), "split trunk");
        let with_user = build("svn://h/r", r#"{"username":"ada","password_env":"PW"}"#).unwrap();
        assert_eq!(with_user, "split trunk, as ada");
        assert!(build("svn://ada@h/r", r#"{"password_env":"PW"}"#).is_ok());
        let no_user = build("svn://h/r", r#"{"password_env":"PW"}"#).unwrap_err();
        assert!(no_user.contains("needs a username"), "{no_user}");
        let file = build("/srv/r", r#"{"username":"ada"}"#).unwrap_err();
        assert!(file.contains("apply only"), "{file}");
        assert!(build("svn+ssh://h/r", r#"{"password_env":"PW"}"#).is_err());
        assert!(build("svn://h/r", r#"{"username":""}"#).is_err());
        assert!(build("svn://h/r", r#"{"username":"a","password_env":""}"#).is_err());
        let regex = build("svn://h/r", r#"{"split":{"regex":"(?P<branch>x)"}}"#).unwrap_err();
        assert!(regex.contains("`path`"), "{regex}");
        let ssh = build("svn+ssh://-oProxyCommand=x/r", "{}").unwrap_err();
        assert!(ssh.contains("'-'"), "{ssh}");
        assert!(serde_json::from_str::<SvnConfig>(r#"{"branches":["x"]}"#).is_err());
    }

    #[test]
    fn build_errors_carry_no_credentials() {
        let error = build("svn+ftp://ada:s3cret@h/r", "{}").unwrap_err();
        assert!(!error.contains("s3cret"), "{error}");
    }
}
