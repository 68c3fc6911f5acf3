//! A real Buildbot master (PyPI buildbot in a venv) on 127.0.0.1, for the delivery tests,
//! and a scriptable webhook receiver.
//!
//! The venv is `$POLLD_BUILDBOT_VENV`, else `$HOME/.cache/polld-venv`; `scripts/test.sh`
//! creates it. Every master lives in its own temp dir on its own port; every wait has a
//! deadline; the master process is killed on drop.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{assert_changes, free_port, run_bounded};

/// How long a master may take to come up (several start at once on a 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The venv holding `buildbot` 4.3; panics, saying how to create it, when it is missing.
pub fn venv() -> PathBuf {
    let venv = match std::env::var_os("POLLD_BUILDBOT_VENV") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
            .join(".cache")
            .join("polld-venv"),
    };
    let bin = venv.join("bin").join("buildbot");
    assert!(
        bin.is_file(),
        "no Buildbot venv: {} does not exist. Run scripts/test.sh (it creates the venv with \
         buildbot==4.3.0 and buildbot-www==4.3.0), or point POLLD_BUILDBOT_VENV at one.",
        bin.display()
    );
    venv
}

/// Basic-auth credentials the master's change hook requires (`change_hook_auth`).
#[derive(Debug, Clone)]
pub struct HookAuth {
    pub username: String,
    pub password: String,
}

/// A running (or stopped) Buildbot master with the `base` change hook.
pub struct BuildbotMaster {
    /// Holds the master's basedir and its console logs.
    pub dir: TempDir,
    pub basedir: PathBuf,
    pub port: u16,
    child: Option<Child>,
    starts: usize,
    /// The changes read so far, oldest first.
    known: Mutex<Vec<Value>>,
}

impl BuildbotMaster {
    /// A new master with an open change hook.
    pub fn start() -> BuildbotMaster {
        BuildbotMaster::create(None, true)
    }

    /// A new master with an open change hook and no scheduler: it stores changes and
    /// starts no builds. For tests that stream hundreds of changes: the scheduler adds
    /// one buildset per change at 1–2 a second on this machine, and while it catches up
    /// the master answers its REST API a minute late.
    pub fn start_without_builds() -> BuildbotMaster {
        BuildbotMaster::create(None, false)
    }

    /// A new master whose change hook requires HTTP basic auth with these credentials.
    pub fn start_with_auth(username: &str, password: &str) -> BuildbotMaster {
        BuildbotMaster::create(
            Some(HookAuth {
                username: username.into(),
                password: password.into(),
            }),
            true,
        )
    }

    fn create(auth: Option<HookAuth>, builds: bool) -> BuildbotMaster {
        let venv = venv();
        let dir = tempfile::Builder::new()
            .prefix("polld-e2e-buildbot")
            .tempdir()
            .unwrap();
        let basedir = dir.path().join("master");
        let mut cmd = Command::new(venv.join("bin").join("buildbot"));
        cmd.current_dir(dir.path())
            .args(["create-master", "-q", "--db", "sqlite:///state.sqlite"])
            .arg(&basedir);
        let out = run_bounded(cmd);
        assert_eq!(
            out.code,
            Some(0),
            "buildbot create-master failed\n{}",
            out.describe()
        );
        if !builds {
            std::fs::write(basedir.join("no-builds"), "").unwrap();
        }
        if let Some(auth) = &auth {
            std::fs::write(
                basedir.join("changehook.passwd"),
                format!("{}:{}\n", auth.username, auth.password),
            )
            .unwrap();
        }
        let mut master = BuildbotMaster {
            dir,
            basedir,
            port: 0,
            child: None,
            starts: 0,
            known: Mutex::new(Vec::new()),
        };
        // The port is free when picked but may be taken before the master binds it:
        // a master that exits without answering gets another port.
        let mut failures = Vec::new();
        for _ in 0..5 {
            master.port = free_port();
            std::fs::write(
                master.basedir.join("master.cfg"),
                master_cfg(master.port, auth.is_some()),
            )
            .unwrap();
            match master.launch() {
                Ok(()) => return master,
                Err(why) => failures.push(format!("port {}: {why}", master.port)),
            }
        }
        panic!(
            "the Buildbot master did not come up:\n{}",
            failures.join("\n")
        );
    }

    /// `http://127.0.0.1:PORT/change_hook/base`.
    pub fn hook_url(&self) -> String {
        format!("http://127.0.0.1:{}/change_hook/base", self.port)
    }

    /// A polld `[sink]` table delivering to this master (no credentials).
    pub fn sink_config(&self) -> String {
        format!(
            "[sink]\ntype = \"buildbot\"\nurl = \"{}\"\n\n",
            self.hook_url()
        )
    }

    /// Whether the master process is running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Stops the master (SIGTERM, SIGKILL after 20 s) and waits for it; its state stays.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
        // The port is closed once the process is gone.
        assert!(
            ureq::get(&self.api("changes?limit=1")).call().is_err(),
            "the master still answers on port {} after stop",
            self.port
        );
    }

    /// Starts the stopped master again: same basedir (its changes kept), same port.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again on a running master");
        if let Err(why) = self.launch() {
            panic!(
                "the Buildbot master did not come back on port {}: {why}",
                self.port
            );
        }
    }

    /// Spawns `buildbot start --nodaemon` and waits until the REST API answers.
    fn launch(&mut self) -> Result<(), String> {
        let _ = std::fs::remove_file(self.basedir.join("twistd.pid"));
        self.starts += 1;
        let log =
            std::fs::File::create(self.dir.path().join(format!("console-{}.log", self.starts)))
                .unwrap();
        let mut cmd = Command::new(venv().join("bin").join("buildbot"));
        cmd.current_dir(self.dir.path())
            .args(["start", "--nodaemon"])
            .arg(&self.basedir)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().expect("spawn buildbot start --nodaemon");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!(
                    "buildbot exited ({status}) before it answered\n{}",
                    self.log_tail()
                ));
            }
            if let Ok(body) = get(&self.api("changes?limit=1"))
                && serde_json::from_str::<Value>(&body).is_ok_and(|v| v["changes"].is_array())
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut child = self.child.take().unwrap();
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "no answer from /api/v2/changes within {START_TIMEOUT:?}\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of the master's `twistd.log`, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.basedir.join("twistd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- twistd.log (tail) ---\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }

    /// With `true`, the `base` dialect is switched off: `/change_hook/base` answers 400.
    /// Reconfigures the running master (SIGHUP) and waits until the reconfig completed.
    pub fn refuse_changes(&mut self, refuse: bool) {
        let flag = self.basedir.join("refuse-changes");
        if refuse {
            std::fs::write(&flag, "").unwrap();
        } else {
            let _ = std::fs::remove_file(&flag);
        }
        let completed = || {
            std::fs::read_to_string(self.basedir.join("twistd.log"))
                .unwrap_or_default()
                .matches("configuration update complete")
                .count()
        };
        let before = completed();
        let pid = self
            .child
            .as_ref()
            .expect("refuse_changes on a stopped master")
            .id();
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid as i32, libc::SIGHUP);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while completed() == before {
            assert!(
                Instant::now() < deadline,
                "the master did not complete its reconfig within 30 s\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT/api/v2/<path>`.
    pub fn api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/api/v2/{path}", self.port)
    }

    /// Every change the master stored, oldest first.
    ///
    /// Changes never change once stored, so only those newer than the last one read are
    /// fetched, 100 per request (a busy master takes seconds to list hundreds). Buildbot
    /// 4.3 answers this endpoint newest first whatever `order=` says (`order` and `limit`
    /// only pick which changes), so the order is made here, by changeid.
    #[track_caller]
    pub fn changes(&self) -> Vec<Value> {
        let mut known = self.known.lock().unwrap();
        loop {
            let last = known.last().map_or(0, |c| c["changeid"].as_u64().unwrap());
            let url = self.api(&format!(
                "changes?changeid__gt={last}&order=changeid&limit=100"
            ));
            let body = get(&url).unwrap_or_else(|e| panic!("GET {url}: {e}\n{}", self.log_tail()));
            let v: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"));
            let mut page = v["changes"]
                .as_array()
                .unwrap_or_else(|| panic!("GET {url}: no changes array: {body}"))
                .clone();
            if page.is_empty() {
                break;
            }
            page.sort_by_key(|c| c["changeid"].as_u64());
            // Change ids count up from 1 in a fresh master.
            for (i, change) in page.iter().enumerate() {
                assert_eq!(
                    change["changeid"].as_u64(),
                    Some(last + 1 + i as u64),
                    "GET {url}: change ids with a gap"
                );
            }
            known.extend(page);
        }
        known.clone()
    }

    /// How many changes the master has stored (its newest changeid; ids start at 1).
    /// Cheap enough to call in a tight loop.
    pub fn change_count(&self) -> u64 {
        let url = self.api("changes?order=-changeid&limit=1&field=changeid");
        get(&url)
            .ok()
            .and_then(|body| serde_json::from_str::<Value>(&body).ok())
            .and_then(|v| v["changes"][0]["changeid"].as_u64())
            .unwrap_or(0)
    }
}

impl Drop for BuildbotMaster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn master_cfg(port: u16, auth: bool) -> String {
    let auth = if auth {
        "c['www']['change_hook_auth'] = [strcred.makeChecker('file:' + os.path.join(basedir, 'changehook.passwd'))]\n"
    } else {
        ""
    };
    format!(
        r#"import os
from buildbot.plugins import schedulers, util, worker
from twisted.cred import strcred
c = BuildmasterConfig = {{}}
c['workers'] = [worker.Worker('w', 'unused-password')]
c['protocols'] = {{'null': {{}}}}
c['builders'] = [util.BuilderConfig(name='b', workernames=['w'], factory=util.BuildFactory())]
# With no-builds, the scheduler's filter takes no change (a builder must have one).
only = util.ChangeFilter(project='no project has this name') if os.path.exists(os.path.join(basedir, 'no-builds')) else None
c['schedulers'] = [schedulers.AnyBranchScheduler(name='all', builderNames=['b'], treeStableTimer=None, change_filter=only)]
dialects = {{}} if os.path.exists(os.path.join(basedir, 'refuse-changes')) else {{'base': True}}
c['www'] = {{'port': 'tcp:{port}:interface=127.0.0.1', 'change_hook_dialects': dialects, 'plugins': {{}}}}
{auth}c['db'] = {{'db_url': 'sqlite:///state.sqlite'}}
c['buildbotNetUsageData'] = None
c['title'] = 'polld test master'
c['buildbotURL'] = 'http://127.0.0.1:{port}/'
"#
    )
}

/// GET `url`: the body of a 2xx answer, else a description of what went wrong.
pub fn get(url: &str) -> Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        // A master still creating buildsets for hundreds of changes, on a loaded 2-core
        // machine, may take minutes to answer.
        .timeout_global(Some(Duration::from_secs(180)))
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
    response
        .body_mut()
        .with_config()
        .limit(512 * 1024 * 1024)
        .read_to_string()
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------
// Comparing what the master stored with the contract's change records
// ---------------------------------------------------------------------------------------

/// The fields of a change record that the buildbot sink sends and the master stores.
pub const MASTER_FIELDS: [&str; 12] = [
    "revision",
    "author",
    "committer",
    "comments",
    "files",
    "branch",
    "repository",
    "project",
    "codebase",
    "category",
    "revlink",
    "when_timestamp",
];

/// What a Buildbot master stores for a contract change record (see `GitRepo::expected`):
/// the fields the hook takes, `properties` as `{"k": [v, "Change"]}`, and a null `revlink`
/// as "" (the sink leaves it out; the master stores a missing revlink as "").
pub fn master_view(record: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for field in MASTER_FIELDS {
        out.insert(field.into(), record[field].clone());
    }
    if out["revlink"].is_null() {
        out.insert("revlink".into(), json!(""));
    }
    let properties: serde_json::Map<String, Value> = record["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("record without a properties object: {record}"))
        .iter()
        .map(|(k, v)| (k.clone(), json!([v, "Change"])))
        .collect();
    out.insert("properties".into(), Value::Object(properties));
    Value::Object(out)
}

/// A master change reduced to the fields [`master_view`] gives.
pub fn stored_view(change: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for field in MASTER_FIELDS.iter().chain(&["properties"]) {
        out.insert(
            (*field).into(),
            change.get(*field).cloned().unwrap_or(Value::Null),
        );
    }
    Value::Object(out)
}

/// Asserts the master stored exactly `expected` (contract records), per branch in order;
/// the order between branches is free. Works for any VCS's records.
#[track_caller]
pub fn assert_master_changes(stored: &[Value], expected: &[Value]) {
    let group = |values: Vec<Value>| {
        let mut groups: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for v in values {
            groups.entry(v["branch"].to_string()).or_default().push(v);
        }
        groups
    };
    let got = group(stored.iter().map(stored_view).collect());
    let want = group(expected.iter().map(master_view).collect());
    let keys = |g: &BTreeMap<String, Vec<Value>>| g.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(&got),
        keys(&want),
        "the master's changes are on other branches than expected"
    );
    for (branch, want) in &want {
        assert_changes(&got[branch], want);
    }
}

/// A contract record with the poller-level fields set as a `[[poller]]` table sets them:
/// `revlink` is a template with `{revision}`.
pub fn with_poller_fields(
    mut record: Value,
    project: &str,
    category: Option<&str>,
    codebase: &str,
    revlink: Option<&str>,
    properties: Value,
) -> Value {
    let revision = record["revision"].as_str().unwrap().to_string();
    record["project"] = json!(project);
    record["category"] = json!(category);
    record["codebase"] = json!(codebase);
    record["revlink"] = json!(revlink.map(|t| t.replace("{revision}", &revision)));
    record["properties"] = properties;
    record
}

// ---------------------------------------------------------------------------------------
// A webhook receiver
// ---------------------------------------------------------------------------------------

/// One request a [`WebhookReceiver`] got, and the status it answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub status: u16,
}

impl Received {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "webhook body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// An HTTP server on 127.0.0.1 that answers requests with a script of status codes
/// (`then` once the script is used up) and records every request. Stopped on drop.
pub struct WebhookReceiver {
    pub port: u16,
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl WebhookReceiver {
    pub fn start(script: &[u16], then: u16) -> WebhookReceiver {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind 127.0.0.1:0"));
        let port = server.server_addr().to_ip().expect("an IP address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Mutex::new(Vec::new()));
        let mut script: std::vec::IntoIter<u16> = Vec::from(script).into_iter();
        let thread = {
            let (server, stop, received) = (server.clone(), stop.clone(), received.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let mut request = match server.recv_timeout(Duration::from_millis(100)) {
                        Ok(Some(request)) => request,
                        Ok(None) => continue,
                        Err(_) => break,
                    };
                    let mut body = Vec::new();
                    let _ = request.as_reader().read_to_end(&mut body);
                    let status = script.next().unwrap_or(then);
                    received.lock().unwrap().push(Received {
                        method: request.method().as_str().to_string(),
                        path: request.url().to_string(),
                        headers: request
                            .headers()
                            .iter()
                            .map(|h| {
                                (
                                    h.field.as_str().as_str().to_ascii_lowercase(),
                                    h.value.as_str().to_string(),
                                )
                            })
                            .collect(),
                        body,
                        status,
                    });
                    let _ = request.respond(
                        tiny_http::Response::from_string(format!("answer {status}"))
                            .with_status_code(status),
                    );
                }
            })
        };
        WebhookReceiver {
            port,
            server,
            stop,
            thread: Some(thread),
            received,
        }
    }

    /// `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
