//! Talking to the remote: the cheap "has anything moved?" listing, and the fetch of what
//! moved.
//!
//! Network remotes (`git://`, http(s), ssh) are polld's own protocol clients
//! (`daemon.rs`, `smart_http.rs`, `ssh.rs`, all speaking `wire.rs`): protocol v2 with
//! the watched prefixes where the server speaks it, v0 otherwise, the pack streamed
//! into the mirror. A repository on this machine (a path or `file://`) is read with
//! libgit2 directly: its refs from the repository itself, its objects with libgit2's
//! local fetch. No `git` process ever runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository};

use crate::LogContext;
use crate::daemon::Daemon;
use crate::error::GitError;
use crate::pack::PackWriter;
use crate::smart_http::{HttpRemote, Login};
use crate::ssh::SshRemote;
use crate::wire::Listed;

/// The authentication keys of a poller, as configured.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuthConfig {
    pub(crate) ssh_key_file: Option<PathBuf>,
    pub(crate) username: Option<String>,
    pub(crate) password_env: Option<String>,
}

/// The http(s) login for one poll. The password is read from the environment at every
/// poll so that rotating it needs no reload; it is never logged or put in an error.
pub(crate) struct Credentials {
    username: Option<String>,
    password: Option<String>,
}

impl Credentials {
    /// The `username` key (else the URL's) and the password from `password_env` (else
    /// the URL's).
    pub(crate) fn resolve(
        auth: &AuthConfig,
        url_username: Option<&str>,
        url_password: Option<&str>,
    ) -> Result<Credentials, GitError> {
        let password = match &auth.password_env {
            Some(var) => {
                Some(std::env::var(var).map_err(|_| GitError::MissingPassword(var.clone()))?)
            }
            None => url_password.map(str::to_owned),
        };
        Ok(Credentials {
            username: auth
                .username
                .clone()
                .or_else(|| url_username.map(str::to_owned)),
            password,
        })
    }

    fn login(&self) -> Option<Login<'_>> {
        Some(Login {
            username: self.username.as_deref()?,
            password: self.password.as_deref()?,
        })
    }

    /// The password, to scrub from messages.
    pub(crate) fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }
}

/// Where a poller's repository is, and how to reach it.
#[derive(Debug)]
pub(crate) enum Remote {
    /// A repository on this machine (a path or `file://`), read with libgit2.
    Local(String),
    Network(Box<Network>),
}

/// A repository reached over the network, by polld's own clients.
#[derive(Debug)]
pub(crate) enum Network {
    Daemon(Daemon),
    Http(HttpRemote),
    Ssh(SshRemote),
}

/// What the remote advertised.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Advertisement {
    /// Branches and tags by full name; annotated tags already peeled.
    pub(crate) refs: BTreeMap<String, Oid>,
    /// The ids as advertised (an annotated tag's own id): what a fetch asks for.
    pub(crate) tips: BTreeMap<String, Oid>,
    /// The full name of the branch the remote's HEAD points at, if it has one.
    pub(crate) head: Option<String>,
}

impl Remote {
    /// Lists the remote's branches and tags (git's `ls-remote`), at least those under
    /// `prefixes` (and HEAD). The caller bounds it in time.
    pub(crate) async fn list(
        &self,
        prefixes: Vec<String>,
        credentials: &Credentials,
        log: &LogContext<'_>,
    ) -> Result<Advertisement, GitError> {
        let listed = match self {
            Remote::Local(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || list_local(&path))
                    .await
                    .map_err(|e| GitError::Task(e.to_string()))??
            }
            Remote::Network(network) => network
                .list(&prefixes, credentials)
                .await
                .map_err(GitError::ListRefs)?,
        };
        Ok(advertisement(listed, log))
    }

    /// Fetches `refs` (full names, with the ids the listing gave) into the mirror at
    /// `mirror`, which already has the objects of `haves`. The caller bounds it in
    /// time and then points the mirror's refs at what was fetched.
    pub(crate) async fn fetch(
        &self,
        mirror: &Path,
        refs: &[(String, Oid)],
        haves: &[Oid],
        credentials: &Credentials,
    ) -> Result<(), GitError> {
        let network = match self {
            Remote::Local(path) => {
                let (path, mirror) = (path.clone(), mirror.to_path_buf());
                let names: Vec<String> = refs.iter().map(|(name, _)| name.clone()).collect();
                return tokio::task::spawn_blocking(move || fetch_local(&path, &mirror, &names))
                    .await
                    .map_err(|e| GitError::Task(e.to_string()))?;
            }
            Remote::Network(network) => network,
        };
        let wants: Vec<Oid> = refs.iter().map(|(_, oid)| *oid).collect();
        let mut pack = PackWriter::start(mirror);
        network
            .fetch(&wants, haves, credentials, &mut pack)
            .await
            .map_err(|message| GitError::Fetch {
                refs: refs.len(),
                message,
            })?;
        pack.commit().await?;
        Ok(())
    }
}

impl Network {
    async fn list(&self, prefixes: &[String], credentials: &Credentials) -> Result<Listed, String> {
        match self {
            Network::Daemon(daemon) => daemon.list(prefixes).await,
            Network::Http(http) => http.list(prefixes, credentials.login().as_ref()).await,
            Network::Ssh(ssh) => ssh.list(prefixes).await,
        }
    }

    async fn fetch(
        &self,
        wants: &[Oid],
        haves: &[Oid],
        credentials: &Credentials,
        pack: &mut PackWriter,
    ) -> Result<(), String> {
        match self {
            Network::Daemon(daemon) => daemon.fetch(wants, haves, pack).await,
            Network::Http(http) => {
                http.fetch(wants, haves, credentials.login().as_ref(), pack)
                    .await
            }
            Network::Ssh(ssh) => ssh.fetch(wants, haves, pack).await,
        }
    }
}

/// A local repository's branches, tags and HEAD, read from the repository itself.
fn list_local(path: &str) -> Result<Listed, GitError> {
    let list_error = |e: git2::Error| GitError::ListRefs(e.message().to_owned());
    if !Path::new(path).is_dir() {
        return Err(GitError::NoSuchPath(path.to_owned()));
    }
    let repo = Repository::open(path).map_err(list_error)?;
    let mut listed = Listed::default();
    if let Ok(head) = repo.find_reference("HEAD") {
        listed.head = head.symbolic_target().ok().flatten().map(str::to_owned);
    }
    for reference in repo.references().map_err(list_error)? {
        let reference = reference.map_err(list_error)?;
        let Ok(name) = std::str::from_utf8(reference.name_bytes()) else {
            continue;
        };
        let Some(oid) = reference.target() else {
            continue;
        };
        listed.refs.push((name.to_owned(), oid));
        if let Ok(peeled) = reference.peel(ObjectType::Any)
            && peeled.id() != oid
        {
            listed.refs.push((format!("{name}^{{}}"), peeled.id()));
        }
    }
    Ok(listed)
}

/// libgit2's local fetch of `names` from the repository at `path` into `mirror`.
fn fetch_local(path: &str, mirror: &Path, names: &[String]) -> Result<(), GitError> {
    let fetch_error = |e: git2::Error| GitError::Fetch {
        refs: names.len(),
        message: e.message().to_owned(),
    };
    let repo = Repository::open_bare(mirror).map_err(|e| GitError::mirror(mirror, e))?;
    let refspecs: Vec<String> = names.iter().map(|n| format!("+{n}:{n}")).collect();
    let mut remote = repo.remote_anonymous(path).map_err(fetch_error)?;
    let mut options = git2::FetchOptions::new();
    options
        .download_tags(git2::AutotagOption::None)
        .prune(git2::FetchPrune::Off)
        .update_fetchhead(false);
    remote
        .fetch(&refspecs, Some(&mut options), None)
        .map_err(fetch_error)
}

/// The refs among `listed` (`HEAD` aside), each tag at the object its `^{}` entry
/// names. Refs outside the asked prefixes that a server sent anyway (v0 sends all;
/// `ref-prefix` is a hint) are kept: the watch selects among them.
fn advertisement(listed: Listed, log: &LogContext<'_>) -> Advertisement {
    let mut tips = BTreeMap::new();
    let mut peeled = Vec::new();
    for (name, oid) in listed.refs {
        if let Some(tag) = name.strip_suffix("^{}") {
            peeled.push((tag.to_owned(), oid));
        } else if name.starts_with("refs/") {
            // A malformed name would make every fetch that names it fail.
            if git2::Reference::is_valid_name(&name) {
                tips.insert(name, oid);
            } else {
                tracing::warn!(
                    poller = log.poller,
                    repo = log.repo,
                    ref_name = %name,
                    "skipping a remote ref with an invalid name");
            }
        }
    }
    let mut refs = tips.clone();
    for (tag, commit) in peeled {
        if let Some(oid) = refs.get_mut(&tag) {
            *oid = commit;
        }
    }
    Advertisement {
        refs,
        tips,
        head: listed.head,
    }
}
