//! A TCP server that holds connections: a git remote that hangs, or a proxy that
//! delays polls until the test lets them through, to hold a poll in flight.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A TCP server on 127.0.0.1 that accepts connections and counts them. It holds each
/// one: until [`Tcp::release`], it reads nothing and answers nothing (a git remote that
/// hangs); after it, connections (held ones included) are piped to `upstream`, when
/// there is one. Stopped on drop.
pub struct Tcp {
    pub port: u16,
    connections: Arc<AtomicUsize>,
    release: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Tcp {
    /// A remote that never answers.
    pub fn silent() -> Tcp {
        Tcp::start(None)
    }

    /// A proxy to `127.0.0.1:upstream` that holds every connection until released.
    pub fn holding_proxy(upstream: u16) -> Tcp {
        Tcp::start(Some(upstream))
    }

    fn start(upstream: Option<u16>) -> Tcp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (connections, release, stop) = (connections.clone(), release.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            connections.fetch_add(1, Ordering::SeqCst);
                            let (release, stop) = (release.clone(), stop.clone());
                            std::thread::spawn(move || hold(client, upstream, &release, &stop));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Tcp {
            port,
            connections,
            release,
            stop,
            thread: Some(thread),
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn release(&self) {
        self.release.store(true, Ordering::SeqCst);
    }

    /// Holds new connections again (until the next [`Tcp::release`]); those already
    /// piped stay piped.
    pub fn hold(&self) {
        self.release.store(false, Ordering::SeqCst);
    }
}

impl Drop for Tcp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Holds `client` until released (or stopped, or two minutes), then pipes it to
/// `upstream` both ways; without an upstream, just keeps it open until stopped.
fn hold(client: TcpStream, upstream: Option<u16>, release: &AtomicBool, stop: &AtomicBool) {
    let _ = client.set_nonblocking(false);
    let deadline = Instant::now() + Duration::from_secs(120);
    while upstream.is_none() || !release.load(Ordering::SeqCst) {
        if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some(Ok(server)) = upstream.map(|port| TcpStream::connect(("127.0.0.1", port))) else {
        return;
    };
    let (Ok(mut client_in), Ok(mut server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut server_out);
        let _ = server_out.shutdown(Shutdown::Write);
    });
    let (mut server_in, mut client_out) = (server, client);
    let _ = std::io::copy(&mut server_in, &mut client_out);
    let _ = client_out.shutdown(Shutdown::Write);
    let _ = up.join();
}
