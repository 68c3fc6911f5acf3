//! The HTTP client of the cheap check over http(s): one per distinct `ca_file`,
//! shared by every svn poller of the process.
//!
//! Sharing matters: building a client loads the system's root certificates (several
//! milliseconds of CPU), and one client is one connection pool, so pollers of the same
//! server reuse each other's connections (over HTTP/2, many polls share one). The
//! client is built at a poller's first poll, never by `polld check`.
//!
//! - TLS is rustls with the system's roots plus the `ca_file` certificates; a
//!   certificate failure is never waved through.
//! - Redirects are not followed: a moved repository is `svn info`'s to report.
//! - Proxies come from the usual environment variables (`HTTPS_PROXY`, `NO_PROXY`, ...).
//! - No client-wide timeout: each request carries its poller's own.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::error::SvnError;

/// Bounds how long a TCP and TLS handshake may take, whatever the poller's timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The client for `ca_file` (`None`: the system's roots alone).
pub(crate) fn client(ca_file: Option<&Path>) -> Result<reqwest::Client, SvnError> {
    // Keyed by the file's content, not its name: a config reload after the CA file
    // changed gets a client that trusts the new content.
    let pem = match ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|source| SvnError::CaFile {
            path: path.display().to_string(),
            message: source.to_string(),
        })?),
        None => None,
    };
    static CLIENTS: OnceLock<Mutex<HashMap<Option<Vec<u8>>, reqwest::Client>>> = OnceLock::new();
    let clients = CLIENTS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut clients = clients
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(client) = clients.get(&pem) {
        return Ok(client.clone());
    }
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("polld/", env!("CARGO_PKG_VERSION"), " (svn)"));
    if let (Some(pem), Some(path)) = (&pem, ca_file) {
        let certificates =
            reqwest::Certificate::from_pem_bundle(pem).map_err(|error| SvnError::CaFile {
                path: path.display().to_string(),
                message: polld_backend::one_line(&error),
            })?;
        builder = builder.tls_certs_merge(certificates);
    }
    let client = builder
        .build()
        .map_err(|error| SvnError::HttpClient(polld_backend::one_line(&error)))?;
    clients.insert(pem, client.clone());
    Ok(client)
}
