//! The remote's heads: what the cheap check compares with the cursor.
//!
//! Over http(s) that is two GETs of hg's wire protocol, `?cmd=branchmap` and
//! `?cmd=listkeys&namespace=bookmarks` (about 5 ms against `hg serve`, where an `hg`
//! process costs 100-200 ms of Python start-up). Elsewhere (a local path, file://,
//! ssh://) it is one `hg polld-heads -- SOURCE`, polld's extension that makes the same
//! two calls through hg's own peer and prints the same format. Either way nothing is
//! pulled and nothing is written.
//!
//! Branch heads include closed ones (a branchmap lists every head), so closing a
//! branch moves its heads like any commit does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE, USER_AGENT};
use url::Url;

use crate::error::HgError;

/// Named branch → all its heads (sorted), bookmark → its changeset: full hex hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RemoteHeads {
    pub(crate) branches: BTreeMap<String, Vec<String>>,
    pub(crate) bookmarks: BTreeMap<String, String>,
}

/// Whether `text` is a full changeset hash as hg prints it (40 lowercase hex digits).
/// Everything that reaches a revset is checked with this first, so that a remote
/// cannot inject revset syntax.
pub(crate) fn is_node(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `<percent-encoded branch> <node> <node>...` lines.
pub(crate) fn parse_branchmap(body: &[u8]) -> Result<BTreeMap<String, Vec<String>>, HgError> {
    let bad = |detail: String| HgError::Protocol {
        what: "branchmap",
        detail,
    };
    let mut branches = BTreeMap::new();
    for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let line = std::str::from_utf8(line).map_err(|_| bad("a line is not ASCII".into()))?;
        let mut fields = line.split(' ');
        let quoted = fields.next().unwrap_or_default();
        let name = percent_encoding::percent_decode_str(quoted).collect::<Vec<u8>>();
        let name = String::from_utf8_lossy(&name).into_owned();
        let mut nodes = Vec::new();
        for node in fields {
            if !is_node(node) {
                return Err(bad(format!("{node:?} is not a changeset hash")));
            }
            nodes.push(node.to_owned());
        }
        if nodes.is_empty() {
            return Err(bad(format!("branch {name:?} has no heads")));
        }
        nodes.sort();
        nodes.dedup();
        branches.insert(name, nodes);
    }
    Ok(branches)
}

/// `<bookmark>\t<node>` lines.
pub(crate) fn parse_bookmarks(body: &[u8]) -> Result<BTreeMap<String, String>, HgError> {
    let bad = |detail: String| HgError::Protocol {
        what: "listkeys bookmarks",
        detail,
    };
    let mut bookmarks = BTreeMap::new();
    for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let tab = line
            .iter()
            .rposition(|&b| b == b'\t')
            .ok_or_else(|| bad("a line has no tab".into()))?;
        let node = String::from_utf8_lossy(&line[tab + 1..]).into_owned();
        if !is_node(&node) {
            return Err(bad(format!("{node:?} is not a changeset hash")));
        }
        bookmarks.insert(String::from_utf8_lossy(&line[..tab]).into_owned(), node);
    }
    Ok(bookmarks)
}

/// The output of `hg polld-heads`: a branchmap, a NUL, a bookmark listing.
pub(crate) fn parse_polld_heads(stdout: &[u8]) -> Result<RemoteHeads, HgError> {
    let nul = stdout
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| HgError::Output {
            command: "polld-heads",
            detail: "no NUL between branches and bookmarks".into(),
        })?;
    Ok(RemoteHeads {
        branches: parse_branchmap(&stdout[..nul])?,
        bookmarks: parse_bookmarks(&stdout[nul + 1..])?,
    })
}

/// Basic-auth credentials for the http check.
pub(crate) struct HttpAuth<'a> {
    pub(crate) username: &'a str,
    pub(crate) password: Option<&'a str>,
}

/// The most a wire-protocol answer may be: a branchmap of 100,000 heads is about 4 MB.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// The http(s) wire-protocol client: one per poller, built at its first poll (building
/// one loads the system's root certificates, which `polld check` need not do).
#[derive(Debug)]
pub(crate) struct WireClient {
    timeout: Duration,
    /// Trusted in addition to the system's roots (the poller's `ca_file`).
    ca_file: Option<PathBuf>,
    client: OnceLock<reqwest::Client>,
}

impl WireClient {
    /// A client whose every request ends within `timeout`, whatever the server sends.
    pub(crate) fn new(timeout: Duration, ca_file: Option<PathBuf>) -> WireClient {
        WireClient {
            timeout,
            ca_file,
            client: OnceLock::new(),
        }
    }

    fn client(&self) -> Result<&reqwest::Client, HgError> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        // No idle connections are kept: at polling intervals a server has closed them
        // anyway, and a reused connection to `hg serve` (Python's http.server, which
        // writes headers and body separately) stalls 40 ms per request on Nagle plus
        // delayed ACK, where a fresh one answers in 1-2 ms.
        let mut builder = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .connect_timeout(self.timeout.min(Duration::from_secs(30)))
            .timeout(self.timeout);
        if let Some(ca_file) = &self.ca_file {
            let shown = ca_file.display();
            let pem = std::fs::read(ca_file)
                .map_err(|e| HgError::HttpSetup(format!("cannot read ca_file {shown}: {e}")))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                HgError::HttpSetup(format!("ca_file {shown}: {}", polld_backend::one_line(&e)))
            })?;
            // In addition to the system's roots, as the contract says.
            builder = builder.tls_certs_merge(certificates);
        }
        let client = builder.build().map_err(|e| {
            HgError::HttpSetup(format!(
                "cannot set up an HTTP client: {}",
                polld_backend::one_line(&e)
            ))
        })?;
        Ok(self.client.get_or_init(|| client))
    }

    /// Asks for the branchmap (when `branches`) and the bookmarks (when `bookmarks`).
    pub(crate) async fn heads(
        &self,
        base: &Url,
        auth: Option<&HttpAuth<'_>>,
        branches: bool,
        bookmarks: bool,
    ) -> Result<RemoteHeads, HgError> {
        // One after the other: `hg serve` answers concurrent requests with 500s.
        let mut heads = RemoteHeads::default();
        if branches {
            let body = self.get(base, &[("cmd", "branchmap")], auth).await?;
            heads.branches = parse_branchmap(&body)?;
        }
        if bookmarks {
            let query = [("cmd", "listkeys"), ("namespace", "bookmarks")];
            let body = self.get(base, &query, auth).await?;
            heads.bookmarks = parse_bookmarks(&body)?;
        }
        Ok(heads)
    }

    async fn get(
        &self,
        base: &Url,
        query: &[(&str, &str)],
        auth: Option<&HttpAuth<'_>>,
    ) -> Result<Vec<u8>, HgError> {
        let mut url = base.clone();
        url.query_pairs_mut().extend_pairs(query);
        let shown = url.to_string();
        let http_error = |e: reqwest::Error| HgError::Http {
            url: shown.clone(),
            message: polld_backend::one_line(&e.without_url()),
        };
        let mut request = self
            .client()?
            .get(url.clone())
            // What hg itself sends: some servers route on them.
            .header(ACCEPT, "application/mercurial-0.1")
            .header(USER_AGENT, "mercurial/proto-1.0 (polld)");
        if let Some(auth) = auth {
            request = request.basic_auth(auth.username, auth.password);
        }
        let mut response = request.send().await.map_err(http_error)?;
        let status = response.status();
        let is_hg = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/mercurial"));
        if !status.is_success() || !is_hg {
            return Err(HgError::NotMercurial {
                url: shown,
                status: status.to_string(),
            });
        }
        // Read as it arrives, no further than the limit: a server may send without end.
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(http_error)? {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(HgError::Protocol {
                    what: "wire-protocol",
                    detail: format!("the answer of {shown} is larger than {MAX_ANSWER} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "f6c4d169d98707149918669b70b00f983857fabe";
    const B: &str = "e6994faac18e9d3477023cbec1aaf1daf7333954";

    #[test]
    fn parses_the_wire_formats() {
        let body = format!("default {A}\nst%C3%A4ble%20x {B} {A}\n");
        let branches = parse_branchmap(body.as_bytes()).unwrap();
        assert_eq!(branches["default"], [A]);
        assert_eq!(branches["stäble x"], [B, A], "decoded, heads sorted");
        let bookmarks = parse_bookmarks(format!("@\t{A}\nfeature x\t{B}\n").as_bytes()).unwrap();
        assert_eq!(bookmarks["feature x"], B);
        let both = parse_polld_heads(format!("default {A}\n\0@\t{B}\n").as_bytes()).unwrap();
        assert_eq!(both.bookmarks["@"], B);
        assert_eq!(both.branches["default"], [A]);
        assert_eq!(parse_polld_heads(b"\0").unwrap(), RemoteHeads::default());
    }

    #[test]
    fn refuses_what_is_not_a_hash() {
        assert!(parse_branchmap(b"default id(x)\n").is_err());
        assert!(parse_branchmap(b"default\n").is_err());
        assert!(parse_bookmarks(b"@ nohash\n").is_err());
        assert!(parse_bookmarks(format!("@\t{}\n", A.to_uppercase()).as_bytes()).is_err());
        assert!(parse_polld_heads(b"default\n").is_err());
    }
}
