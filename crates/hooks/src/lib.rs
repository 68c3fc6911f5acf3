//! Forge push webhooks (`POST /hooks/{github,gitlab,gitea,bitbucket}`, contract
//! "Push notifications from forges"), without the HTTP server: a request's body and
//! header values in, a typed answer out.
//!
//! ```text
//! verify(forge, secret, headers, body) ──► Verified ──► delivery() ──► Push { urls } | Ping | Ignored
//!        │                                                  │
//!        └── HookError (401, 413, 400) ◄────────────────────┘ (400)
//! ```
//!
//! A delivery is only a hint that a repository moved. polld reads nothing from it but
//! the repository's URLs, then polls that repository as `/notify` does: the poll finds
//! the commits. So a missed, repeated, reordered or forged delivery can make polld poll
//! early or poll again, but never report a commit that is not in the repository or skip
//! one that is. That is why the payload's commit ids, refs and `before`/`after` are not
//! even parsed, and why a deleted ref is a push like any other (the poll sees it gone).
//!
//! The body is parsed only after its signature holds ([`Verified`] can only be made by
//! [`verify`]), so an unauthenticated client cannot make polld do more than one HMAC.

mod payload;
mod verify;

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

pub use verify::verify;

/// The largest body accepted (`413` above it): GitLab's own cap on what it sends
/// (`REQUEST_BODY_SIZE_LIMIT = 25.megabytes`) and GitHub's 25 MB, so no real push is
/// refused, while a client cannot make polld buffer or hash more.
pub const MAX_BODY: usize = 25 * 1024 * 1024;

/// A forge family, one endpoint each: `POST /hooks/<name>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Forge {
    /// GitHub and GitHub Enterprise Server.
    GitHub,
    /// GitLab (project and system hooks).
    GitLab,
    /// Gitea, Forgejo and Gogs, which share one payload format and signature.
    Gitea,
    /// Bitbucket Cloud and Bitbucket Data Center (Server), which share the signature.
    Bitbucket,
}

impl Forge {
    pub const ALL: [Forge; 4] = [Forge::GitHub, Forge::GitLab, Forge::Gitea, Forge::Bitbucket];

    /// The endpoint's last path segment and the `forge` label of
    /// `polld_hook_requests_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Forge::GitHub => "github",
            Forge::GitLab => "gitlab",
            Forge::Gitea => "gitea",
            Forge::Bitbucket => "bitbucket",
        }
    }
}

impl fmt::Display for Forge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Forge {
    type Err = UnknownForge;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Forge::ALL
            .into_iter()
            .find(|forge| forge.as_str() == name)
            .ok_or_else(|| UnknownForge(name.to_owned()))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no forge named {0:?} (github, gitlab, gitea or bitbucket)")]
pub struct UnknownForge(String);

/// A webhook secret (GitHub, Gitea, Bitbucket) or token (GitLab).
///
/// Never empty: an empty HMAC key is one anybody can sign with, and Gitea and Gogs send
/// empty signature headers when no secret is set, so an empty secret would make every
/// unsigned delivery look signed. Its `Debug` shows no bytes, so it cannot leak into a
/// log line through a config struct.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(secret: impl Into<Vec<u8>>) -> Result<Secret, EmptySecret> {
        let secret = secret.into();
        if secret.is_empty() {
            return Err(EmptySecret);
        }
        Ok(Secret(secret))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a webhook secret must not be empty")]
pub struct EmptySecret;

/// A delivery whose signature holds, with its event name and its JSON payload (for a
/// form-encoded delivery, the decoded `payload` field). Only [`verify`] makes one, so
/// nothing parses a body that was not signed with the configured secret.
#[derive(Debug)]
pub struct Verified<'b> {
    forge: Forge,
    event: String,
    json: Cow<'b, [u8]>,
}

impl Verified<'_> {
    pub fn forge(&self) -> Forge {
        self.forge
    }

    /// The forge's event name as its header gave it (`push`, `Push Hook`,
    /// `repo:refs_changed`, …), for logs.
    pub fn event(&self) -> &str {
        &self.event
    }

    /// What the delivery asks of polld: see [`Delivery`]. `Err` when the payload is not
    /// JSON, or is a push that names no repository URL (both `400`).
    pub fn delivery(&self) -> Result<Delivery, HookError> {
        payload::delivery(self.forge, &self.event, &self.json)
    }
}

/// What a verified delivery asks of polld.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A repository's refs moved (pushed, tagged, deleted): poll every poller whose
    /// `repo` matches any of these URLs as `/notify` matches (`202`, or `404` when none).
    ///
    /// The URLs are every form the payload gives (clone, ssh, git, web), in payload
    /// order, without exact duplicates; several usually name the same repository, so
    /// the caller should poll the union of the pollers they match. Most name no poller
    /// (API and web URLs); that is harmless, since they only ever select, never add.
    Push { urls: Vec<String> },
    /// A forge checking the endpoint (GitHub `ping`, Bitbucket DC `diagnostics:ping`):
    /// `204`, nothing polled.
    Ping,
    /// Any other event (issues, pull requests, …): `204`, nothing polled. Such events
    /// reach polld when a hook is subscribed to more than pushes.
    Ignored { event: String },
}

impl Delivery {
    /// The `result` label of `polld_hook_requests_total` for a delivery that is not a
    /// push (a push's label depends on whether a poller matched: the caller's part).
    pub fn result(&self) -> &'static str {
        match self {
            Delivery::Push { .. } => "push",
            Delivery::Ping => "ping",
            Delivery::Ignored { .. } => "ignored",
        }
    }
}

/// Why a delivery is refused. Nothing is polled for any of them.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("body of {size} bytes is over the limit of {MAX_BODY} bytes")]
    TooLarge { size: usize },
    /// No signature (or token) header, or an empty one: Gitea and Gogs send their
    /// signature headers empty when the hook has no secret.
    #[error("no {header} header: set the hook's secret to the one polld is configured with{hint}")]
    MissingSignature {
        header: &'static str,
        /// Why a header that is present does not count (e.g. a SHA-1 signature).
        hint: &'static str,
    },
    #[error(
        "{header} does not match: the hook's secret is not the one polld is configured with, or the body was altered"
    )]
    BadSignature { header: &'static str },
    #[error("{header} names {algorithm:?}: only sha256 signatures are accepted")]
    UnsupportedAlgorithm {
        header: &'static str,
        algorithm: String,
    },
    #[error("no {header} header: cannot tell which event this is")]
    MissingEvent { header: &'static str },
    #[error("form-encoded delivery without a `payload` field")]
    MissingFormPayload,
    #[error("payload is not the JSON expected: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("{event:?} delivery names no repository URL")]
    NoRepository { event: String },
}

impl HookError {
    /// The contract's status code: `413` too large, `401` not authenticated, `400` a
    /// delivery that is authentic but unusable.
    pub fn status(&self) -> u16 {
        match self {
            HookError::TooLarge { .. } => 413,
            HookError::MissingSignature { .. }
            | HookError::BadSignature { .. }
            | HookError::UnsupportedAlgorithm { .. } => 401,
            HookError::MissingEvent { .. }
            | HookError::MissingFormPayload
            | HookError::Malformed(_)
            | HookError::NoRepository { .. } => 400,
        }
    }

    /// The `result` label of `polld_hook_requests_total`: few values, so the metric
    /// stays small, but a wrong secret and a missing one are told apart (the first is a
    /// misconfiguration or an attack, the second usually a hook without a secret).
    pub fn result(&self) -> &'static str {
        match self {
            HookError::TooLarge { .. } => "too_large",
            HookError::MissingSignature { .. } => "missing_signature",
            HookError::BadSignature { .. } | HookError::UnsupportedAlgorithm { .. } => {
                "bad_signature"
            }
            HookError::MissingEvent { .. }
            | HookError::MissingFormPayload
            | HookError::Malformed(_)
            | HookError::NoRepository { .. } => "malformed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forges_round_trip_through_their_names() {
        for forge in Forge::ALL {
            assert_eq!(forge.as_str().parse::<Forge>().ok(), Some(forge));
        }
        assert!("gogs".parse::<Forge>().is_err());
    }

    #[test]
    fn secrets_are_never_empty_nor_shown() {
        assert_eq!(Secret::new("").err(), Some(EmptySecret));
        let secret = Secret::new("hunter2").ok();
        assert_eq!(format!("{secret:?}"), "Some(Secret(..))");
    }

    #[test]
    fn errors_map_to_the_contracts_codes() {
        let missing = HookError::MissingSignature {
            header: "X-Hub-Signature-256",
            hint: "",
        };
        assert_eq!(
            (missing.status(), missing.result()),
            (401, "missing_signature")
        );
        let bad = HookError::BadSignature {
            header: "X-Gitlab-Token",
        };
        assert_eq!((bad.status(), bad.result()), (401, "bad_signature"));
        assert_eq!(HookError::TooLarge { size: MAX_BODY + 1 }.status(), 413);
        assert_eq!(HookError::MissingFormPayload.status(), 400);
    }
}
