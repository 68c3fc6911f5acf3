//! A CloudEvents receiver written with the official Python SDK (the `cloudevents` PyPI
//! package, 2.x, in the Buildbot venv: `scripts/test.sh` installs it): a small
//! `http.server` that parses every request with the SDK's binary-mode HTTP binding and
//! records what the SDK read, so the tests check polld against another implementation
//! rather than against polld's own idea of the format.
//!
//! It answers a script of status codes (then `then`), over http, or https with a
//! [`ServerCert`](crate::tls::ServerCert). A request the SDK cannot parse is recorded
//! with its error and answered 400. Stopped on drop.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::buildbot::venv;
use crate::tls::ServerCert;

/// One JSON line per request: the status answered and the event as the SDK parsed it.
const SCRIPT: &str = r#"
import http.server, json, ssl, sys, threading
from cloudevents.core.bindings.http import HTTPMessage, from_binary
from cloudevents.core.formats.json import JSONFormat

out, script, then = sys.argv[1], sys.argv[2], int(sys.argv[3])
tls = sys.argv[4:6]
statuses = [int(s) for s in script.split(",") if s]
lock = threading.Lock()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        record = {"path": self.path}
        try:
            if not any(k.lower().startswith("ce-") for k in self.headers.keys()):
                raise ValueError("no ce-* headers: not a binary-mode CloudEvent")
            message = HTTPMessage(headers=dict(self.headers.items()), body=body)
            event = from_binary(message, JSONFormat())
            time = event.get_time()
            record.update({
                "specversion": event.get_specversion(),
                "id": event.get_id(),
                "source": event.get_source(),
                "type": event.get_type(),
                "subject": event.get_subject(),
                "time": time.isoformat() if time else None,
                "time_unix": int(time.timestamp()) if time else None,
                "datacontenttype": event.get_datacontenttype(),
                "data": event.get_data(),
            })
            with lock:
                status = statuses.pop(0) if statuses else then
        except Exception as error:
            record["error"] = f"{type(error).__name__}: {error}"
            status = 400
        record["status"] = status
        with lock, open(out, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
if tls:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls[0], tls[1])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// The SDK-backed receiver; see the module documentation.
pub struct CloudEventsReceiver {
    child: Child,
    pub port: u16,
    scheme: &'static str,
    records: PathBuf,
}

impl CloudEventsReceiver {
    /// Over http, answering `script` then `then`; records go to a file in `dir`.
    pub fn start(dir: &Path, script: &[u16], then: u16) -> CloudEventsReceiver {
        CloudEventsReceiver::spawn(dir, script, then, None)
    }

    /// Over https with `cert`, answering 200.
    pub fn start_https(dir: &Path, cert: &ServerCert) -> CloudEventsReceiver {
        CloudEventsReceiver::spawn(dir, &[], 200, Some(cert))
    }

    fn spawn(
        dir: &Path,
        script: &[u16],
        then: u16,
        cert: Option<&ServerCert>,
    ) -> CloudEventsReceiver {
        let python = venv().join("bin").join("python");
        let records = dir.join(format!("cloudevents-{}.jsonl", crate::free_port()));
        let script_arg: Vec<String> = script.iter().map(u16::to_string).collect();
        let mut command = Command::new(&python);
        command
            .arg("-c")
            .arg(SCRIPT)
            .arg(&records)
            .arg(script_arg.join(","))
            .arg(then.to_string());
        if let Some(cert) = cert {
            command.arg(&cert.cert).arg(&cert.key);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{} runs: {e}", python.display()));
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the receiver prints its port");
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!(
                "the CloudEvents receiver did not start (is the `cloudevents` package in {}? \
                 scripts/test.sh installs it); it printed {line:?}",
                python.display()
            )
        });
        CloudEventsReceiver {
            child,
            port,
            scheme: if cert.is_some() { "https" } else { "http" },
            records,
        }
    }

    /// `http(s)://127.0.0.1:PORT/events`.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}/events", self.scheme, self.port)
    }

    /// Every request so far, oldest first, as the SDK read it.
    pub fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.records)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("the receiver writes JSON lines"))
            .collect()
    }
}

impl Drop for CloudEventsReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
