//! `GET /`: the status page. One self-contained HTML document (`page.html`: inline CSS
//! and script, nothing fetched but `/status`), read-only, outside the bearer token like
//! `/status`.
//!
//! Its Content-Security-Policy allows nothing by default. The one inline `<style>` and
//! the one inline `<script>` are allowed by their SHA-256 hashes, computed here from the
//! page itself, so an edit of the page cannot forget to update them, and anything
//! injected despite the escaping would not run. The script may fetch from this origin
//! only (`connect-src 'self'`).

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

const PAGE: &str = include_str!("page.html");

static POLICY: LazyLock<String> = LazyLock::new(|| {
    let style = hash_of(inline(PAGE, "<style>", "</style>"));
    let script = hash_of(inline(PAGE, "<script>", "</script>"));
    format!(
        "default-src 'none'; connect-src 'self'; style-src '{style}'; script-src '{script}'; \
         img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
});

pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, POLICY.as_str()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

/// The text between `open` and the `close` after it: an inline element's content.
fn inline<'a>(page: &'a str, open: &str, close: &str) -> &'a str {
    let start = page.find(open).map_or(0, |at| at + open.len());
    let end = page[start..].find(close).map_or(start, |at| start + at);
    &page[start..end]
}

/// `sha256-<base64>`, as CSP names an inline element's hash.
fn hash_of(text: &str) -> String {
    format!(
        "sha256-{}",
        STANDARD.encode(Sha256::digest(text.as_bytes()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_one_style_and_one_script_and_loads_nothing() {
        for tag in ["<style", "<script"] {
            assert_eq!(PAGE.matches(tag).count(), 1, "{tag}");
        }
        assert!(!inline(PAGE, "<script>", "</script>").is_empty());
        assert!(
            !PAGE.contains("src=") && !PAGE.contains("href="),
            "no external assets"
        );
        assert!(
            !PAGE.contains("style=\""),
            "inline style attributes break the CSP"
        );
        assert!(POLICY.contains("script-src 'sha256-"));
    }
}
