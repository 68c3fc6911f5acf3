//! End-to-end: the status page (`GET /` on the control endpoint) in a real browser.
//!
//! A real `polld run` serves the page; Debian's headless `chromium` loads it, runs its
//! script (which fetches `/status`), and the tests read the resulting DOM. The first
//! test also writes the README's screenshot, `docs/status-page.png`.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use polld_test_support::*;
use serde_json::Value;

const TOKEN: &str = "page-test-token";

/// A running daemon with a control endpoint on a free port.
struct Setup {
    _polld: Polld,
    port: u16,
    daemon: RunningPolld,
}

fn start(sink: &str, defaults: &str, pollers: &str) -> Setup {
    let port = free_port();
    let polld = Polld::with_config(&format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:{port}\"\ntoken_env = \"POLLD_TOKEN\"\n\n\
         [defaults]\ninterval = \"1h\"\n{defaults}\n\n[sink]\n{sink}\n\n{pollers}"
    ));
    let mut daemon = polld.spawn_run(&[("POLLD_TOKEN", TOKEN)]);
    daemon.wait_for(Duration::from_secs(60), "the control endpoint", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Setup {
        _polld: polld,
        port,
        daemon,
    }
}

impl Setup {
    fn url(&self, rest: &str) -> String {
        format!("http://127.0.0.1:{}/{rest}", self.port)
    }

    fn status(&self) -> Value {
        let (code, body) = http::control(self.port, "GET", "/status", None);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    fn poller(&self, name: &str) -> Value {
        let status = self.status();
        status["pollers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    }
}

/// The rows the page drew into its table body, in order: (name, state).
fn rows(dom: &str) -> Vec<(String, String)> {
    let attribute = |row: &str, name: &str| {
        let start = row.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        row[start..start + row[start..].find('"').unwrap()].to_owned()
    };
    let body_start = dom.find("<tbody id=\"rows\">").expect("the table body");
    let body = &dom[body_start..body_start + dom[body_start..].find("</tbody>").unwrap()];
    body.split("<tr ")
        .skip(1)
        .filter(|row| row.contains("data-name="))
        .map(|row| (attribute(row, "data-name"), attribute(row, "data-state")))
        .collect()
}

/// The text of the element with this id (its first text node).
fn text_of(dom: &str, id: &str) -> String {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in\n{dom}"));
    let start = at + dom[at..].find('>').unwrap() + 1;
    dom[start..start + dom[start..].find('<').unwrap()].to_owned()
}

fn screenshot_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/status-page.png")
}

#[test]
fn the_page_shows_every_poller_trouble_first_without_credentials() {
    let ok = RemotePair::with_initial_commit();
    let queued = RemotePair::with_initial_commit();
    let missing = std::env::temp_dir().join("polld-page-test-no-such-repo.git");
    let pollers = [
        git_poller("app", &ok.repo(), ""),
        git_poller("queued", &queued.repo(), ""),
        git_poller("broken", &missing.display().to_string(), ""),
        git_poller("creds", "https://user:secret@127.0.0.1:1/x.git", ""),
    ]
    .concat();
    // A webhook nobody answers: a change waits, its delivery retried with backoff.
    let sink = format!(
        "type = \"webhook\"\nurl = \"http://127.0.0.1:{}/hook\"",
        free_port()
    );
    let mut s = start(&sink, "", &pollers);
    let port = s.port;
    s.daemon
        .wait_for(Duration::from_secs(30), "every first poll", || {
            let (_, body) = http::control(port, "GET", "/status", None);
            let status: Value = serde_json::from_str(&body).unwrap_or_default();
            status["pollers"]
                .as_array()
                .is_some_and(|all| all.iter().all(|p| !p["last_poll"].is_null()))
        });
    queued.work.commit("a.txt", "a\n", "one");
    queued.work.push(&["main"]);
    assert_eq!(
        http::control(port, "POST", "/poll/queued", Some(TOKEN)).0,
        202
    );
    s.daemon
        .wait_for(Duration::from_secs(30), "the undeliverable change", || {
            let (_, body) = http::control(port, "GET", "/status", None);
            body.contains("\"last_delivery_error\":\"")
        });
    assert_eq!(s.poller("queued")["pending"], 1);

    // Served as HTML, under a policy that allows no other source.
    let answer = http::request(port, "GET", "/", &[], b"").unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let policy = answer.header("content-security-policy").unwrap();
    assert!(
        policy.contains("default-src 'none'") && policy.contains("script-src 'sha256-"),
        "{policy}"
    );

    let dom = chromium::dump_dom(&s.url(""));
    assert_eq!(
        rows(&dom),
        [
            ("broken", "failing"),
            ("creds", "failing"),
            ("queued", "backing off"),
            ("app", "ok"),
        ]
        .map(|(n, st)| (n.to_owned(), st.to_owned())),
        "trouble first, every poller once\n{dom}"
    );
    assert!(!dom.contains("secret"), "a password in the page\n{dom}");
    assert!(dom.contains("https://127.0.0.1:1/x.git"), "{dom}");
    assert_eq!(
        text_of(&dom, "summary"),
        "4 pollers: 1 ok, 2 failing, 1 backing off; 1 pending, 0 dead letters"
    );
    assert_eq!(text_of(&dom, "banner"), "", "the script ran under the CSP");

    // The filter, read from the URL's fragment (or ?filter=) as the page loads.
    for url in [s.url("#filter=cre"), s.url("?filter=CRE")] {
        let dom = chromium::dump_dom(&url);
        assert_eq!(
            rows(&dom),
            [("creds".to_owned(), "failing".to_owned())],
            "{url}\n{dom}"
        );
        assert_eq!(text_of(&dom, "note"), "1 of 4 pollers match.");
    }

    chromium::screenshot(&s.url(""), &screenshot_path(), (1280, 220));
}

#[test]
fn ten_thousand_pollers_render_capped() {
    const N: usize = 10_000;
    let pollers: String = (0..N)
        .map(|i| {
            git_poller(
                &format!("repo-{i:05}"),
                &format!("/srv/git/repo-{i:05}.git"),
                "",
            )
        })
        .collect();
    // Barely anything polls: the page shows what the daemon knows, 10,000 times.
    let s = start(
        "type = \"jsonl\"\npath = \"changes.jsonl\"",
        "at_launch = false",
        &pollers,
    );

    let started = Instant::now();
    let answer = http::request(s.port, "GET", "/", &[], b"").unwrap();
    assert_eq!(answer.status, 200);
    let (code, body) = http::control(s.port, "GET", "/status", None);
    assert_eq!(code, 200);
    eprintln!(
        "GET / and /status with {N} pollers: {:?}",
        started.elapsed()
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["pollers"]
            .as_array()
            .unwrap()
            .len(),
        N
    );

    let started = Instant::now();
    let dom = chromium::dump_dom(&s.url(""));
    let rendered = started.elapsed();
    let drawn = rows(&dom);
    assert_eq!(drawn.len(), 1000, "rows are capped");
    // The first polls are spread over the interval, so a few (of repositories that do
    // not exist) may have failed by now: those come first, then the rest by name.
    let failing = drawn
        .iter()
        .take_while(|(_, state)| state == "failing")
        .count();
    let rest = &drawn[failing..];
    assert!(rest.iter().all(|(_, state)| state == "ok"), "{drawn:?}");
    assert!(
        rest.windows(2).all(|w| w[0].0 < w[1].0),
        "by name: {rest:?}"
    );
    assert_eq!(
        text_of(&dom, "note"),
        "Showing 1000 of 10000 pollers, trouble first; filter by name to see the others."
    );
    eprintln!("chromium loaded and drew the page in {rendered:?}");

    let dom = chromium::dump_dom(&s.url("#filter=repo-0999"));
    assert_eq!(rows(&dom).len(), 10, "repo-09990 to repo-09999");
}
