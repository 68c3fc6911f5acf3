//! One ref listing per remote per cycle, however many pollers watch it.
//!
//! Buildbot users often configure one poller per branch of the same repository. Those
//! pollers get the same phase from the scheduler (it is hashed from the repository), so
//! they poll in the same moment; here the first of them lists the remote and the others,
//! waiting on the same slot, reuse its answer. Only pollers with the same URL and
//! credentials share, and the listing asks a protocol-v2 server for the union of their
//! ref prefixes.
//!
//! A poller reuses a listing only if it started after the poller asked for one, so a
//! shared answer is never older than the question: a poll forced by a push hook always
//! sees the push.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::GitError;
use crate::remote::{Advertisement, Remote};

/// How long the first poller of a shared remote waits before listing, so that the other
/// pollers polling in the same moment can join it.
const GATHER: Duration = Duration::from_millis(5);

/// Pollers that list the same remote the same way share one of these.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RemoteKey {
    pub(crate) url: String,
    pub(crate) username: Option<String>,
    pub(crate) password_env: Option<String>,
    pub(crate) ssh_key_file: Option<PathBuf>,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) known_hosts_file: Option<PathBuf>,
}

/// Owned by the [`crate::GitBackend`], shared by all its pollers.
#[derive(Debug, Default)]
pub(crate) struct SharedListings {
    remotes: Mutex<HashMap<RemoteKey, Arc<SharedRemote>>>,
}

/// A remote and what its pollers share: its client (with any connection or discovery
/// it keeps) and its last listing.
#[derive(Debug)]
pub(crate) struct SharedRemote {
    pub(crate) remote: Remote,
    /// How many pollers were built for this remote (reloads only add: a stale count
    /// costs at most a [`GATHER`] pause).
    pollers: AtomicUsize,
    /// Every ref prefix any poller of this remote watches.
    prefixes: Mutex<BTreeSet<String>>,
    /// The last listing and when it started. Holding this lock while listing is what
    /// makes concurrent pollers wait for one listing instead of each making their own.
    last: tokio::sync::Mutex<Option<LastListing>>,
}

/// When a listing started, and what it found (or why it failed).
type LastListing = (Instant, Result<Arc<Advertisement>, String>);

impl SharedListings {
    /// Registers a poller's interest (at build time) and returns its remote's slot,
    /// made with `make` for the first poller of the remote.
    pub(crate) fn join(
        &self,
        key: RemoteKey,
        prefixes: &[String],
        make: impl FnOnce() -> Remote,
    ) -> Arc<SharedRemote> {
        let mut remotes = self.remotes.lock().unwrap_or_else(PoisonError::into_inner);
        let remote = Arc::clone(remotes.entry(key).or_insert_with(|| {
            Arc::new(SharedRemote {
                remote: make(),
                pollers: AtomicUsize::new(0),
                prefixes: Mutex::default(),
                last: tokio::sync::Mutex::default(),
            })
        }));
        remote.pollers.fetch_add(1, Ordering::Relaxed);
        remote
            .prefixes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(prefixes.iter().cloned());
        remote
    }
}

impl SharedRemote {
    /// The remote's refs for a poller that asked at `asked`: another poller's listing
    /// that started since, or a new one made with `list`.
    pub(crate) async fn listing<'a, F, Listing>(
        &'a self,
        asked: Instant,
        list: F,
    ) -> Result<Arc<Advertisement>, GitError>
    where
        F: FnOnce(&'a Remote, Vec<String>) -> Listing,
        Listing: Future<Output = Result<Advertisement, GitError>>,
    {
        let mut last = self.last.lock().await;
        if let Some((started, result)) = last.as_ref()
            && *started >= asked
        {
            return result.clone().map_err(GitError::Shared);
        }
        if self.pollers.load(Ordering::Relaxed) > 1 {
            tokio::time::sleep(GATHER).await;
        }
        let prefixes: Vec<String> = self
            .prefixes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        let started = Instant::now();
        let result = list(&self.remote, prefixes).await.map(Arc::new);
        let shared = match &result {
            Ok(advertisement) => Ok(Arc::clone(advertisement)),
            Err(error) => Err(error.to_string()),
        };
        *last = Some((started, shared));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn key(url: &str) -> RemoteKey {
        RemoteKey {
            url: url.into(),
            username: None,
            password_env: None,
            ssh_key_file: None,
            ca_file: None,
            known_hosts_file: None,
        }
    }

    fn local() -> Remote {
        Remote::Local("/nowhere".into())
    }

    #[tokio::test]
    async fn pollers_of_one_remote_share_a_listing_with_the_union_of_their_prefixes() {
        let shared = SharedListings::default();
        let main = shared.join(key("git://h/a"), &["refs/heads/main".into()], local);
        let release = shared.join(key("git://h/a"), &["refs/heads/release/".into()], local);
        let other = shared.join(key("git://h/b"), &["refs/heads/main".into()], local);
        assert!(Arc::ptr_eq(&main, &release));
        let listings = AtomicUsize::new(0);
        let list = |_: &Remote, prefixes: Vec<String>| {
            listings.fetch_add(1, Ordering::SeqCst);
            assert_eq!(prefixes, ["refs/heads/main", "refs/heads/release/"]);
            std::future::ready(Ok(Advertisement {
                refs: BTreeMap::new(),
                tips: BTreeMap::new(),
                head: None,
            }))
        };
        let asked = Instant::now();
        main.listing(asked, list).await.unwrap();
        release
            .listing(
                asked,
                |_: &Remote,
                 _: Vec<String>|
                 -> std::future::Ready<Result<Advertisement, GitError>> {
                    panic!("reused, not listed again")
                },
            )
            .await
            .unwrap();
        assert_eq!(listings.load(Ordering::SeqCst), 1);
        // Asked after that listing started: it is too old to answer.
        let later = Instant::now();
        release.listing(later, list).await.unwrap();
        assert_eq!(listings.load(Ordering::SeqCst), 2);
        other
            .listing(Instant::now(), |_: &Remote, p: Vec<String>| {
                assert_eq!(p, ["refs/heads/main"]);
                std::future::ready(Err(GitError::ListRefs("refused".into())))
            })
            .await
            .unwrap_err();
    }
}
