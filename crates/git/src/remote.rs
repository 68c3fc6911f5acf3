//! Talking to the remote: credentials and the cheap "has anything moved?" listing.
//!
//! Listing is done in-process with libgit2 (no `git` subprocess, so nothing from the
//! user's git installation runs) and transfers only the ref advertisement, so an idle
//! repository costs one round trip per poll.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use git2::{
    Cred, CredentialType, Direction, ErrorCode, Oid, ProxyOptions, Remote, RemoteCallbacks,
};

use crate::LogContext;
use crate::error::GitError;
use crate::location::{Location, Transport};
use crate::protocol_v2::{self, ListOutcome};

/// The authentication keys of a poller, as configured.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuthConfig {
    pub(crate) ssh_key_file: Option<PathBuf>,
    pub(crate) username: Option<String>,
    pub(crate) password_env: Option<String>,
}

/// Credentials for one poll. The password is read from the environment at every poll
/// so that rotating it needs no reload; it is never logged or put in an error.
pub(crate) struct Credentials {
    ssh_key_file: Option<PathBuf>,
    username: String,
    password: Option<String>,
}

impl Credentials {
    pub(crate) fn resolve(auth: &AuthConfig, location: &Location) -> Result<Credentials, GitError> {
        let password = match &auth.password_env {
            None => None,
            Some(var) => {
                Some(std::env::var(var).map_err(|_| GitError::MissingPassword(var.clone()))?)
            }
        };
        // The address's login, else the `username` key, else the ssh hosting convention.
        let username = location
            .url_username
            .clone()
            .or_else(|| auth.username.clone())
            .unwrap_or_else(|| "git".to_owned());
        Ok(Credentials {
            ssh_key_file: auth.ssh_key_file.clone(),
            username,
            password,
        })
    }

    /// libgit2 calls back again after every rejected credential; each kind is offered
    /// once so that a wrong key or password fails the poll instead of looping.
    /// Host keys are checked against `~/.ssh/known_hosts` and TLS certificates against
    /// the system store: no `certificate_check` callback overrides either.
    pub(crate) fn callbacks(&self) -> RemoteCallbacks<'_> {
        let mut offered_username = false;
        let mut offered_key = false;
        let mut offered_agent = false;
        let mut offered_password = false;
        let mut callbacks = RemoteCallbacks::new();
        callbacks.credentials(move |_url, url_username, allowed| {
            let username = url_username.unwrap_or(&self.username);
            if allowed.contains(CredentialType::USERNAME) && !offered_username {
                offered_username = true;
                return Cred::username(username);
            }
            if allowed.contains(CredentialType::SSH_KEY) {
                if let Some(key) = &self.ssh_key_file {
                    if !offered_key {
                        offered_key = true;
                        return ssh_key(username, key);
                    }
                } else if !offered_agent {
                    offered_agent = true;
                    return Cred::ssh_key_from_agent(username);
                }
            }
            if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
                && !offered_password
                && let Some(password) = &self.password
            {
                offered_password = true;
                return Cred::userpass_plaintext(username, password);
            }
            Err(git2::Error::from_str(
                "authentication failed: the remote rejected the configured credentials \
                 (or none are configured: ssh_key_file, username/password_env)",
            ))
        });
        callbacks
    }
}

fn ssh_key(username: &str, key: &Path) -> Result<Cred, git2::Error> {
    if !key.is_file() {
        return Err(git2::Error::from_str(&format!(
            "ssh_key_file {} does not exist",
            key.display()
        )));
    }
    Cred::ssh_key(username, None, key, None)
}

/// Honours `http_proxy`/`https_proxy` from the environment, as git does.
pub(crate) fn proxy_options() -> ProxyOptions<'static> {
    let mut proxy = ProxyOptions::new();
    proxy.auto();
    proxy
}

/// What the remote advertised.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Advertisement {
    /// Branches and tags by full name; annotated tags already peeled.
    pub(crate) refs: BTreeMap<String, Oid>,
    /// The full name of the branch the remote's HEAD points at, if it has one.
    pub(crate) head: Option<String>,
}

/// Lists the remote's branches and tags (git's `ls-remote`), at least those under
/// `prefixes` (and HEAD). Over `git://` this asks for just those with protocol v2, and
/// gives up at `deadline`; elsewhere libgit2 lists everything with protocol v0, bounded
/// by its own connect and read timeouts.
pub(crate) fn list(
    location: &Location,
    credentials: &Credentials,
    prefixes: &[String],
    deadline: Instant,
    log: &LogContext<'_>,
) -> Result<Advertisement, GitError> {
    if location.transport == Transport::Git {
        let listed = protocol_v2::list_git_daemon(&location.url, prefixes, deadline)
            .map_err(GitError::ListRefs)?;
        match listed {
            ListOutcome::Listed { refs, head } => return Ok(advertisement(refs, head, log)),
            ListOutcome::NotV2 => {
                tracing::debug!(
                    poller = log.poller,
                    repo = log.repo,
                    "the server does not speak protocol v2; listing with v0"
                );
            }
        }
    }
    let list_error = |e: git2::Error| GitError::ListRefs(e.message().to_owned());
    if location.transport == Transport::Local && !Path::new(&location.url).is_dir() {
        return Err(GitError::NoSuchPath(location.url.clone()));
    }
    let mut remote = Remote::create_detached(location.url.as_str()).map_err(list_error)?;
    let mut connection = remote
        .connect_auth(
            Direction::Fetch,
            Some(credentials.callbacks()),
            Some(proxy_options()),
        )
        .map_err(list_error)?;
    let head = match connection.default_branch() {
        Ok(buf) => buf.as_str().ok().map(str::to_owned),
        // An empty repository or a detached HEAD: no default branch.
        Err(e) if e.code() == ErrorCode::NotFound => None,
        Err(e) => return Err(list_error(e)),
    };
    let advertised = advertised_refs(connection.remote(), log).map_err(list_error)?;
    Ok(advertisement(advertised, head, log))
}

/// The branches and tags among `advertised`, each tag at the object its `^{}` entry (or
/// v2's `peeled:` attribute, already applied) names.
fn advertisement(
    advertised: Vec<(String, Oid)>,
    head: Option<String>,
    log: &LogContext<'_>,
) -> Advertisement {
    let mut refs = BTreeMap::new();
    let mut peeled = Vec::new();
    for (name, oid) in advertised {
        if let Some(tag) = name.strip_suffix("^{}") {
            peeled.push((tag.to_owned(), oid));
        } else if name.starts_with(crate::watch::HEADS) || name.starts_with(crate::watch::TAGS) {
            // A malformed name would make every fetch refspec that names it fail.
            if git2::Reference::is_valid_name(&name) {
                refs.insert(name, oid);
            } else {
                tracing::warn!(
                    poller = log.poller,
                    repo = log.repo,
                    ref_name = %name,
                    "skipping a remote ref with an invalid name");
            }
        }
    }
    for (tag, commit) in peeled {
        if let Some(oid) = refs.get_mut(&tag) {
            *oid = commit;
        }
    }
    Advertisement { refs, head }
}

/// The advertisement as (name, oid) pairs, skipping names that are not UTF-8.
///
/// Read through libgit2-sys because git2's `RemoteHead::name()` unwraps the name as
/// UTF-8, and git allows any bytes in a ref name: one odd ref on the remote must not
/// panic every poll.
fn advertised_refs(
    remote: &Remote<'_>,
    log: &LogContext<'_>,
) -> Result<Vec<(String, Oid)>, git2::Error> {
    use git2::Binding as _;

    let mut heads: *mut *const libgit2_sys::git_remote_head = std::ptr::null_mut();
    let mut count: usize = 0;
    // SAFETY: `remote` is connected (or was: the list outlives the connection) and
    // libgit2 fills `heads` with `count` pointers it owns until the remote is freed or
    // reconnected; we copy everything out before returning while borrowing `remote`.
    let rc = unsafe { libgit2_sys::git_remote_ls(&mut heads, &mut count, remote.raw()) };
    if rc < 0 {
        return Err(git2::Error::last_error(rc));
    }
    if heads.is_null() || count == 0 {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        // SAFETY: `i < count`, and each entry points at a live `git_remote_head` whose
        // `name` is a NUL-terminated string (see libgit2's smart_pkt.c / local.c).
        let (name, oid) = unsafe {
            let head = *heads.add(i);
            if head.is_null() || (*head).name.is_null() {
                continue;
            }
            let name = CStr::from_ptr((*head).name).to_bytes();
            (name, Oid::from_raw(&(*head).oid))
        };
        match std::str::from_utf8(name) {
            Ok(name) => out.push((name.to_owned(), oid)),
            Err(_) => tracing::warn!(
                poller = log.poller,
                repo = log.repo,
                ref_name = %String::from_utf8_lossy(name),
                "skipping a remote ref whose name is not UTF-8"
            ),
        }
    }
    Ok(out)
}
