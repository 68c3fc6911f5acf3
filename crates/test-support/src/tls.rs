//! Certificates for the tests' TLS servers: a private certificate authority made with
//! the `openssl` command (installed by `scripts/test.sh`), and server certificates it
//! signs for 127.0.0.1 and `localhost`. Nothing here is trusted by the system: a client
//! accepts these servers only when given the CA's file (`ca_file`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate authority in a directory of its own.
pub struct TestCa {
    /// The CA's certificate, PEM: what a `ca_file` points at.
    pub cert: PathBuf,
    key: PathBuf,
    dir: PathBuf,
}

/// A server certificate and its key, PEM files.
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA under `dir` (created if needed), named `name`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        std::fs::create_dir_all(dir).unwrap();
        let cert = dir.join(format!("{name}-ca.pem"));
        let key = dir.join(format!("{name}-ca.key"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            &format!("/CN=polld test CA {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            path_str(&key),
            "-out",
            path_str(&cert),
        ]);
        TestCa {
            cert,
            key,
            dir: dir.to_path_buf(),
        }
    }

    /// A certificate for 127.0.0.1 and `localhost`, valid for ten years from now.
    pub fn server_cert(&self, name: &str) -> ServerCert {
        self.sign(name, None)
    }

    /// A certificate for 127.0.0.1 and `localhost` that was valid on 1 January 2020 only.
    pub fn expired_server_cert(&self, name: &str) -> ServerCert {
        self.sign(name, Some(("20200101000000Z", "20200102000000Z")))
    }

    /// Signs a new key's certificate, valid ten years from now or within `dates`.
    fn sign(&self, name: &str, dates: Option<(&str, &str)>) -> ServerCert {
        let key = self.dir.join(format!("{name}.key"));
        let request = self.dir.join(format!("{name}.csr"));
        let cert = self.dir.join(format!("{name}.pem"));
        let extensions = self.dir.join(format!("{name}.ext"));
        std::fs::write(
            &extensions,
            "subjectAltName = IP:127.0.0.1, DNS:localhost\n\
             basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            path_str(&key),
            "-out",
            path_str(&request),
        ]);
        match dates {
            None => openssl(&[
                "x509",
                "-req",
                "-in",
                path_str(&request),
                "-CA",
                path_str(&self.cert),
                "-CAkey",
                path_str(&self.key),
                "-CAcreateserial",
                "-days",
                "3650",
                "-extfile",
                path_str(&extensions),
                "-out",
                path_str(&cert),
            ]),
            // `x509` cannot date a certificate in the past; `ca` can, given a config.
            Some((start, end)) => {
                let ca_dir = self.dir.join(format!("{name}-ca-db"));
                std::fs::create_dir_all(&ca_dir).unwrap();
                std::fs::write(ca_dir.join("index.txt"), "").unwrap();
                std::fs::write(ca_dir.join("serial"), "1000\n").unwrap();
                let config = ca_dir.join("ca.cnf");
                std::fs::write(
                    &config,
                    format!(
                        "[ca]\ndefault_ca = test\n[test]\ndir = {}\ndatabase = $dir/index.txt\n\
                         new_certs_dir = $dir\nserial = $dir/serial\ndefault_md = sha256\n\
                         policy = any\n[any]\ncommonName = supplied\n",
                        ca_dir.display()
                    ),
                )
                .unwrap();
                openssl(&[
                    "ca",
                    "-batch",
                    "-notext",
                    "-config",
                    path_str(&config),
                    "-cert",
                    path_str(&self.cert),
                    "-keyfile",
                    path_str(&self.key),
                    "-in",
                    path_str(&request),
                    "-startdate",
                    start,
                    "-enddate",
                    end,
                    "-extfile",
                    path_str(&extensions),
                    "-out",
                    path_str(&cert),
                ]);
            }
        }
        ServerCert { cert, key }
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs (is the openssl package installed?)");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A real https server — Python's `http.server` wrapped in `ssl` with a [`ServerCert`] —
/// that answers every `POST` 200 and keeps its body: the receiving end for the HTTP
/// sinks' `ca_file`. Stopped when dropped.
pub struct HttpsReceiver {
    child: std::process::Child,
    pub port: u16,
    bodies: PathBuf,
}

/// Binds 127.0.0.1:0, prints the port, appends each POST body as one line to a file.
const RECEIVER_SCRIPT: &str = r#"
import http.server, ssl, sys
cert, key, bodies = sys.argv[1:4]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(bodies, "ab") as f:
            f.write(body.replace(b"\n", b" ") + b"\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

impl HttpsReceiver {
    pub fn start(cert: &ServerCert, dir: &Path) -> HttpsReceiver {
        use std::io::BufRead;
        let bodies = dir.join("received.jsonl");
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(RECEIVER_SCRIPT)
            .arg(&cert.cert)
            .arg(&cert.key)
            .arg(&bodies)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the receiver prints its port");
        let port = line.trim().parse().expect("a port number");
        HttpsReceiver {
            child,
            port,
            bodies,
        }
    }

    /// `https://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/hook", self.port)
    }

    /// The bodies received so far, one per request.
    pub fn bodies(&self) -> Vec<String> {
        std::fs::read_to_string(&self.bodies)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_a_ca_and_certificates_it_signs() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path(), "one");
        let good = ca.server_cert("good");
        let expired = ca.expired_server_cert("old");
        let verify = |cert: &Path| {
            Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(&ca.cert)
                .arg(cert)
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(verify(&good.cert));
        assert!(!verify(&expired.cert), "expired is refused");
        let other = TestCa::new(dir.path(), "two");
        let stranger = other.server_cert("stranger");
        assert!(
            !verify(&stranger.cert),
            "another CA's certificate is refused"
        );
    }
}
