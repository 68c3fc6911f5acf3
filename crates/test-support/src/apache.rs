//! Apache httpd for the tests: in the foreground, its own process group (killed on
//! drop), a temp `ServerRoot` with the config, pid file, logs and any htpasswd, on a
//! free 127.0.0.1 port; over TLS with a [`ServerCert`] when asked, optionally
//! offering HTTP/2.
//!
//! Run as root, Apache's workers switch to an unprivileged user (`www-data` or the
//! like), so the paths they must read are made world-readable first.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::tls::ServerCert;
use crate::{free_port, run_checked};

/// Where Debian's `apache2` package puts the server and its modules
/// (`libapache2-mod-svn` adds mod_dav_svn there).
pub const APACHE_BIN: &str = "/usr/sbin/apache2";
pub const APACHE_MODULES: &str = "/usr/lib/apache2/modules";

/// What to serve.
pub struct ApacheConfig<'a> {
    /// Modules to load besides the MPM, `authn_core` and `authz_core` (`"dav_svn"`
    /// loads `mod_dav_svn.so`).
    pub modules: &'a [&'a str],
    /// The rest of `httpd.conf`: `<Location>` blocks and the like. `{root}` is
    /// replaced by the server root (where `htpasswd` files go).
    pub body: String,
    /// Serve https with this certificate (and mod_ssl) instead of http.
    pub tls: Option<&'a ServerCert>,
    /// Offer HTTP/2 (mod_http2, which needs the event MPM) next to HTTP/1.1.
    pub h2: bool,
    /// Paths the workers read (repositories): made world-readable when run as root.
    pub readable: &'a [&'a Path],
    /// `(user, password)`: an `htpasswd` file at `{root}/htpasswd`.
    pub htpasswd: Option<(&'a str, &'a str)>,
}

pub struct Apache {
    child: Option<Child>,
    pub port: u16,
    /// ServerRoot: `httpd.conf`, `error.log`, `access.log`, `htpasswd`.
    pub dir: TempDir,
    /// `http` or `https`.
    pub scheme: &'static str,
}

impl Apache {
    pub fn start(config: ApacheConfig<'_>) -> Apache {
        assert!(
            Path::new(APACHE_BIN).exists(),
            "{APACHE_BIN} is missing: install apache2"
        );
        for module in config.modules {
            let file = format!("{APACHE_MODULES}/mod_{module}.so");
            assert!(Path::new(&file).exists(), "{file} is missing");
        }
        let dir = tempfile::Builder::new()
            .prefix("polld-apache")
            .tempdir()
            .unwrap();
        let worker = unprivileged_worker();
        if let Some((user, password)) = config.htpasswd {
            let htpasswd = dir.path().join("htpasswd");
            // The password on stdin, not in `ps`.
            let mut cmd = Command::new("htpasswd");
            cmd.arg("-ic").arg(&htpasswd).arg(user);
            run_checked(cmd, Some(password.as_bytes()));
        }
        if worker.is_some() {
            let mut cmd = Command::new("chmod");
            cmd.args(["-R", "a+rX"])
                .arg(dir.path())
                .args(config.readable);
            run_checked(cmd, None);
        }
        let user_conf = match worker {
            Some((uid, gid)) => format!("User #{uid}\nGroup #{gid}\n"),
            None => String::new(),
        };
        let mpm = if config.h2 {
            "mpm_event"
        } else {
            "mpm_prefork"
        };
        let mpm_conf = if config.h2 {
            "StartServers 1\nThreadsPerChild 16\nMinSpareThreads 1\nMaxSpareThreads 32\n"
        } else {
            "StartServers 2\nMinSpareServers 1\nMaxSpareServers 4\n"
        };
        let mut modules = vec![mpm, "authn_core", "authz_core"];
        modules.extend_from_slice(config.modules);
        if config.tls.is_some() {
            modules.push("ssl");
        }
        if config.h2 {
            modules.push("http2");
        }
        let modules: String = modules
            .iter()
            .map(|name| format!("LoadModule {name}_module {APACHE_MODULES}/mod_{name}.so\n"))
            .collect();
        let tls_conf = match config.tls {
            Some(cert) => format!(
                "SSLEngine on\nSSLCertificateFile \"{}\"\nSSLCertificateKeyFile \"{}\"\n",
                cert.cert.display(),
                cert.key.display()
            ),
            None => String::new(),
        };
        let h2_conf = if config.h2 {
            "Protocols h2 http/1.1\n"
        } else {
            ""
        };
        let server_root = dir.path().display().to_string();
        let body = config.body.replace("{root}", &server_root);
        let error_log = dir.path().join("error.log");
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };

        for _ in 0..5 {
            let port = free_port();
            let conf = dir.path().join("httpd.conf");
            std::fs::write(
                &conf,
                format!(
                    "ServerRoot \"{server_root}\"\n\
                     ServerName 127.0.0.1\n\
                     Listen 127.0.0.1:{port}\n\
                     PidFile \"{server_root}/httpd.pid\"\n\
                     ErrorLog \"{server_root}/error.log\"\n\
                     LogLevel warn\n\
                     CustomLog \"{server_root}/access.log\" \"%m %U %>s %H %{{User-Agent}}i\"\n\
                     DefaultRuntimeDir \"{server_root}\"\n\
                     DocumentRoot \"{server_root}\"\n\
                     Timeout 10\n\
                     {mpm_conf}{user_conf}{modules}{tls_conf}{h2_conf}{body}\n"
                ),
            )
            .unwrap();
            let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
            let mut cmd = Command::new(APACHE_BIN);
            cmd.arg("-f")
                .arg(&conf)
                .arg("-DFOREGROUND")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr);
            {
                use std::os::unix::process::CommandExt;
                // Its own group, so drop kills the workers with it.
                cmd.process_group(0);
            }
            let mut child = cmd.spawn().expect("spawn apache2");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Apache {
                        child: Some(child),
                        port,
                        dir,
                        scheme,
                    };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    let log = std::fs::read_to_string(&error_log).unwrap_or_default()
                        + &std::fs::read_to_string(dir.path().join("stderr.log"))
                            .unwrap_or_default();
                    if log.contains("Address already in use") {
                        break; // port taken in the meantime: try another
                    }
                    panic!("apache2 exited ({status}) before listening on {port}:\n{log}");
                }
                if Instant::now() >= deadline {
                    stop_group(&mut child);
                    panic!(
                        "apache2 did not listen on {port}:\n{}",
                        std::fs::read_to_string(&error_log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start apache2");
    }

    /// `http(s)://127.0.0.1:PORT/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}/{path}", self.scheme, self.port)
    }

    /// What Apache logged (failed logins, module errors), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// The requests served so far, one line each: `METHOD PATH STATUS PROTOCOL
    /// USER-AGENT` (`OPTIONS /svn/repo 200 HTTP/2.0 polld/0.1.0 (svn)`).
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_group(&mut child);
        }
    }
}

/// Stops the process group `child` leads: SIGTERM first, so Apache reaps its own
/// workers (orphans would linger as zombies under some inits), then SIGKILL to the
/// group if it has not exited within 5 s. The parent is reaped either way.
fn stop_group(child: &mut Child) {
    let pgid = child.id() as libc::pid_t;
    // SAFETY: killpg(2) on the group our own child leads (it has not been reaped yet,
    // so the id cannot have been reused).
    unsafe {
        libc::killpg(pgid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: as above; any worker still in the group goes too.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// When running as root: the uid and gid Apache's workers switch to (it refuses to
/// serve as root). `None` otherwise: Apache then runs as the current user.
pub(crate) fn unprivileged_worker() -> Option<(u32, u32)> {
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for name in ["www-data", "apache", "daemon", "nobody"] {
        for line in passwd.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() > 3
                && fields[0] == name
                && let (Ok(uid), Ok(gid)) = (fields[2].parse(), fields[3].parse())
            {
                return Some((uid, gid));
            }
        }
    }
    panic!("running as root, but no unprivileged user for Apache's workers in /etc/passwd");
}

/// Apache with mod_ssl in front of a plain-http server on 127.0.0.1 (`hg serve`):
/// every request to `https://127.0.0.1:PORT/` is passed to `http://127.0.0.1:BACKEND/`.
pub fn https_proxy(backend_port: u16, cert: &ServerCert) -> Apache {
    Apache::start(ApacheConfig {
        modules: &["proxy", "proxy_http"],
        body: format!(
            "ProxyPass \"/\" \"http://127.0.0.1:{backend_port}/\"\n\
             ProxyPassReverse \"/\" \"http://127.0.0.1:{backend_port}/\"\n"
        ),
        tls: Some(cert),
        h2: false,
        readable: &[],
        htpasswd: None,
    })
}
