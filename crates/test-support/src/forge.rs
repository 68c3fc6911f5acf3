//! Forge webhook deliveries as each forge sends them: the published example payloads in
//! `crates/hooks/tests/payloads/`, their headers, and their signatures.
//!
//! Payload bytes are signed as read (after any URL rewrite), never re-serialised: a forge
//! signs the bytes it sends, and a test that signed a re-serialised copy would pass over
//! a verifier that parses before it verifies.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::http::{Answer, request};
use crate::workspace_root;

/// A published example payload, as stored.
pub fn payload(name: &str) -> Vec<u8> {
    let path = workspace_root()
        .join("crates/hooks/tests/payloads")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// `payload(name)` with every repository URL in `rewrites` (`(published, ours)`)
/// replaced: the only change the tests make to a forge's example.
pub fn payload_for(name: &str, rewrites: &[(&str, &str)]) -> Vec<u8> {
    let mut text = String::from_utf8(payload(name)).expect("payloads are UTF-8");
    for (published, ours) in rewrites {
        assert!(
            text.contains(published),
            "{name} does not contain {published:?}"
        );
        text = text.replace(published, ours);
    }
    text.into_bytes()
}

/// Lowercase hex HMAC-SHA256, as every forge but GitLab signs.
pub fn hmac_hex(secret: &str, bytes: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(bytes);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// One delivery: header names as the forge spells them, and the body.
#[derive(Clone, Debug)]
pub struct Signed {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Signed {
    pub fn new(body: Vec<u8>) -> Signed {
        Signed {
            headers: Vec::new(),
            body,
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Signed {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub fn without(mut self, name: &str) -> Signed {
        self.headers
            .retain(|(key, _)| !key.eq_ignore_ascii_case(name));
        self
    }

    /// Points the push at another repository, keeping the length: the attack a
    /// signature exists to stop.
    pub fn tampered(mut self) -> Signed {
        let at = self
            .body
            .windows(4)
            .position(|window| window == b"http")
            .expect("payload has a URL");
        self.body[at + 8] ^= 0x01;
        self
    }

    /// The value of header `name`, as a verifier looks it up.
    pub fn lookup(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_bytes())
    }

    /// POSTs the delivery to `127.0.0.1:port` at `path` (`/hooks/github`, …).
    pub fn post(&self, port: u16, path: &str) -> Answer {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        request(port, "POST", path, &headers, &self.body)
            .unwrap_or_else(|error| panic!("POST {path}: {error}"))
    }
}

/// GitHub: `X-Hub-Signature-256` over the body as sent, plus the legacy SHA-1 header
/// (its value is not checked by polld, so any placeholder shows it is ignored).
pub fn github(event: &str, body: Vec<u8>, secret: &str) -> Signed {
    let signature = format!("sha256={}", hmac_hex(secret, &body));
    Signed::new(body)
        .header("User-Agent", "GitHub-Hookshot/044aadd")
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        .header(
            "X-Hub-Signature",
            "sha1=7d38cdd689735b008b3c702edd92eea23791c5f6",
        )
        .header("X-Hub-Signature-256", signature)
        .header("Content-Type", "application/json")
}

/// GitLab: the secret token itself in `X-Gitlab-Token`.
pub fn gitlab(event: &str, body: Vec<u8>, token: &str) -> Signed {
    Signed::new(body)
        .header("User-Agent", "GitLab/17.5.0")
        .header("X-Gitlab-Event", event)
        .header("X-Gitlab-Token", token)
        .header("Content-Type", "application/json")
}

/// Gitea as `services/webhook/deliver.go` signs: the same hex HMAC-SHA256 in
/// `X-Gitea-Signature` and `X-Gogs-Signature`, `sha256=` in `X-Hub-Signature-256`.
pub fn gitea(event: &str, body: Vec<u8>, secret: &str) -> Signed {
    let hex = hmac_hex(secret, &body);
    Signed::new(body)
        .header("X-Gitea-Event", event)
        .header("X-Gogs-Event", event)
        .header("X-GitHub-Event", event)
        .header("X-Gitea-Signature", hex.clone())
        .header("X-Gogs-Signature", hex.clone())
        .header("X-Hub-Signature-256", format!("sha256={hex}"))
        .header("Content-Type", "application/json")
}

/// Forgejo: Gitea's headers plus `X-Forgejo-*`.
pub fn forgejo(event: &str, body: Vec<u8>, secret: &str) -> Signed {
    let hex = hmac_hex(secret, &body);
    gitea(event, body, secret)
        .header("X-Forgejo-Event", event)
        .header("X-Forgejo-Signature", hex)
}

/// Gogs: only `X-Gogs-*` and `X-Github-Event`.
pub fn gogs(event: &str, body: Vec<u8>, secret: &str) -> Signed {
    let hex = hmac_hex(secret, &body);
    Signed::new(body)
        .header("X-Gogs-Event", event)
        .header("X-Github-Event", event)
        .header("X-Gogs-Signature", hex)
        .header("Content-Type", "application/json")
}

/// Bitbucket Cloud and Data Center: `X-Hub-Signature: sha256=<hex>`.
pub fn bitbucket(event: &str, body: Vec<u8>, secret: &str) -> Signed {
    let signature = format!("sha256={}", hmac_hex(secret, &body));
    Signed::new(body)
        .header("X-Event-Key", event)
        .header("X-Request-Id", "bd9d8a3b-4e6c-4e66-a3f4-8a3d5f1c0e25")
        .header("X-Hub-Signature", signature)
        .header("Content-Type", "application/json")
}
