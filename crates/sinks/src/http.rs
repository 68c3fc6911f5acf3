//! What the HTTP sinks share: one pooled client, and one reading of HTTP answers.
//!
//! A 2xx acknowledges. 429, 5xx, and a request that fails after connecting (no answer
//! in time, the connection dropped) mean "not this change, not now": its poller's
//! changes wait and retry, in order, while other pollers' go on. Failing to connect at
//! all means the receiver is down: every change waits. Any other 4xx means the receiver
//! will never take this change: it is dead-lettered so it does not block the rest. A
//! redirect is not followed (a POST must not silently change destination); since it
//! would redirect every change, it counts as the receiver being unreachable, with a
//! message that says to fix the URL.

use std::collections::BTreeMap;
use std::time::Duration;

use polld_backend::{Refusal, redact};
use polld_core::Change;
use polld_core::config::{HumanDuration, check_ca_file as check_ca_file_at};
use polld_core::sink::{SinkContext, SinkError, SinkFailure};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, RequestBuilder, Response, StatusCode};

/// Requests that take longer than this fail and are retried.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Requests in flight at once, each for a different poller: a receiver slow to answer
/// one poller's change does not hold up the others.
pub(crate) const IN_FLIGHT: usize = 4;

/// How much of an error response's body is read, and kept for logs and `polld status`.
const BODY_EXCERPT: usize = 300;

/// `url` must be an http(s) URL (checked at config load).
pub(crate) fn check_url(url: &str) -> Result<(), Refusal> {
    match url::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(()),
        Ok(parsed) => Err(Refusal::at(
            "url",
            format!("url must be http or https, not {}", parsed.scheme()),
        )),
        Err(error) => Err(Refusal::at(
            "url",
            format!("invalid url {:?}: {error}", redact::strip_userinfo(url)),
        )),
    }
}

/// A zero timeout would fail every request.
pub(crate) fn check_timeout(timeout: Option<HumanDuration>) -> Result<(), Refusal> {
    match timeout {
        Some(timeout) if timeout.0.is_zero() => {
            Err(Refusal::at("timeout", "timeout must be greater than zero"))
        }
        _ => Ok(()),
    }
}

/// `ca_file` (contract 0.2, "TLS"), resolved against the config's directory: a PEM
/// bundle trusted besides the system's roots. Checked at load, so a typo is
/// `file:line:col`, not a delivery failure hours later.
pub(crate) fn check_ca_file(context: &SinkContext, ca_file: Option<&str>) -> Result<(), Refusal> {
    match ca_file {
        Some(path) => check_ca_file_at(&context.config_dir, path)
            .map(drop)
            .map_err(|message| Refusal::at("ca_file", format!("ca_file: {message}"))),
        None => Ok(()),
    }
}

/// The pooled client of one sink: the system's roots plus `ca_file`'s certificates.
pub(crate) fn client(
    context: &SinkContext,
    timeout: Option<Duration>,
    ca_file: Option<&str>,
) -> Result<Client, String> {
    let mut builder = Client::builder()
        .timeout(timeout.unwrap_or(DEFAULT_TIMEOUT))
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("polld/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let file = check_ca_file_at(&context.config_dir, path)?;
        let pem = std::fs::read(&file)
            .map_err(|e| format!("cannot read ca_file {}: {e}", file.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("ca_file {}: {e}", file.display()))?;
        builder = builder.tls_certs_merge(certificates);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Sends one request and turns the answer into an acknowledgement or a [`SinkError`].
pub(crate) async fn send(request: RequestBuilder) -> Result<(), SinkError> {
    let response = match request.send().await {
        Ok(response) => response,
        // The URL is left out: it may carry credentials, and the config names it anyway.
        Err(error) if error.is_connect() => {
            return Err(SinkError::Unreachable(describe(&error.without_url())));
        }
        Err(error) => return Err(SinkError::Retry(describe(&error.without_url()))),
    };
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .map(str::to_owned);
    let excerpt = body_excerpt(response).await;
    let message = if excerpt.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {excerpt}")
    };
    if status.is_redirection() {
        Err(SinkError::Unreachable(format!(
            "HTTP {status}, redirected to {}: polld does not follow redirects for POST; set the sink url to the final address",
            location.as_deref().unwrap_or("?")
        )))
    } else if status == StatusCode::TOO_MANY_REQUESTS || !status.is_client_error() {
        Err(SinkError::Retry(message))
    } else {
        Err(SinkError::Refused(message))
    }
}

/// The start of an answer's body, read no further than needed: a receiver's error page
/// may be any size.
async fn body_excerpt(mut response: Response) -> String {
    let mut body = Vec::new();
    while body.len() < BODY_EXCERPT * 4 {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&body)
        .trim()
        .chars()
        .take(BODY_EXCERPT)
        .collect()
}

/// The error and its causes on one line ("error sending request: connection refused").
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A sink's configured extra headers (checked at config load, built again at open).
pub(crate) fn header_map(configured: &BTreeMap<String, String>) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (name, value) in configured {
        let name = HeaderName::try_from(name.as_str())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        let value = HeaderValue::try_from(value.as_str())
            .map_err(|_| format!("invalid value for header {name}"))?;
        headers.insert(name, value);
    }
    Ok(headers)
}

/// Reads a secret from the environment at send time, so rotating it needs no restart.
pub(crate) fn secret(variable: &str, key: &str) -> Result<String, SinkError> {
    std::env::var(variable).map_err(|_| {
        SinkError::Unreachable(format!(
            "environment variable {variable} (named by {key}) is not set"
        ))
    })
}

/// Delivers `changes` one request each, in order, stopping at the first failure.
pub(crate) async fn one_by_one<'a, Post, Sent>(
    changes: &'a [Change],
    post: Post,
) -> Result<(), SinkFailure>
where
    Post: Fn(&'a Change) -> Sent,
    Sent: Future<Output = Result<(), SinkError>>,
{
    for (acknowledged, change) in changes.iter().enumerate() {
        post(change).await.map_err(|error| SinkFailure {
            acknowledged,
            error,
        })?;
    }
    Ok(())
}
