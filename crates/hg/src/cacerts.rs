//! `ca_file` for the `hg` client.
//!
//! hg's `web.cacerts` does not add to the system's certificates, it replaces them
//! (mercurial/sslutil.py loads that file instead of the defaults), where the contract
//! says `ca_file` is trusted in addition to them. So hg is given a bundle polld writes
//! next to the mirror, `<mirror_dir>/cacerts.pem`: the `ca_file`'s certificates, then
//! the system's bundle (the first of `$SSL_CERT_FILE` and the usual places that
//! exists). The file is rewritten only when its content would change, and only when a
//! pull needs it: a poll that finds nothing does not touch it.

use std::path::{Path, PathBuf};

use crate::error::HgError;

/// Where Linux distributions and BSDs keep the system's bundle, as OpenSSL and Go look.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/ssl/cert.pem",
    "/usr/local/share/certs/ca-root-nss.crt",
];

/// Writes `<dir>/cacerts.pem` (the `ca_file`, then the system's bundle) and returns
/// its path, for `hg --config web.cacerts=<path>`.
pub(crate) async fn bundle(ca_file: &Path, dir: &Path) -> Result<PathBuf, HgError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| HgError::mirror(&path, source)
    };
    let mut text = tokio::fs::read(ca_file).await.map_err(io(ca_file))?;
    if !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    for candidate in from_env
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
    {
        if let Ok(system) = tokio::fs::read(&candidate).await {
            text.extend_from_slice(&system);
            break;
        }
    }
    let path = dir.join("cacerts.pem");
    if tokio::fs::read(&path).await.ok().as_deref() != Some(&text[..]) {
        tokio::fs::write(&path, &text).await.map_err(io(&path))?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn puts_the_ca_file_first_and_rewrites_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----",
        )
        .unwrap();
        let path = bundle(&ca, dir.path()).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n"));
        let written = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        bundle(&ca, dir.path()).await.unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            written
        );
    }
}
