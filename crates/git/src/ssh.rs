//! git over ssh, in-process (russh), on connections kept across polls.
//!
//! A fresh `ssh` + `git-upload-pack` costs about 100 ms of client CPU per poll (key
//! exchange and authentication; measured here); OpenSSH's connection multiplexing still
//! costs a process per listing (5 ms) and silently drops `GIT_PROTOCOL` unless the master
//! was started right. polld keeps one authenticated connection per (host, port, user,
//! key) and opens a channel per listing or fetch: about 0.3 ms, no child process to reap
//! at a deadline, and one connection however many repositories a host serves.
//!
//! Each channel asks for protocol v2 (`env GIT_PROTOCOL=version=2`); sshd accepts that
//! only with `AcceptEnv GIT_PROTOCOL` (not in OpenSSH's or Debian's default config), and
//! otherwise the server speaks v0: its whole advertisement per listing, which still
//! works. At most [`CHANNELS`] channels are open per connection (OpenSSH's
//! `MaxSessions` is 10). A broken connection is replaced once, on the next use.
//!
//! Authentication: `ssh_key_file`, else the ssh agent (`SSH_AUTH_SOCK`); the key is
//! offered once. Host keys must be in `known_hosts` (see `known_hosts.rs`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use git2::Oid;
use russh::client::{self, Handle};
use russh::keys::{self, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use tokio::io::{AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

use crate::known_hosts::{KnownHosts, Verdict};
use crate::pack::PackWriter;
use crate::pkt::{FLUSH, MAX_LISTING, PktReader};
use crate::wire::{self, Greeting, Listed};

/// Channels open at once on one connection.
const CHANNELS: usize = 8;

/// One endpoint's connection, or none yet; the async lock makes concurrent pollers of
/// the endpoint wait for one handshake instead of each making its own.
type Slot = Arc<Mutex<Option<Arc<Connection>>>>;

/// Connections of every ssh poller of a backend, by who connects where.
#[derive(Default)]
pub(crate) struct SshPool {
    connections: StdMutex<HashMap<Endpoint, Slot>>,
}

impl std::fmt::Debug for SshPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshPool").finish_non_exhaustive()
    }
}

/// Who connects where, and how they authenticate and check the host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Endpoint {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    /// `None`: the ssh agent.
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) known_hosts: Vec<PathBuf>,
}

struct Connection {
    handle: Handle<HostKeyCheck>,
    channels: Arc<Semaphore>,
}

/// A repository on an ssh server.
#[derive(Debug)]
pub(crate) struct SshRemote {
    pool: Arc<SshPool>,
    endpoint: Endpoint,
    /// As `git-upload-pack` takes it (absolute, or relative to the login's home).
    path: String,
}

type Stream = russh::ChannelStream<client::Msg>;

/// A channel running `git-upload-pack`, and the server's greeting.
struct Session {
    reader: PktReader<BufReader<ReadHalf<Stream>>>,
    writer: WriteHalf<Stream>,
    greeting: Greeting,
    _permit: OwnedSemaphorePermit,
}

impl SshRemote {
    pub(crate) fn new(pool: Arc<SshPool>, endpoint: Endpoint, path: String) -> SshRemote {
        SshRemote {
            pool,
            endpoint,
            path,
        }
    }

    /// The refs under `prefixes` (and HEAD) in v2; a v0 server's whole advertisement.
    pub(crate) async fn list(&self, prefixes: &[String]) -> Result<Listed, String> {
        let mut session = self.session().await?;
        let listed = match session.greeting {
            Greeting::V2(capabilities) if capabilities.usable()? => {
                let mut request = wire::ls_refs_request(&capabilities, prefixes);
                // An empty command after it: upload-pack exits once it has answered.
                request.extend_from_slice(FLUSH);
                session.writer.write_all(&request).await.map_err(io)?;
                wire::read_ls_refs(&mut session.reader).await?
            }
            Greeting::V2(_) => return Err("the server offers no ls-refs or fetch".into()),
            Greeting::V0(listed) => {
                // Wanting nothing ends the exchange.
                let _ = session.writer.write_all(FLUSH).await;
                listed
            }
        };
        let _ = session.writer.shutdown().await;
        Ok(listed)
    }

    /// Fetches `wants` (ids as listed) into `pack`, the mirror having `haves`.
    pub(crate) async fn fetch(
        &self,
        wants: &[Oid],
        haves: &[Oid],
        pack: &mut PackWriter,
    ) -> Result<(), String> {
        let mut session = self.session().await?;
        session.reader.unbounded();
        let mut request = match &session.greeting {
            Greeting::V2(capabilities) => wire::fetch_request_v2(capabilities, wants, haves),
            Greeting::V0(listed) => wire::fetch_request_v0(&listed.capabilities, wants, haves)?,
        };
        if matches!(session.greeting, Greeting::V2(_)) {
            request.extend_from_slice(FLUSH);
        }
        session.writer.write_all(&request).await.map_err(io)?;
        wire::read_pack(&mut session.reader, pack).await?;
        let _ = session.writer.shutdown().await;
        Ok(())
    }

    /// A channel running `git-upload-pack` on the repository, on the pooled connection
    /// (made, or made again once if it broke).
    async fn session(&self) -> Result<Session, String> {
        let slot = self.pool.slot(&self.endpoint);
        let mut connection = slot.lock().await;
        for attempt in 0..2 {
            let current = match connection.as_ref() {
                Some(current) if !current.handle.is_closed() => Arc::clone(current),
                _ => {
                    let made = Arc::new(connect(&self.endpoint).await?);
                    *connection = Some(Arc::clone(&made));
                    made
                }
            };
            match self.open(&current).await {
                Ok(session) => return Ok(session),
                Err(error) if attempt == 0 && current.handle.is_closed() => {
                    tracing::debug!(%error, host = self.endpoint.host, "the ssh connection broke; connecting again");
                    *connection = None;
                }
                Err(error) => return Err(error),
            }
        }
        Err("the ssh connection broke twice".into())
    }

    async fn open(&self, connection: &Connection) -> Result<Session, String> {
        let permit = Arc::clone(&connection.channels)
            .acquire_owned()
            .await
            .map_err(|_| "the ssh connection is closing".to_owned())?;
        let channel = connection
            .handle
            .channel_open_session()
            .await
            .map_err(|e| format!("cannot open an ssh channel: {e}"))?;
        channel
            .set_env(false, "GIT_PROTOCOL", "version=2")
            .await
            .map_err(|e| format!("ssh: {e}"))?;
        channel
            .exec(
                false,
                format!("git-upload-pack {}", shell_quote(&self.path)),
            )
            .await
            .map_err(|e| format!("ssh: {e}"))?;
        let (read, writer) = tokio::io::split(channel.into_stream());
        let mut reader = PktReader::new(BufReader::new(read), Some(MAX_LISTING), "listing");
        let greeting = wire::read_greeting(&mut reader).await.map_err(|error| {
            if error == "the server hung up" {
                format!(
                    "the ssh server ended the session: does it run git-upload-pack for {}?",
                    self.path
                )
            } else {
                error
            }
        })?;
        Ok(Session {
            reader,
            writer,
            greeting,
            _permit: permit,
        })
    }
}

impl SshPool {
    fn slot(&self, endpoint: &Endpoint) -> Slot {
        let mut connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(connections.entry(endpoint.clone()).or_default())
    }
}

/// Checks the server's host key against `known_hosts`, remembering why it refused.
struct HostKeyCheck {
    host: String,
    port: u16,
    known_hosts: Arc<KnownHosts>,
    refused: Arc<StdMutex<Option<String>>>,
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            self.refuse("the server presented a host certificate; polld checks host keys only");
            return Ok(false);
        };
        let fingerprint = key.fingerprint(keys::HashAlg::Sha256);
        match self.known_hosts.check(&self.host, self.port, key) {
            Verdict::Known => Ok(true),
            Verdict::Revoked => {
                self.refuse(&format!(
                    "the host key of {} ({fingerprint}) is revoked in known_hosts",
                    self.host
                ));
                Ok(false)
            }
            Verdict::Changed { file, line } => {
                self.refuse(&format!(
                    "the host key of {} changed ({fingerprint}; {}:{line} holds another): \
                     refusing the connection (someone may be intercepting it)",
                    self.host,
                    file.display()
                ));
                Ok(false)
            }
            Verdict::Unknown => {
                self.refuse(&format!(
                    "the host key of {} ({fingerprint}) is not in known_hosts; polld never \
                     trusts a host on first use: add it (ssh-keyscan) to known_hosts",
                    self.host
                ));
                Ok(false)
            }
        }
    }
}

impl HostKeyCheck {
    fn refuse(&self, why: &str) {
        *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = Some(why.to_owned());
    }
}

/// Connects, checks the host key and authenticates.
async fn connect(endpoint: &Endpoint) -> Result<Connection, String> {
    let known_hosts = Arc::new(KnownHosts::read(&endpoint.known_hosts));
    // Offer first the host key types known_hosts holds for this host, so the server
    // presents a key that can be checked (as OpenSSH's `order_hostkeyalgs`).
    let mut preferred = russh::Preferred::default();
    let mut algorithms = known_hosts.algorithms(&endpoint.host, endpoint.port);
    for algorithm in preferred.key.iter() {
        if !algorithms.contains(algorithm) {
            algorithms.push(algorithm.clone());
        }
    }
    preferred.key = algorithms.into();
    let config = client::Config {
        preferred,
        nodelay: true,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 3,
        inactivity_timeout: None,
        ..client::Config::default()
    };
    let refused = Arc::new(StdMutex::new(None));
    let check = HostKeyCheck {
        host: endpoint.host.clone(),
        port: endpoint.port,
        known_hosts,
        refused: Arc::clone(&refused),
    };
    let connected = client::connect(
        Arc::new(config),
        (endpoint.host.as_str(), endpoint.port),
        check,
    )
    .await;
    let mut handle = match connected {
        Ok(handle) => handle,
        Err(error) => {
            let why = refused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            return Err(why.unwrap_or_else(|| {
                format!(
                    "cannot connect to {}:{}: {error}",
                    endpoint.host, endpoint.port
                )
            }));
        }
    };
    let hash = handle
        .best_supported_rsa_hash()
        .await
        .map_err(|e| format!("ssh: {e}"))?
        .flatten();
    let authenticated = match &endpoint.key_file {
        Some(file) => {
            let key = keys::load_secret_key(file, None).map_err(|e| {
                format!(
                    "ssh_key_file {}: {e} (a passphrase-protected key needs the ssh agent)",
                    file.display()
                )
            })?;
            handle
                .authenticate_publickey(
                    &endpoint.user,
                    PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                )
                .await
                .map_err(|e| format!("ssh authentication: {e}"))?
                .success()
        }
        None => authenticate_with_agent(&mut handle, &endpoint.user, hash).await?,
    };
    if !authenticated {
        return Err(format!(
            "ssh authentication failed: {}@{} rejected the {}",
            endpoint.user,
            endpoint.host,
            if endpoint.key_file.is_some() {
                "key in ssh_key_file"
            } else {
                "ssh agent's keys (or none: set ssh_key_file)"
            }
        ));
    }
    Ok(Connection {
        handle,
        channels: Arc::new(Semaphore::new(CHANNELS)),
    })
}

async fn authenticate_with_agent(
    handle: &mut Handle<HostKeyCheck>,
    user: &str,
    hash: Option<keys::HashAlg>,
) -> Result<bool, String> {
    let Ok(mut agent) = keys::agent::client::AgentClient::connect_env().await else {
        return Ok(false);
    };
    let identities = agent
        .request_identities()
        .await
        .map_err(|e| format!("ssh agent: {e}"))?;
    for identity in identities {
        let result = handle
            .authenticate_publickey_with(user, identity.public_key().into_owned(), hash, &mut agent)
            .await
            .map_err(|e| format!("ssh authentication: {e}"))?;
        if result.success() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Where an ssh repository is: `ssh://[user@]host[:port]/path` (also `git+ssh://`,
/// `ssh+git://`) or scp-like `[user@]host:path`, read as git reads them.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Address {
    pub(crate) user: Option<String>,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// As `git-upload-pack` takes it: `/srv/app.git`, `~ada/app.git`, `app.git`.
    pub(crate) path: String,
}

impl Address {
    pub(crate) fn parse(url: &str) -> Result<Address, String> {
        let (authority, path) = match url.find("://") {
            Some(scheme_end) => {
                let rest = &url[scheme_end + 3..];
                let slash = rest
                    .find('/')
                    .ok_or_else(|| "the ssh URL names no repository path".to_owned())?;
                let (authority, path) = rest.split_at(slash);
                // `ssh://host/~user/repo` is `~user/repo`, as in git.
                let path = match path.strip_prefix("/~") {
                    Some(home) => format!("~{home}"),
                    None => path.to_owned(),
                };
                (authority, path)
            }
            None => {
                let (authority, path) = url
                    .split_once(':')
                    .ok_or_else(|| "not an ssh address".to_owned())?;
                (authority, path.to_owned())
            }
        };
        if path.is_empty() {
            return Err("the ssh address names no repository path".into());
        }
        let (user, host_port) = match authority.rsplit_once('@') {
            Some((user, host)) => {
                let user = user.split(':').next().unwrap_or(user);
                (Some(user.to_owned()).filter(|u| !u.is_empty()), host)
            }
            None => (None, authority),
        };
        let (host, port) = match host_port.strip_prefix('[') {
            Some(bracketed) => {
                let (host, after) = bracketed
                    .split_once(']')
                    .ok_or_else(|| "bad host in the ssh URL".to_owned())?;
                (host, after.strip_prefix(':'))
            }
            None => match host_port.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            },
        };
        let port = match port {
            Some(port) => port
                .parse()
                .map_err(|_| format!("bad port {port:?} in the ssh URL"))?,
            None => 22,
        };
        if host.is_empty() {
            return Err("the ssh address names no host".into());
        }
        Ok(Address {
            user,
            host: host.to_owned(),
            port,
            path,
        })
    }
}

/// `'path'` for the remote shell, as git quotes it (`sq_quote`).
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

fn io(error: std::io::Error) -> String {
    error.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ssh_addresses_as_git_does() {
        let address = |url: &str| Address::parse(url).unwrap();
        assert_eq!(
            address("ssh://deploy@git.example:2222/srv/app.git"),
            Address {
                user: Some("deploy".into()),
                host: "git.example".into(),
                port: 2222,
                path: "/srv/app.git".into()
            }
        );
        assert_eq!(address("ssh://h/~ada/app").path, "~ada/app");
        assert_eq!(address("ssh://[::1]:22/r").host, "::1");
        let scp = address("git@github.com:team/app.git");
        assert_eq!(
            (
                scp.user.as_deref(),
                scp.host.as_str(),
                scp.port,
                scp.path.as_str()
            ),
            (Some("git"), "github.com", 22, "team/app.git")
        );
        assert_eq!(address("h:/abs").path, "/abs");
        assert!(Address::parse("ssh://h").is_err());
        assert!(Address::parse("ssh://h:x/r").is_err());
    }

    #[test]
    fn quotes_paths_for_the_remote_shell() {
        assert_eq!(shell_quote("/srv/app.git"), "'/srv/app.git'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
