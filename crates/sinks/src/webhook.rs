//! A generic webhook: the change record as a JSON body, one change per POST, signed with
//! HMAC-SHA256 when a secret is configured (`X-Polld-Signature: sha256=<hex>`, the
//! GitHub convention, so receivers can reuse their verification code).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use async_trait::async_trait;
use hmac::{Hmac, KeyInit, Mac};
use polld_backend::Refusal;
use polld_core::Change;
use polld_core::config::HumanDuration;
use polld_core::sink::{Sink, SinkContext, SinkError, SinkFailure, SinkType};
use reqwest::Client;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde::Deserialize;
use sha2::Sha256;

use crate::http;

pub const SIGNATURE_HEADER: &str = "X-Polld-Signature";

/// `type = "webhook"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Webhook;

/// `[sink]` keys of `type = "webhook"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Environment variable holding the HMAC-SHA256 key: each body is signed in
    /// `X-Polld-Signature: sha256=<hex>`.
    pub secret_env: Option<String>,
    /// Extra request headers, e.g. `{ "X-Team" = "core" }`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How long one request may take (default 30 s).
    pub timeout: Option<HumanDuration>,
    /// A PEM bundle to trust besides the system's roots (a master behind a private CA).
    pub ca_file: Option<String>,
}

impl SinkType for Webhook {
    const TYPE: &'static str = "webhook";
    type Config = WebhookConfig;

    fn check(&self, context: &SinkContext, config: &WebhookConfig) -> Result<(), Refusal> {
        http::check_ca_file(context, config.ca_file.as_deref())?;
        http::check_timeout(config.timeout)?;
        http::check_url(&config.url)?;
        http::header_map(&config.headers)
            .map(drop)
            .map_err(|message| Refusal::at("headers", message))
    }

    fn open(&self, context: &SinkContext, config: WebhookConfig) -> Result<Arc<dyn Sink>, String> {
        let client = http::client(
            context,
            config.timeout.map(|t| t.0),
            config.ca_file.as_deref(),
        )?;
        let headers = http::header_map(&config.headers)?;
        Ok(Arc::new(WebhookSink {
            client,
            config,
            headers,
        }))
    }
}

/// One JSON POST per change, optionally signed.
pub struct WebhookSink {
    client: Client,
    config: WebhookConfig,
    headers: HeaderMap,
}

impl WebhookSink {
    async fn post(&self, change: &Change) -> Result<(), SinkError> {
        let body = serde_json::to_vec(change)
            .map_err(|e| SinkError::Refused(format!("cannot encode change: {e}")))?;
        let mut request = self
            .client
            .post(&self.config.url)
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json");
        if let Some(variable) = &self.config.secret_env {
            let secret = http::secret(variable, "secret_env")?;
            request = request.header(SIGNATURE_HEADER, signature(secret.as_bytes(), &body));
        }
        http::send(request.body(body)).await
    }
}

#[async_trait]
impl Sink for WebhookSink {
    async fn deliver(&self, changes: &[Change]) -> Result<(), SinkFailure> {
        http::one_by_one(changes, |change| self.post(change)).await
    }

    fn max_batch(&self) -> usize {
        1
    }

    fn max_in_flight(&self) -> usize {
        http::IN_FLIGHT
    }
}

/// `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| {
        // HMAC takes keys of any length; this branch cannot be reached.
        unreachable!("HMAC accepts keys of any length")
    });
    mac.update(body);
    let mut hex = String::from("sha256=");
    for byte in mac.finalize().into_bytes() {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
