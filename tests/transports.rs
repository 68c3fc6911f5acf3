//! The git transports end to end, through the `polld` binary: TLS (`ca_file`, an
//! unknown CA, an expired certificate), credentials (a wrong one fails clearly, none
//! ever shows), ssh host keys (no trust on first use), servers that speak only
//! protocol v0, proxies (`http_proxy`, `https_proxy`, `no_proxy`), redirects, and what
//! a listing costs the server. Real servers on 127.0.0.1, shared by the binary: Apache
//! with `git http-backend` (`polld_test_support::httpd`), two sshds
//! (`polld_test_support::ssh`), and a counting forward proxy per test.
//!
//! Each `polld` runs with no proxy variables and no ssh agent from the environment
//! the tests run in, and with `HOME` set by the test (its own empty directory unless it
//! needs `~/.ssh/known_hosts`).

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use polld_test_support::httpd::{GitHttpd, PASSWORD, Port, Request, Route, USER, with_userinfo};
use polld_test_support::proxy::ForwardProxy;
use polld_test_support::ssh::{SshServers, home_with_known_hosts, keygen};
use polld_test_support::{
    Outcome, Polld, RemotePair, assert_changes, files_containing, free_port, git_poller,
    read_jsonl, run_bounded, toml_str, wait_until,
};
use serde_json::Value;

/// Proxy settings a CI machine may have: no `polld` here inherits them.
const PROXY_VARIABLES: [&str; 8] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// The variable wrong and right passwords are handed over in.
const PASSWORD_VARIABLE: &str = "POLLD_TRANSPORTS_TEST_PASSWORD";

/// Every log line polld and its HTTP and TLS libraries write: a credential must not be
/// in any of them, not only in those a default filter shows.
const TRACE: (&str, &str) = ("POLLD_LOG", "trace");

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// `key = "value"` lines for a poller table.
fn keys(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(key, value)| format!("{key} = {}\n", toml_str(value)))
        .collect()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The bare remote's path, which every server serves.
fn remote_path(pair: &RemotePair) -> PathBuf {
    pair.remote.path.clone()
}

/// A URL of the remote on the shared Apache.
fn http_url(pair: &RemotePair, port: Port, route: Route) -> String {
    GitHttpd::shared().url(port, route, &remote_path(pair))
}

/// `ca_file = <the test CA>`.
fn ca_file() -> String {
    keys(&[("ca_file", path_str(&GitHttpd::shared().ca_file))])
}

/// `polld <args>` with a clean environment plus `env`: no proxies or ssh agent from
/// outside, `HOME` the run's own empty directory unless `env` sets it.
fn polld_command(polld: &Polld, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = polld.command();
    for variable in PROXY_VARIABLES {
        cmd.env_remove(variable);
    }
    cmd.env_remove("SSH_AUTH_SOCK")
        .env("HOME", polld.path("home"))
        .envs(env.iter().copied())
        .args(args);
    cmd
}

/// `polld once` as [`polld_command`] makes it.
fn once(polld: &Polld, env: &[(&str, &str)]) -> Outcome {
    run_bounded(polld_command(polld, env, &["once"]))
}

/// The first poll (nothing to report), then a commit pushed to the remote is reported
/// by the next, with every field as git says, `repository` being `repository`.
#[track_caller]
fn reports_new_commits(pair: &RemotePair, polld: &Polld, env: &[(&str, &str)], repository: &str) {
    let first = once(polld, env);
    first.expect_code(0);
    assert!(first.records().is_empty(), "{}", first.describe());
    let sha = pair
        .work
        .commit("wire.txt", "over the wire\n", "Over the wire");
    pair.work.push(&["main"]);
    let second = once(polld, env);
    second.expect_code(0);
    assert_changes(
        &second.records(),
        &[pair.work.expected("app", repository, "main", &sha)],
    );
}

/// A poll that must fail: exit 1, stderr naming the poller, and `status` keeping the
/// error and no cursor. Returns stderr and `last_error`, lower-cased, joined.
#[track_caller]
fn fails(polld: &Polld, env: &[(&str, &str)]) -> String {
    let out = once(polld, env);
    out.expect_code(1);
    assert!(out.stderr.contains("app"), "{}", out.describe());
    let status = polld.status_of("app");
    assert!(status["cursor"].is_null(), "{status}");
    let last_error = status["last_error"].as_str().unwrap_or_default();
    assert!(!last_error.is_empty(), "{status}");
    format!("{}\n{last_error}", out.stderr).to_lowercase()
}

/// `secret` is in no output, in `status` and in no file of the state directory.
#[track_caller]
fn appears_nowhere(secret: &str, polld: &Polld, outcomes: &[&Outcome]) {
    for out in outcomes {
        assert!(
            !out.stdout.contains(secret) && !out.stderr.contains(secret),
            "{secret} leaked:\n{}",
            out.describe()
        );
    }
    let status = polld.run(&["status", "--json"]);
    assert!(!status.stdout.contains(secret), "{}", status.stdout);
    let status = polld.run(&["status"]);
    assert!(!status.stdout.contains(secret), "{}", status.stdout);
    let files = files_containing(&polld.path("state"), secret.as_bytes());
    assert!(files.is_empty(), "{secret} stored in {files:?}");
}

/// Waits (up to 10 s) until Apache logged a request for `needle` that `is` picks.
#[track_caller]
fn await_request(needle: &str, what: &str, is: impl Fn(&Request) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !GitHttpd::shared().requests(needle).iter().any(&is) {
        assert!(
            Instant::now() < deadline,
            "no request {what} in Apache's log: {:#?}",
            GitHttpd::shared().requests(needle)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (up to 10 s) until Apache logged at least `count` requests for `needle`
/// (it writes a line once it has answered); returns them all.
#[track_caller]
fn await_requests(needle: &str, count: usize) -> Vec<Request> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let requests = GitHttpd::shared().requests(needle);
        if requests.len() >= count {
            return requests;
        }
        assert!(
            Instant::now() < deadline,
            "{count} requests expected in Apache's log: {requests:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------

/// Over TLS Apache offers HTTP/2, and polld takes it: every request of the listing
/// and the fetch is HTTP/2.
#[test]
fn https_with_ca_file_reports_new_commits_over_http2() {
    let pair = RemotePair::with_initial_commit();
    let url = http_url(&pair, Port::Https, Route::Anonymous);
    let polld = Polld::new(&git_poller("app", &url, &ca_file()));
    reports_new_commits(&pair, &polld, &[], &url);
    let needle = path_str(&remote_path(&pair)).to_owned();
    await_request(&needle, "POSTed (a fetch)", |r| r.method == "POST");
    let requests = GitHttpd::shared().requests(&needle);
    assert!(
        requests.iter().all(|r| r.protocol == "HTTP/2.0"),
        "{requests:#?}"
    );
}

/// The error says the certificate is not trusted and what polld trusts (`ca_file`).
#[test]
fn https_without_ca_file_refuses_the_unknown_ca() {
    let pair = RemotePair::with_initial_commit();
    let url = http_url(&pair, Port::Https, Route::Anonymous);
    let polld = Polld::new(&git_poller("app", &url, ""));
    let error = fails(&polld, &[]);
    assert!(
        error.contains("certificate") && error.contains("ca_file"),
        "{error}"
    );
}

#[test]
fn https_refuses_an_expired_certificate_even_with_ca_file() {
    let pair = RemotePair::with_initial_commit();
    let url = http_url(&pair, Port::Expired, Route::Anonymous);
    let polld = Polld::new(&git_poller("app", &url, &ca_file()));
    let error = fails(&polld, &[]);
    assert!(error.contains("certificate expired"), "{error}");
}

// ---------------------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------------------

/// A wrong password fails the poll naming authentication, offered once (no retry loop),
/// and shows nowhere, not even in trace logs; the right one, read at the next poll,
/// works.
fn wrong_then_right_password(port: Port, extra: &str) {
    let pair = RemotePair::with_initial_commit();
    let url = http_url(&pair, port, Route::Auth);
    let polld = Polld::new(&git_poller(
        "app",
        &url,
        &format!(
            "{extra}{}",
            keys(&[("username", USER), ("password_env", PASSWORD_VARIABLE)])
        ),
    ));
    let wrong = "wrong-pw-8Hq2";
    let error = fails(&polld, &[(PASSWORD_VARIABLE, wrong)]);
    assert!(error.contains("authentication"), "{error}");
    let needle = path_str(&remote_path(&pair)).to_owned();
    await_request(&needle, "answered 401", |r| r.status == 401);
    let refused = GitHttpd::shared().requests(&needle);
    assert_eq!(
        refused.len(),
        1,
        "a rejected password must not be retried: {refused:#?}"
    );
    let failed = once(&polld, &[(PASSWORD_VARIABLE, wrong), TRACE]);
    appears_nowhere(wrong, &polld, &[&failed]);

    reports_new_commits(&pair, &polld, &[(PASSWORD_VARIABLE, PASSWORD)], &url);
    let ok = once(&polld, &[(PASSWORD_VARIABLE, PASSWORD), TRACE]);
    appears_nowhere(PASSWORD, &polld, &[&ok]);
}

#[test]
fn http_basic_auth_wrong_then_right_password() {
    wrong_then_right_password(Port::Http, "");
}

#[test]
fn https_basic_auth_wrong_then_right_password() {
    wrong_then_right_password(Port::Https, &ca_file());
}

/// Credentials in the URL work, and neither they nor a wrong pair in another
/// poller's URL show in logs (at trace level), errors, `status`, records or stored
/// files.
fn credentials_in_the_url_never_show(port: Port, extra: &str) {
    let pair = RemotePair::with_initial_commit();
    let bare = http_url(&pair, port, Route::Auth);
    let good = with_userinfo(&bare, &format!("{USER}:{PASSWORD}"));
    let wrong = "url-pw-Wr0ng-31";
    let bad = with_userinfo(&bare, &format!("{USER}:{wrong}"));
    let polld = Polld::new(&format!(
        "{}{}",
        git_poller("app", &good, extra),
        git_poller("bad", &bad, extra)
    ));
    let first = once(&polld, &[TRACE]);
    first.expect_code(1);
    assert!(first.stderr.contains("bad"), "{}", first.describe());
    let sha = pair
        .work
        .commit("wire.txt", "over the wire\n", "Over the wire");
    pair.work.push(&["main"]);
    let second = once(&polld, &[TRACE]);
    second.expect_code(1);
    assert_changes(
        &second.records(),
        &[pair.work.expected("app", &bare, "main", &sha)],
    );
    for secret in [PASSWORD, wrong] {
        appears_nowhere(secret, &polld, &[&first, &second]);
    }
}

#[test]
fn http_credentials_in_the_url_never_show() {
    credentials_in_the_url_never_show(Port::Http, "");
}

#[test]
fn https_credentials_in_the_url_never_show() {
    credentials_in_the_url_never_show(Port::Https, &ca_file());
}

// ---------------------------------------------------------------------------------------
// Servers that speak only protocol v0
// ---------------------------------------------------------------------------------------

#[test]
fn http_v0_only_server_still_works() {
    let pair = RemotePair::with_initial_commit();
    let url = http_url(&pair, Port::Http, Route::V0);
    let polld = Polld::new(&git_poller("app", &url, ""));
    reports_new_commits(&pair, &polld, &[], &url);
}

#[test]
fn https_v0_only_server_still_works() {
    let pair = RemotePair::with_initial_commit();
    let url = http_url(&pair, Port::Https, Route::V0);
    let polld = Polld::new(&git_poller("app", &url, &ca_file()));
    reports_new_commits(&pair, &polld, &[], &url);
}

#[test]
fn ssh_v0_only_server_still_works() {
    let servers = SshServers::shared();
    let pair = RemotePair::with_initial_commit();
    let url = servers.v0.url(&remote_path(&pair));
    let key = keys(&[("ssh_key_file", path_str(&servers.client_key))]);
    let polld = Polld::new(&git_poller("app", &url, &key));
    let home = [("HOME", path_str(&servers.home))];
    reports_new_commits(&pair, &polld, &home, &url);
}

// ---------------------------------------------------------------------------------------
// ssh: keys and host keys
// ---------------------------------------------------------------------------------------

#[test]
fn ssh_reports_new_commits() {
    let servers = SshServers::shared();
    let pair = RemotePair::with_initial_commit();
    let url = servers.v2.url(&remote_path(&pair));
    let key = keys(&[("ssh_key_file", path_str(&servers.client_key))]);
    let polld = Polld::new(&git_poller("app", &url, &key));
    let home = [("HOME", path_str(&servers.home))];
    reports_new_commits(&pair, &polld, &home, &url);
}

#[test]
fn ssh_unknown_client_key_fails_clearly() {
    let servers = SshServers::shared();
    let pair = RemotePair::with_initial_commit();
    let stranger = pair.dir.path().join("stranger_key");
    keygen(&stranger);
    let url = servers.v2.url(&remote_path(&pair));
    let polld = Polld::new(&git_poller(
        "app",
        &url,
        &keys(&[("ssh_key_file", path_str(&stranger))]),
    ));
    let started = Instant::now();
    let error = fails(&polld, &[("HOME", path_str(&servers.home))]);
    assert!(error.contains("authentication"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "a refused key must fail at once, not retry"
    );
}

#[test]
fn ssh_unknown_host_is_refused_and_not_learned() {
    let servers = SshServers::shared();
    let pair = RemotePair::with_initial_commit();
    let url = servers.v2.url(&remote_path(&pair));
    let key = keys(&[("ssh_key_file", path_str(&servers.client_key))]);
    let polld = Polld::new(&git_poller("app", &url, &key));
    let home = home_with_known_hosts(pair.dir.path(), &[]);
    let env = [("HOME", path_str(&home))];
    let error = fails(&polld, &env);
    assert!(
        error.contains("host key") && error.contains("not in known_hosts"),
        "{error}"
    );
    // No trust on first use: the key was not written down, and is refused again.
    let known_hosts = std::fs::read_to_string(home.join(".ssh/known_hosts")).unwrap();
    assert_eq!(known_hosts, "");
    let error = fails(&polld, &env);
    assert!(error.contains("not in known_hosts"), "{error}");
}

#[test]
fn ssh_changed_host_key_is_refused() {
    let servers = SshServers::shared();
    let pair = RemotePair::with_initial_commit();
    let other = pair.dir.path().join("other_host_key");
    keygen(&other);
    let home = home_with_known_hosts(
        pair.dir.path(),
        &[servers
            .v2
            .known_hosts_line_with(&other.with_extension("pub"))],
    );
    let url = servers.v2.url(&remote_path(&pair));
    let key = keys(&[("ssh_key_file", path_str(&servers.client_key))]);
    let polld = Polld::new(&git_poller("app", &url, &key));
    let error = fails(&polld, &[("HOME", path_str(&home))]);
    assert!(
        error.contains("host key") && error.contains("changed"),
        "{error}"
    );
}

/// `known_hosts_file` is where the host key is looked up (here `~/.ssh/known_hosts`
/// knows no host at all).
#[test]
fn known_hosts_file_names_the_known_hosts() {
    let servers = SshServers::shared();
    let pair = RemotePair::with_initial_commit();
    let url = servers.v2.url(&remote_path(&pair));
    let polld = Polld::new(&git_poller(
        "app",
        &url,
        &keys(&[
            ("ssh_key_file", path_str(&servers.client_key)),
            ("known_hosts_file", path_str(&servers.known_hosts)),
        ]),
    ));
    let home = home_with_known_hosts(pair.dir.path(), &[]);
    reports_new_commits(&pair, &polld, &[("HOME", path_str(&home))], &url);
}

// ---------------------------------------------------------------------------------------
// Proxies
// ---------------------------------------------------------------------------------------

#[test]
fn http_proxy_carries_every_http_request() {
    let proxy = ForwardProxy::start();
    let pair = RemotePair::with_initial_commit();
    let url = http_url(&pair, Port::Http, Route::Anonymous);
    let polld = Polld::new(&git_poller("app", &url, ""));
    let proxy_url = proxy.url();
    reports_new_commits(&pair, &polld, &[("http_proxy", proxy_url.as_str())], &url);

    let needle = path_str(&remote_path(&pair)).to_owned();
    let proxied = || {
        proxy
            .requests()
            .iter()
            .filter(|r| r.contains(&needle))
            .count()
    };
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.starts_with("GET ") && r.contains("/info/refs")),
        "the listing went through the proxy: {:#?}",
        proxy.requests()
    );
    // Apache logs a request once answered: wait for every proxied one to be there.
    wait_until(Duration::from_secs(10), "Apache's log to catch up", || {
        GitHttpd::shared().requests(&needle).len() >= proxied()
    });
    assert_eq!(
        GitHttpd::shared().requests(&needle).len(),
        proxied(),
        "every request reached Apache through the proxy: proxy {:#?}\napache {:#?}",
        proxy.requests(),
        GitHttpd::shared().requests(&needle)
    );
}

#[test]
fn https_proxy_tunnels_https() {
    let proxy = ForwardProxy::start();
    let pair = RemotePair::with_initial_commit();
    let url = http_url(&pair, Port::Https, Route::Anonymous);
    let polld = Polld::new(&git_poller("app", &url, &ca_file()));
    let proxy_url = proxy.url();
    reports_new_commits(&pair, &polld, &[("https_proxy", proxy_url.as_str())], &url);
    let tunnel = format!("CONNECT 127.0.0.1:{}", GitHttpd::shared().https_port);
    assert!(
        proxy.requests().contains(&tunnel),
        "{tunnel} expected: {:#?}",
        proxy.requests()
    );
}

/// A certificate refused at the end of a proxy's tunnel fails the poll like any
/// other, within the poller's `timeout`: `polld once` ends.
#[test]
fn an_unknown_ca_through_a_proxy_fails_within_the_timeout() {
    let proxy = ForwardProxy::start();
    let pair = RemotePair::with_initial_commit();
    let url = http_url(&pair, Port::Https, Route::Anonymous);
    let polld = Polld::new(&git_poller("app", &url, &keys(&[("timeout", "5s")])));
    let proxy_url = proxy.url();
    let started = Instant::now();
    let error = fails(&polld, &[("https_proxy", proxy_url.as_str())]);
    assert!(error.contains("certificate"), "{error}");
    assert!(!proxy.requests().is_empty(), "the proxy was not used");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

/// `no_proxy` names the server: the proxy sees nothing, the poll works.
fn no_proxy_bypasses_the_proxy(port: Port, extra: &str) {
    let proxy = ForwardProxy::start();
    let pair = RemotePair::with_initial_commit();
    let url = http_url(&pair, port, Route::Anonymous);
    let polld = Polld::new(&git_poller("app", &url, extra));
    let proxy_url = proxy.url();
    let env = [
        ("http_proxy", proxy_url.as_str()),
        ("https_proxy", proxy_url.as_str()),
        ("no_proxy", "127.0.0.1"),
    ];
    reports_new_commits(&pair, &polld, &env, &url);
    assert_eq!(proxy.requests(), Vec::<String>::new());
}

#[test]
fn no_proxy_bypasses_the_proxy_over_http() {
    no_proxy_bypasses_the_proxy(Port::Http, "");
}

#[test]
fn no_proxy_bypasses_the_proxy_over_https() {
    no_proxy_bypasses_the_proxy(Port::Https, &ca_file());
}

// ---------------------------------------------------------------------------------------
// Redirects
// ---------------------------------------------------------------------------------------

/// A repository moved with a `301` (a forge rename): git follows the redirect of its
/// discovery request, `info/refs`, and talks to the new place from then on; a POST is
/// never sent to the old one.
fn redirected_info_refs_is_followed(port: Port, extra: &str) {
    let pair = RemotePair::with_initial_commit();
    let url = http_url(&pair, port, Route::Redirected);
    let polld = Polld::new(&git_poller("app", &url, extra));
    reports_new_commits(&pair, &polld, &[], &url);
    let needle = path_str(&remote_path(&pair)).to_owned();
    await_request(&needle, "to the new place", |r| {
        r.target.starts_with("/git/") && r.status == 200
    });
    let requests = GitHttpd::shared().requests(&needle);
    assert!(
        requests
            .iter()
            .any(|r| r.target.starts_with("/old/") && r.target.contains("/info/refs")),
        "{requests:#?}"
    );
    assert!(
        requests
            .iter()
            .filter(|r| r.target.starts_with("/old/"))
            .all(|r| r.method == "GET" && r.status == 301),
        "only discovery goes to the old place: {requests:#?}"
    );
}

#[test]
fn http_redirected_info_refs_is_followed() {
    redirected_info_refs_is_followed(Port::Http, "");
}

#[test]
fn https_redirected_info_refs_is_followed() {
    redirected_info_refs_is_followed(Port::Https, &ca_file());
}

/// A server that answers the POST with a redirect (and `info/refs` without one):
/// git refuses to re-aim a POST, and so does polld.
#[test]
fn http_a_redirected_post_fails_the_poll() {
    let pair = RemotePair::with_initial_commit();
    let url = http_url(&pair, Port::Http, Route::PostRedirected);
    let polld = Polld::new(&git_poller("app", &url, ""));
    fails(&polld, &[]);
    let needle = path_str(&remote_path(&pair)).to_owned();
    let requests = GitHttpd::shared().requests(&needle);
    assert!(
        !requests
            .iter()
            .any(|r| r.method == "POST" && r.target.starts_with("/git/")),
        "a redirected POST was followed: {requests:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// What a listing costs the server
// ---------------------------------------------------------------------------------------

/// A poll that finds nothing new asks the server at most twice (discovery and
/// listing) and never fetches.
#[test]
fn an_unchanged_http_poll_makes_at_most_two_requests() {
    let pair = RemotePair::with_initial_commit();
    let url = http_url(&pair, Port::Http, Route::Anonymous);
    let polld = Polld::new(&git_poller("app", &url, ""));
    once(&polld, &[]).expect_code(0);
    let needle = path_str(&remote_path(&pair)).to_owned();
    let before = await_requests(&needle, 1).len();
    let out = once(&polld, &[]);
    out.expect_code(0);
    assert!(out.records().is_empty());
    let requests = await_requests(&needle, before + 1);
    let second = &requests[before..];
    assert!(
        !second.is_empty() && second.len() <= 2,
        "an unchanged poll asked {} times: {second:#?}",
        second.len()
    );
}

/// Protocol v2's `ls-refs` with `ref-prefix` over smart HTTP: 3,000 review refs the
/// poller does not watch cost an unchanged poll nothing (a v0 advertisement of them
/// is ~180 KB).
#[test]
fn http_listing_asks_only_for_the_watched_refs() {
    let pair = RemotePair::with_initial_commit();
    let head = pair.work.head();
    let refs: String = (1..=3000)
        .map(|n| format!("create refs/pull/{n}/head {head}\n"))
        .collect();
    pair.remote
        .git_out(["update-ref", "--stdin"], Some(refs.as_bytes()));
    pair.remote.git(&["pack-refs", "--all"]);
    let url = http_url(&pair, Port::Http, Route::Anonymous);
    let polld = Polld::new(&git_poller("app", &url, &keys(&[("branches", "main")])));
    once(&polld, &[]).expect_code(0);
    let needle = path_str(&remote_path(&pair)).to_owned();
    let before = await_requests(&needle, 1).len();
    once(&polld, &[]).expect_code(0);
    let requests = await_requests(&needle, before + 1);
    let bytes: u64 = requests[before..].iter().map(|r| r.bytes).sum();
    assert!(
        bytes < 20_000,
        "an unchanged poll of one branch read {bytes} bytes: {:#?}",
        &requests[before..]
    );
}

// ---------------------------------------------------------------------------------------
// A running daemon
// ---------------------------------------------------------------------------------------

/// `polld run`, killed on drop.
struct Daemon {
    child: Child,
    stderr: PathBuf,
}

impl Daemon {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A daemon polling every 3 s over https and ssh keeps reporting: its pooled
/// connections outlive Apache's 2 s keep-alive (stale by the next poll), and an ssh
/// connection serves poll after poll.
#[test]
fn a_running_daemon_keeps_polling_over_https_and_ssh() {
    let servers = SshServers::shared();
    let web = RemotePair::with_initial_commit();
    let shell = RemotePair::with_initial_commit();
    let web_url = http_url(&web, Port::Https, Route::Anonymous);
    let shell_url = servers.v2.url(&remote_path(&shell));
    let listen = free_port();
    let polld = Polld::with_config(&format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:{listen}\"\n\n\
         [defaults]\ninterval = \"3s\"\njitter = \"0s\"\n\n\
         [sink]\ntype = \"jsonl\"\npath = \"changes.jsonl\"\n\n{}{}",
        git_poller("web", &web_url, &ca_file()),
        git_poller(
            "shell",
            &shell_url,
            &keys(&[("ssh_key_file", path_str(&servers.client_key))])
        ),
    ));
    let stderr = polld.path("run.stderr");
    let child = polld_command(&polld, &[("HOME", path_str(&servers.home))], &["run"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let daemon = Daemon { child, stderr };
    let polled = |name: &str| {
        let Ok(answer) = polld_test_support::http::request(listen, "GET", "/status", &[], b"")
        else {
            return false;
        };
        let status: Value = serde_json::from_str(&answer.body).unwrap_or_default();
        status["pollers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["name"] == name && !p["last_success"].is_null())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(polled("web") && polled("shell")) {
        assert!(
            Instant::now() < deadline,
            "both first polls within 30 s:\n{}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut expected = Vec::new();
    for round in 1..=2 {
        for (pair, name, url) in [(&web, "web", &web_url), (&shell, "shell", &shell_url)] {
            let sha = pair.work.commit(
                "round.txt",
                &format!("{round}\n"),
                &format!("Round {round}"),
            );
            pair.work.push(&["main"]);
            expected.push(pair.work.expected(name, url, "main", &sha));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (records, bad) = read_jsonl(&polld.path("changes.jsonl"));
            assert!(bad.is_empty(), "{bad:?}");
            if records.len() >= expected.len() {
                let mut records = records;
                records.sort_by_key(|r| (r["when_timestamp"].as_i64(), r["poller"].to_string()));
                let mut want = expected.clone();
                want.sort_by_key(|r| (r["when_timestamp"].as_i64(), r["poller"].to_string()));
                assert_changes(&records, &want);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: {} of {} changes within 30 s:\n{}",
                records.len(),
                expected.len(),
                daemon.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
