//! polld's git backend.
//!
//! Each poll first lists the remote's refs in-process (the equivalent of
//! `git ls-remote`); when the watched refs are where the cursor says, the poll ends
//! there, without a fetch and without touching the disk. Otherwise only the refs that
//! moved are fetched into a per-poller bare mirror and walked along first parents.
//!
//! No `git` process is ever started. The network is polld's own protocol clients
//! (`git://`, smart HTTP on pooled connections, in-process ssh on kept connections:
//! see `remote.rs`), speaking protocol v2 where the server does; libgit2 keeps the
//! mirror, walks it, and reads local repositories (it runs no hooks). Its process-wide
//! settings are pinned once by [`GitBackend::new`]; see `pin_libgit2_globals`.
//!
//! Choices worth knowing when reading a poller's output:
//!
//! - The first poll reports nothing but already fetches the watched refs, so that the
//!   second poll fetches increments and can recognise a force push.
//! - The cursor is `{"refs": {"refs/heads/main": "<sha>", ...}}`, tags recorded at the
//!   commit they peel to.
//! - No history floods: a ref that appears while the poller knows no head (an empty
//!   cursor: a tags-only or `release/*` poller before its first match, every watched
//!   branch deleted, an empty repository), and a moved ref whose previous head the
//!   mirror no longer has, report only their tip commit, never its ancestry (and nothing
//!   if a known head already reaches it).
//! - Names, messages and paths that are not UTF-8 are converted lossily (U+FFFD).

mod cursor;
mod daemon;
mod error;
mod known_hosts;
mod location;
mod mirror;
mod pack;
mod pkt;
mod poller;
mod remote;
mod shared;
mod smart_http;
mod ssh;
mod walk;
mod watch;
mod wire;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::Duration;

use git2::ConfigLevel;
use polld_backend::{Backend, Poller, PollerContext, Refusal, StringList};
use serde::Deserialize;

use crate::daemon::Daemon;
use crate::known_hosts::KnownHosts;
use crate::location::{Location, Transport};
use crate::poller::{GitPoller, Settings};
use crate::remote::{AuthConfig, Network, Remote};
use crate::shared::{RemoteKey, SharedListings};
use crate::smart_http::HttpRemote;
use crate::ssh::{Endpoint, SshPool, SshRemote};
use crate::watch::Watch;

pub use crate::watch::TagSelection;

/// The `poller` and `repo` fields of this crate's log lines (the repo without
/// credentials): never a secret.
pub(crate) struct LogContext<'a> {
    pub(crate) poller: &'a str,
    pub(crate) repo: &'a str,
}

/// The git backend; register it with `registry.register(GitBackend::new())`.
#[derive(Debug)]
pub struct GitBackend {
    /// Remotes (their clients and listings) shared by pollers of the same remote.
    listings: Arc<SharedListings>,
    /// One HTTP client (its connection pool and TLS roots) per `ca_file`, made when the
    /// first http(s) poller needing it is built: a config without one loads no TLS.
    http_clients: Mutex<HashMap<Option<PathBuf>, reqwest::Client>>,
    /// Kept ssh connections, one per host, user and key.
    ssh: Arc<SshPool>,
}

impl GitBackend {
    pub fn new() -> GitBackend {
        pin_libgit2_globals();
        GitBackend {
            listings: Arc::default(),
            http_clients: Mutex::default(),
            ssh: Arc::default(),
        }
    }

    /// The HTTP client trusting the system's roots and `ca_file`.
    fn http_client(&self, ca_file: Option<&Path>) -> Result<reqwest::Client, String> {
        let mut clients = self
            .http_clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = ca_file.map(Path::to_path_buf);
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let mut builder = reqwest::Client::builder()
            .user_agent(smart_http::USER_AGENT)
            .redirect(smart_http::redirect_policy())
            .connect_timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(60));
        if let Some(file) = ca_file {
            let pem = std::fs::read(file)
                .map_err(|e| format!("cannot read ca_file {}: {e}", file.display()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("ca_file {}: {e}", file.display()))?;
            builder = builder.tls_certs_merge(certificates);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot set up HTTP: {e}"))?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// The client for `location`, and the login an http(s) URL named.
    fn remote(
        &self,
        location: &Location,
        auth: &AuthConfig,
        ca_file: Option<&Path>,
        known_hosts: &[PathBuf],
    ) -> Result<(Remote, Option<String>, Option<String>), Refusal> {
        let at_repo = |message: String| Refusal::at("repo", message);
        Ok(match location.transport {
            Transport::Local => (Remote::Local(location.url.clone()), None, None),
            Transport::File => (Remote::Local(file_url_path(&location.url)), None, None),
            Transport::Git => (
                Remote::Network(Box::new(Network::Daemon(
                    Daemon::parse(&location.url).map_err(at_repo)?,
                ))),
                None,
                None,
            ),
            Transport::Http => {
                let (url, username, password) =
                    smart_http::split_login(&location.url).map_err(at_repo)?;
                let client = self
                    .http_client(ca_file)
                    .map_err(|message| Refusal::at("ca_file", message))?;
                let remote = Remote::Network(Box::new(Network::Http(HttpRemote::new(client, url))));
                (remote, username, password)
            }
            Transport::Ssh => {
                let address = ssh::Address::parse(&location.url).map_err(at_repo)?;
                let endpoint = Endpoint {
                    user: address
                        .user
                        .or_else(|| auth.username.clone())
                        .unwrap_or_else(|| "git".to_owned()),
                    host: address.host,
                    port: address.port,
                    key_file: auth.ssh_key_file.clone(),
                    known_hosts: known_hosts.to_vec(),
                };
                let remote = SshRemote::new(Arc::clone(&self.ssh), endpoint, address.path);
                (Remote::Network(Box::new(Network::Ssh(remote))), None, None)
            }
        })
    }
}

/// The path a `file://` URL names.
fn file_url_path(url: &str) -> String {
    let path = url.strip_prefix("file://").unwrap_or(url);
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned()
}

impl Default for GitBackend {
    fn default() -> Self {
        GitBackend::new()
    }
}

/// A git poller's own keys (the core has already taken the common ones).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitConfig {
    /// Globs on short branch names (one string or a list); `"*"` is every branch.
    /// Absent: the branch the remote's HEAD points at, followed if the remote changes
    /// its HEAD.
    #[serde(default)]
    pub branches: Option<StringList>,
    /// `true` for every tag, or globs on short tag names.
    #[serde(default)]
    pub tags: TagSelection,
    /// Globs on full ref names in any namespace (`refs/pull/*/head`), watched as
    /// branches are; the change's `branch` is the full ref name.
    #[serde(default)]
    pub refs: Vec<String>,
    /// A watched ref that moves or appears without new commits still emits one change
    /// for its new tip.
    #[serde(default)]
    pub build_pushes_with_no_commits: bool,
    /// Private key for ssh repos, relative to the config file's directory.
    #[serde(default)]
    pub ssh_key_file: Option<PathBuf>,
    /// Login for http(s) basic auth (or ssh, when the address names none).
    #[serde(default)]
    pub username: Option<String>,
    /// The environment variable holding the password, read at every poll.
    #[serde(default)]
    pub password_env: Option<String>,
    /// The ssh host keys to trust, relative to the config file's directory; absent:
    /// `~/.ssh/known_hosts` and `/etc/ssh/ssh_known_hosts`.
    #[serde(default)]
    pub known_hosts_file: Option<PathBuf>,
}

impl Backend for GitBackend {
    const TYPE: &'static str = "git";
    type Config = GitConfig;

    fn build(&self, context: PollerContext, config: GitConfig) -> Result<Arc<dyn Poller>, Refusal> {
        // A `GitBackend` built by `Default`/`new` has pinned them already; this is cheap.
        pin_libgit2_globals();
        let scrub = |message: String| polld_backend::redact::scrub(&message, &context.repo);
        let location = Location::parse(&context.repo, &context.config_dir)
            .map_err(|message| Refusal::at("repo", scrub(message)))?;
        let branches = config.branches.as_ref().map(|list| list.0.as_slice());
        let watch = Watch::new(branches, &config.tags, &config.refs)?;
        let auth = auth_config(&config, &location, &context)?;
        if config.known_hosts_file.is_some() && location.transport != Transport::Ssh {
            return Err(Refusal::at(
                "known_hosts_file",
                "known_hosts_file applies only to ssh repos",
            ));
        }
        let known_hosts_file = config
            .known_hosts_file
            .as_ref()
            .map(|file| context.config_dir.join(file));
        let known_hosts = match &known_hosts_file {
            Some(file) => vec![file.clone()],
            None => KnownHosts::default_files(),
        };
        // A ca_file in [defaults] applies to the https pollers only.
        let ca_file = context
            .ca_file
            .as_deref()
            .filter(|_| location.url.to_ascii_lowercase().starts_with("https:"));
        let (remote, url_username, url_password) =
            self.remote(&location, &auth, ca_file, &known_hosts)?;
        let shared = self.listings.join(
            RemoteKey {
                url: location.url.clone(),
                username: auth.username.clone(),
                password_env: auth.password_env.clone(),
                ssh_key_file: auth.ssh_key_file.clone(),
                ca_file: ca_file.map(Path::to_path_buf),
                known_hosts_file,
            },
            watch.ref_prefixes(),
            || remote,
        );
        Ok(Arc::new(GitPoller::new(Settings {
            remote: shared,
            name: context.name,
            repo: context.repo,
            watch,
            build_pushes_with_no_commits: config.build_pushes_with_no_commits,
            auth,
            url_username,
            url_password,
            mirror_dir: context.mirror_dir,
            timeout: context.timeout,
            paths: context.paths,
        })))
    }
}

/// Refuses credential keys that cannot apply to the repo, so a typo in `repo` is not
/// silently accepted with credentials that are then never used.
fn auth_config(
    config: &GitConfig,
    location: &Location,
    context: &PollerContext,
) -> Result<AuthConfig, String> {
    let has_credentials =
        config.ssh_key_file.is_some() || config.username.is_some() || config.password_env.is_some();
    if has_credentials && !location.transport.authenticates() {
        return Err(
            "ssh_key_file, username and password_env apply only to ssh and http(s) repos".into(),
        );
    }
    if config.ssh_key_file.is_some() && location.transport != Transport::Ssh {
        return Err("ssh_key_file applies only to ssh repos".into());
    }
    if config.username.as_deref() == Some("") {
        return Err("username is empty".into());
    }
    match config.password_env.as_deref() {
        Some("") => return Err("password_env is empty: it names an environment variable".into()),
        Some(_)
            if location.transport == Transport::Http
                && config.username.is_none()
                && location.url_username.is_none() =>
        {
            return Err(
                "password_env needs a username (the username key or user@ in the URL)".into(),
            );
        }
        _ => {}
    }
    Ok(AuthConfig {
        ssh_key_file: config
            .ssh_key_file
            .as_ref()
            .map(|path| context.config_dir.join(path)),
        username: config.username.clone(),
        password_env: config.password_env.clone(),
    })
}

/// What libgit2 may spend building a pack: when it fetches from a local repository
/// (which it does by packing the source itself, in polld's process) and when a mirror
/// is compacted. By default it searches deltas among objects of any size, holding an
/// index of each object in its window: a push of twenty 20 MB commit messages then
/// takes over 300 MB. `windowMemory` bounds the window; `deltaCacheSize` bounds the
/// delta cache and, as libgit2 1.9 reads it, is also the size above which an object is
/// stored whole instead of searched for deltas (git's `core.bigFileThreshold`).
const PACK_LIMITS: &str = "[pack]\n\twindowMemory = 32m\n\tdeltaCacheSize = 1m\n";

/// Gives libgit2 [`PACK_LIMITS`] as its global config: a `.gitconfig` of polld's own in
/// the mirrors directory (no poller can be named `.gitconfig`), which becomes libgit2's
/// global config search path. Once per process, as the first poll starts (every poll
/// passes here before it touches libgit2; `polld check` writes nothing); a process has
/// one state directory.
pub(crate) fn pin_pack_limits(mirrors: &Path) {
    static PIN: Once = Once::new();
    PIN.call_once(|| {
        let file = mirrors.join(".gitconfig");
        let written = std::fs::create_dir_all(mirrors).and_then(|()| {
            if std::fs::read_to_string(&file).ok().as_deref() == Some(PACK_LIMITS) {
                Ok(())
            } else {
                std::fs::write(&file, PACK_LIMITS)
            }
        });
        if let Err(error) = written {
            tracing::warn!(path = %file.display(), %error, "cannot write libgit2's pack limits; packing is unbounded");
            return;
        }
        // SAFETY: guarded by `Once`, and done before any poll uses libgit2.
        if let Err(error) = unsafe { git2::opts::set_search_path(ConfigLevel::Global, mirrors) } {
            tracing::warn!(error = error.message(), "cannot set libgit2's global config path");
        }
    });
}

/// Pins libgit2's process-wide settings, once per process: the global, XDG, system
/// and ProgramData config search paths are emptied, so the daemon user's
/// `~/.gitconfig` or `/etc/gitconfig` cannot change what libgit2 does with the mirrors
/// and local repositories (the global path then becomes polld's own, see
/// [`pin_pack_limits`]). These are libgit2 globals, set before any poll runs.
fn pin_libgit2_globals() {
    static PIN: Once = Once::new();
    PIN.call_once(|| {
        for level in [
            ConfigLevel::System,
            ConfigLevel::XDG,
            ConfigLevel::Global,
            ConfigLevel::ProgramData,
        ] {
            // SAFETY: guarded by `Once`, and done before any poll uses libgit2.
            if let Err(error) = unsafe { git2::opts::set_search_path(level, "") } {
                tracing::warn!(
                    ?level,
                    error = error.message(),
                    "cannot reset a git config search path"
                );
            }
        }
    });
}
