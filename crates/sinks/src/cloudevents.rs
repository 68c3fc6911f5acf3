//! CloudEvents 1.0 over HTTP, binary content mode (contract 0.2, "CloudEvents sink"):
//! one POST per change, the event's attributes in `ce-*` headers, the change record as
//! the JSON body. Knative brokers, Argo Events, Tekton triggers and any CloudEvents SDK
//! take it as it comes.
//!
//! Delivery is the webhook's: the same client, `ca_file`, timeout, and reading of the
//! answer (2xx acknowledges; 429, 5xx and timeouts retry; other 4xx dead-letter).
//!
//! Why the six headers are written here and not by the Rust SDK (`cloudevents-sdk`
//! 0.9): its reqwest binding is built on reqwest 0.12 (polld's HTTP client, shared with
//! the webhook sink, is 0.13), and it writes attribute values unencoded, so a branch
//! such as `fix/ü` would be an invalid header instead of the binding's `fix/%C3%BC`.
//! Conformance is checked instead against the official Python SDK (`tests/looking.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, SecondsFormat};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use polld_backend::Refusal;
use polld_core::Change;
use polld_core::config::HumanDuration;
use polld_core::sink::{Sink, SinkContext, SinkError, SinkFailure, SinkType};
use reqwest::Client;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde::Deserialize;

use crate::http;

/// The `ce-type` of every event polld sends.
pub const EVENT_TYPE: &str = "dev.polld.change.v1";

/// `type = "cloudevents"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloudEvents;

/// `[sink]` keys of `type = "cloudevents"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudEventsConfig {
    /// Where events are POSTed: a broker, a trigger, an event source.
    pub url: String,
    /// Extra request headers, e.g. `{ "Authorization" = "Bearer ..." }`. They may not
    /// name a `ce-*` attribute or `Content-Type`: those are the event's.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How long one request may take (default 30 s).
    pub timeout: Option<HumanDuration>,
    /// A PEM bundle to trust besides the system's roots (a broker behind a private CA).
    pub ca_file: Option<String>,
}

impl SinkType for CloudEvents {
    const TYPE: &'static str = "cloudevents";
    type Config = CloudEventsConfig;

    fn check(&self, context: &SinkContext, config: &CloudEventsConfig) -> Result<(), Refusal> {
        http::check_ca_file(context, config.ca_file.as_deref())?;
        http::check_timeout(config.timeout)?;
        http::check_url(&config.url)?;
        if let Some(name) = config.headers.keys().find(|name| is_reserved(name)) {
            return Err(Refusal::at(
                "headers",
                format!("header {name:?} is set by the cloudevents sink itself"),
            ));
        }
        http::header_map(&config.headers)
            .map(drop)
            .map_err(|message| Refusal::at("headers", message))
    }

    fn open(
        &self,
        context: &SinkContext,
        config: CloudEventsConfig,
    ) -> Result<Arc<dyn Sink>, String> {
        let client = http::client(
            context,
            config.timeout.map(|t| t.0),
            config.ca_file.as_deref(),
        )?;
        let headers = http::header_map(&config.headers)?;
        Ok(Arc::new(CloudEventsSink {
            client,
            url: config.url,
            headers,
        }))
    }
}

/// `ce-*` and `Content-Type` belong to the event.
fn is_reserved(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.starts_with("ce-") || name == "content-type"
}

/// One binary-mode CloudEvent per change.
pub struct CloudEventsSink {
    client: Client,
    url: String,
    headers: HeaderMap,
}

impl CloudEventsSink {
    async fn post(&self, change: &Change) -> Result<(), SinkError> {
        let body = serde_json::to_vec(change)
            .map_err(|e| SinkError::Refused(format!("cannot encode change: {e}")))?;
        let mut request = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json");
        for (name, value) in attributes(change) {
            request = request.header(name, value);
        }
        http::send(request.body(body)).await
    }
}

#[async_trait]
impl Sink for CloudEventsSink {
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

/// The event's `ce-*` headers, values percent-encoded as the HTTP binding requires
/// (a branch or a path may hold spaces, `%` or non-ASCII). `ce-subject` is left out
/// when the change has no branch (svn trunk), `ce-time` when RFC 3339 cannot write the
/// commit time (a year past 9999).
pub fn attributes(change: &Change) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("ce-specversion", "1.0".to_owned()),
        ("ce-id", header_value(&change.id)),
        ("ce-source", header_value(&change.repository)),
        ("ce-type", EVENT_TYPE.to_owned()),
    ];
    if let Some(time) = rfc3339(change.when_timestamp) {
        headers.push(("ce-time", time));
    }
    if let Some(branch) = &change.branch {
        headers.push(("ce-subject", header_value(branch)));
    }
    headers
}

/// CloudEvents HTTP binding 3.1.3.2: space, `"`, `%` and everything outside printable
/// ASCII are sent as `%XX` of their UTF-8 bytes.
const HEADER_ESCAPED: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

fn header_value(value: &str) -> String {
    utf8_percent_encode(value, HEADER_ESCAPED).to_string()
}

/// Unix seconds as RFC 3339 in UTC (`2023-11-14T22:13:20Z`); `None` outside the years
/// 0000–9999 that RFC 3339 can write (`ce-time` is optional, the body keeps the time).
fn rfc3339(unix: i64) -> Option<String> {
    let time = DateTime::from_timestamp(unix, 0)?;
    (0..=9999)
        .contains(&time.year())
        .then(|| time.to_rfc3339_opts(SecondsFormat::Secs, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        for (unix, written) in [
            (0, "1970-01-01T00:00:00Z"),
            (1_700_000_000, "2023-11-14T22:13:20Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (-1, "1969-12-31T23:59:59Z"),
            (253_402_300_799, "9999-12-31T23:59:59Z"),
        ] {
            assert_eq!(rfc3339(unix).as_deref(), Some(written));
        }
        assert_eq!(rfc3339(253_402_300_800), None, "year 10000");
        assert_eq!(rfc3339(i64::MIN), None);
    }

    #[test]
    fn header_values_are_percent_encoded_as_the_binding_says() {
        assert_eq!(header_value("main"), "main");
        assert_eq!(
            header_value("https://git.example/a.git"),
            "https://git.example/a.git"
        );
        assert_eq!(header_value("fix/ü 100%\""), "fix/%C3%BC%20100%25%22");
    }

    #[test]
    fn ce_and_content_type_headers_are_reserved() {
        assert!(is_reserved("CE-Id"));
        assert!(is_reserved("content-type"));
        assert!(!is_reserved("Authorization"));
    }
}
