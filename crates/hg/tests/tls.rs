//! hg over https with a private CA: Apache with mod_ssl in front of `hg serve`, its
//! certificate signed by a CA only `ca_file` names. Both the heads check (in-process)
//! and `hg pull` must trust it with `ca_file`, and neither without.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use polld_backend::PollerContext;
use polld_test_support::apache::https_proxy;
use polld_test_support::tls::TestCa;
use serde_json::json;

#[tokio::test]
async fn https_is_trusted_through_ca_file_and_only_through_it() {
    let fx = Fixture::new();
    let serve = HgServe::start(&fx.remote.path, &fx.tmp.path().join("access.log"));
    let ca = TestCa::new(&fx.tmp.path().join("ca"), "hg");
    let proxy = https_proxy(serve.port, &ca.server_cert("hg"));
    // hg (as svn) matches the host against the certificate's DNS names only, not its IP
    // address: `localhost` is one of them.
    let url = proxy.url("").replace("127.0.0.1", "localhost");

    // hg itself does not trust this server: the test would prove nothing otherwise.
    let plain = hg_command(fx.tmp.path())
        .args(["identify", "--", &url])
        .output()
        .unwrap();
    assert!(!plain.status.success(), "hg trusts the test CA by itself");

    // With ca_file: the heads check and the pull (first poll, then a new commit).
    let trusted = PollerContext {
        ca_file: Some(ca.cert.clone()),
        ..fx.context(&url)
    };
    let poller = build(trusted, json!({})).unwrap();
    let mut cursor = first_poll(&poller).await;
    assert!(
        serve.requests().iter().any(|r| r.contains("cmd=getbundle")),
        "hg pulled over https: {:?}",
        serve.requests()
    );
    let new = fx.remote.commit("over https");
    assert_eq!(revisions(&advance(&poller, &mut cursor).await), [&new]);

    // Without it the check refuses the server before hg runs.
    let untrusted = build(fx.context(&url), json!({})).unwrap();
    let error = untrusted.poll(None).await.unwrap_err().to_string();
    assert!(
        error.contains("invalid peer certificate: UnknownIssuer"),
        "{error}"
    );
}
