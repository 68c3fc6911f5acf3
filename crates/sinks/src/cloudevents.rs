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
/// when the change has no branch (svn trunk).
pub fn attributes(change: &Change) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("ce-specversion", "1.0".to_owned()),
        ("ce-id", header_value(&change.id)),
        ("ce-source", header_value(&change.repository)),
        ("ce-type", EVENT_TYPE.to_owned()),
        ("ce-time", rfc3339(change.when_timestamp)),
    ];
    if let Some(branch) = &change.branch {
        headers.push(("ce-subject", header_value(branch)));
    }
    headers
}

/// CloudEvents HTTP binding 3.1.3.2: printable ASCII but space, `"` and `%` as is;
/// everything else as `%XX` of its UTF-8 bytes.
fn header_value(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (0x21..=0x7e).contains(&byte) && byte != b'"' && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Unix seconds as RFC 3339 in UTC (`2023-11-14T22:13:20Z`), for any `i64`.
fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let seconds = unix.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day): Howard Hinnant's
/// `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // day is 1..=31 and month 1..=12 by construction.
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
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
