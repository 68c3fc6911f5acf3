//! A small HTTP forward proxy on 127.0.0.1 that records what it forwarded: `CONNECT`
//! tunnels (how clients reach https through a proxy) and absolute-form requests
//! (`GET http://host/path`, plain http), as squid and corporate proxies serve them.
//! For proving that `http_proxy`/`https_proxy` are used and `no_proxy` is not.
//!
//! It forwards only to 127.0.0.1 (anything else gets `403`), one request per
//! connection for plain http (it asks the server to close after answering), and
//! stops accepting when dropped.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The running proxy.
pub struct ForwardProxy {
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ForwardProxy {
    pub fn start() -> ForwardProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let log = log.clone();
                    std::thread::spawn(move || {
                        let _ = serve(client, &log);
                    });
                }
            })
        };
        ForwardProxy {
            port,
            log,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`, for `http_proxy`/`https_proxy`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What it forwarded, oldest first: `CONNECT 127.0.0.1:443` or
    /// `GET http://127.0.0.1:80/path`.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for ForwardProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One client connection: its request head, then a tunnel or one forwarded request.
fn serve(client: TcpStream, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let end = line == "\r\n" || line == "\n";
        head.push(line);
        if end {
            break;
        }
    }
    // What the client sent past the head (a request body's start, a TLS hello).
    let early = reader.buffer().to_vec();
    let mut client = client;
    let mut words = head[0].split_whitespace();
    let (method, target) = (
        words.next().unwrap_or("").to_owned(),
        words.next().unwrap_or("").to_owned(),
    );
    let (authority, origin_form) = if method == "CONNECT" {
        (target.clone(), None)
    } else if let Some(rest) = target.strip_prefix("http://") {
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        (authority.to_owned(), Some(path.to_owned()))
    } else {
        client.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")?;
        return Ok(());
    };
    if !authority.starts_with("127.0.0.1:") {
        client.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")?;
        return Ok(());
    }
    log.lock().unwrap().push(format!("{method} {target}"));
    let mut server = match TcpStream::connect(&authority) {
        Ok(server) => server,
        Err(_) => {
            client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")?;
            return Ok(());
        }
    };
    match origin_form {
        None => client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?,
        Some(path) => {
            let mut forwarded = format!("{method} {path} HTTP/1.1\r\n");
            for line in &head[1..head.len() - 1] {
                let name = line
                    .split(':')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                if !matches!(
                    name.as_str(),
                    "connection" | "proxy-connection" | "keep-alive" | "proxy-authorization"
                ) {
                    forwarded.push_str(line);
                }
            }
            forwarded.push_str("Connection: close\r\n\r\n");
            server.write_all(forwarded.as_bytes())?;
        }
    }
    server.write_all(&early)?;
    // Client to server on a thread of its own, server to client here, until each
    // side has said all it will.
    let (mut from_client, mut to_server) = (reader.into_inner(), server.try_clone()?);
    let upstream = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_server);
        let _ = to_server.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut server, &mut client);
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
    let _ = upstream.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read_all(mut stream: TcpStream) -> String {
        let mut out = String::new();
        let _ = stream.read_to_string(&mut out);
        out
    }

    #[test]
    fn forwards_absolute_form_and_tunnels_connect() {
        let origin = TcpListener::bind("127.0.0.1:0").unwrap();
        let origin_port = origin.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in origin.incoming().take(2) {
                let mut stream = stream.unwrap();
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap();
                let asked = String::from_utf8_lossy(&buf[..n]).into_owned();
                let line = asked.lines().next().unwrap_or("").to_owned();
                let body = format!("saw {line}");
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let proxy = ForwardProxy::start();

        let mut plain = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        write!(
            plain,
            "GET http://127.0.0.1:{origin_port}/x?y HTTP/1.1\r\nHost: 127.0.0.1\r\nProxy-Connection: keep-alive\r\n\r\n"
        )
        .unwrap();
        assert!(read_all(plain).ends_with("saw GET /x?y HTTP/1.1"));

        let mut tunnel = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        write!(
            tunnel,
            "CONNECT 127.0.0.1:{origin_port} HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\n\r\nHEAD / HTTP/1.1\r\n\r\n"
        )
        .unwrap();
        let answer = read_all(tunnel);
        assert!(answer.starts_with("HTTP/1.1 200 Connection established\r\n\r\n"));
        assert!(answer.ends_with("saw HEAD / HTTP/1.1"), "{answer}");

        let mut elsewhere = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        write!(elsewhere, "CONNECT example.org:443 HTTP/1.1\r\n\r\n").unwrap();
        assert!(read_all(elsewhere).starts_with("HTTP/1.1 403"));

        assert_eq!(
            proxy.requests(),
            [
                format!("GET http://127.0.0.1:{origin_port}/x?y"),
                format!("CONNECT 127.0.0.1:{origin_port}"),
            ]
        );
    }

    /// git itself (libcurl) through the proxy: https by CONNECT, http in absolute form.
    #[test]
    fn carries_git_over_http_and_https() {
        use crate::httpd::{GitHttpd, Port, Route};
        use crate::{GitRepo, git_command};
        let dir = tempfile::tempdir().unwrap();
        let repo = GitRepo::init(&dir.path().join("repo"));
        let head = repo.commit_message("one");
        let httpd = GitHttpd::shared();
        let proxy = ForwardProxy::start();
        for port in [Port::Http, Port::Https] {
            let url = httpd.url(port, Route::Anonymous, &repo.path);
            let out = git_command(dir.path())
                .env("GIT_SSL_CAINFO", &httpd.ca_file)
                .env("http_proxy", proxy.url())
                .env("https_proxy", proxy.url())
                .env_remove("no_proxy")
                .env_remove("NO_PROXY")
                .args(["ls-remote", &url, "HEAD"])
                .output()
                .unwrap();
            assert!(
                String::from_utf8_lossy(&out.stdout).contains(&head),
                "{url}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let requests = proxy.requests();
        assert!(
            requests
                .iter()
                .any(|r| *r == format!("CONNECT 127.0.0.1:{}", httpd.https_port)),
            "{requests:?}"
        );
        assert!(
            requests.iter().any(|r| r.starts_with("GET http://")),
            "{requests:?}"
        );
    }
}
