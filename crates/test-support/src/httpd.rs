//! Apache httpd running `git http-backend` (CGI) on 127.0.0.1: the smart HTTP server
//! most self-hosted git installations run, over http and https.
//!
//! One server is shared by every test of a binary ([`GitHttpd::shared`]) and serves
//! any repository by its absolute path (`GIT_PROJECT_ROOT=/`), so tests need no
//! set-up of their own beyond [`GitHttpd::url`]. Its routes:
//!
//! | route | what it is |
//! |---|---|
//! | `/git/<path>` | anonymous, protocol v2 when the client asks for it |
//! | `/auth/<path>` | Basic auth: [`USER`] / [`PASSWORD`] |
//! | `/v0/<path>` | the `Git-Protocol` header removed: a server that only speaks v0 |
//! | `/old/<path>` | `301` to `/git/<path>` (a renamed repository, as forges do) |
//! | `/half/<path>` | `info/refs` served, the `POST` answered `302`: git follows redirects of the discovery request only, never of a POST |
//!
//! on three ports: http, https with a certificate of [`GitHttpd::ca_file`]'s CA (which
//! nothing else trusts), and https with an expired certificate of the same CA. HTTP/2
//! is offered on https (ALPN). Every request is in an access log the tests read
//! ([`GitHttpd::requests`]), to see what a poll cost or that a proxy carried it.
//!
//! `git http-backend` ≥ 2.34 passes the `Git-Protocol` header on to upload-pack
//! itself, so no `SetEnvIf` is needed for v2.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::apache::unprivileged_worker;
use crate::group::{ProcessGroup, wait_listening};
use crate::tls::TestCa;
use crate::{free_port, run_checked};

/// The login `/auth/` accepts.
pub const USER: &str = "polld-git";
/// The password `/auth/` accepts.
pub const PASSWORD: &str = "pw-Zt81-httpd";

const APACHE_BIN: &str = "/usr/sbin/apache2";
const APACHE_MODULES: &str = "/usr/lib/apache2/modules";
const HTTP_BACKEND: &str = "/usr/lib/git-core/git-http-backend";

/// Which of the server's ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Http,
    /// TLS with a valid certificate of the test CA.
    Https,
    /// TLS with a certificate of the test CA that expired in 2020.
    Expired,
}

/// Which of the server's routes (see the module's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Anonymous,
    Auth,
    V0,
    Redirected,
    PostRedirected,
}

impl Route {
    fn prefix(self) -> &'static str {
        match self {
            Route::Anonymous => "git",
            Route::Auth => "auth",
            Route::V0 => "v0",
            Route::Redirected => "old",
            Route::PostRedirected => "half",
        }
    }
}

/// One line of the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The server's port it came in on.
    pub port: u16,
    pub method: String,
    /// Path and query, as asked.
    pub target: String,
    pub status: u16,
    /// Bytes of the answer's body.
    pub bytes: u64,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: String,
    /// The `Git-Protocol` header as the backend saw it (`-` for none).
    pub git_protocol: String,
}

/// The running server; stopped when dropped, or when the test binary exits.
pub struct GitHttpd {
    _group: ProcessGroup,
    pub http_port: u16,
    pub https_port: u16,
    pub expired_port: u16,
    /// The CA that signed both certificates: what a poller's `ca_file` names.
    pub ca_file: PathBuf,
    dir: PathBuf,
}

impl GitHttpd {
    /// The server every test of this binary shares, started on first use.
    pub fn shared() -> &'static GitHttpd {
        static SHARED: OnceLock<GitHttpd> = OnceLock::new();
        SHARED.get_or_init(|| GitHttpd::start(&crate::scratch::binary_dir("polld-httpd")))
    }

    /// A server of its own, with its files (config, certificates, logs) in `dir`.
    pub fn start(dir: &Path) -> GitHttpd {
        for path in [APACHE_BIN, HTTP_BACKEND] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: install apache2 and git (scripts/test.sh does)"
            );
        }
        let ca = TestCa::new(&dir.join("tls"), "httpd");
        let good = ca.server_cert("good");
        let expired = ca.expired_server_cert("expired");
        let htpasswd = dir.join("htpasswd");
        let mut cmd = Command::new("htpasswd");
        cmd.arg("-ic").arg(&htpasswd).arg(USER);
        // The password on stdin, not in `ps`.
        run_checked(cmd, Some(PASSWORD.as_bytes()));
        let worker = unprivileged_worker();
        if worker.is_some() {
            // The workers read htpasswd; the certificates are read before they start.
            chmod(&["a+rX"], dir);
        }
        let user_conf = match worker {
            Some((uid, gid)) => format!("User #{uid}\nGroup #{gid}\n"),
            None => String::new(),
        };
        let modules: String = [
            "mpm_event",
            "authn_core",
            "authz_core",
            "authn_file",
            "authz_user",
            "auth_basic",
            "alias",
            "cgid",
            "env",
            "headers",
            "ssl",
            "http2",
        ]
        .iter()
        .map(|name| format!("LoadModule {name}_module {APACHE_MODULES}/mod_{name}.so\n"))
        .collect();
        let d = dir.display();
        let tls_host = |port: u16, cert: &crate::tls::ServerCert| {
            format!(
                "<VirtualHost 127.0.0.1:{port}>\n  SSLEngine on\n  SSLCertificateFile \"{}\"\n  \
                 SSLCertificateKeyFile \"{}\"\n</VirtualHost>\n",
                cert.cert.display(),
                cert.key.display()
            )
        };
        for _ in 0..5 {
            let (http_port, https_port, expired_port) = (free_port(), free_port(), free_port());
            let conf = dir.join("httpd.conf");
            std::fs::write(
                &conf,
                format!(
                    "ServerRoot \"{d}\"\nServerName 127.0.0.1\nPidFile \"{d}/httpd.pid\"\n\
                     DefaultRuntimeDir \"{d}\"\nErrorLog \"{d}/error.log\"\nLogLevel warn\n\
                     Listen 127.0.0.1:{http_port}\nListen 127.0.0.1:{https_port}\n\
                     Listen 127.0.0.1:{expired_port}\n{user_conf}{modules}\
                     ScriptSock \"{d}/cgid.sock\"\n\
                     StartServers 1\nServerLimit 4\nThreadsPerChild 16\nMaxRequestWorkers 64\n\
                     MinSpareThreads 4\nMaxSpareThreads 32\nTimeout 30\n\
                     # Short, so that a daemon's pooled connection goes stale between polls.\n\
                     KeepAlive On\nKeepAliveTimeout 2\nProtocols h2 http/1.1\n\
                     LogFormat \"%{{local}}p\\t%m\\t%U%q\\t%>s\\t%B\\t%H\\t%{{Git-Protocol}}i\" polld\n\
                     CustomLog \"{d}/access.log\" polld\n\
                     SetEnv GIT_PROJECT_ROOT /\nSetEnv GIT_HTTP_EXPORT_ALL 1\n\
                     # The workers' user owns none of the repositories.\n\
                     SetEnv GIT_CONFIG_COUNT 1\nSetEnv GIT_CONFIG_KEY_0 safe.directory\n\
                     SetEnv GIT_CONFIG_VALUE_0 *\n\
                     Redirect 301 /old/ /git/\n\
                     RedirectMatch 302 ^/half/(.*)/git-upload-pack$ /git/$1/git-upload-pack\n\
                     ScriptAliasMatch ^/half/(.*/info/refs)$ {HTTP_BACKEND}/$1\n\
                     ScriptAlias /git/ {HTTP_BACKEND}/\nScriptAlias /v0/ {HTTP_BACKEND}/\n\
                     ScriptAlias /auth/ {HTTP_BACKEND}/\n\
                     <Location /v0/>\n  RequestHeader unset Git-Protocol\n</Location>\n\
                     <Location /auth/>\n  AuthType Basic\n  AuthName \"polld-test-git\"\n  \
                     AuthUserFile \"{d}/htpasswd\"\n  Require valid-user\n</Location>\n\
                     {}{}",
                    tls_host(https_port, &good),
                    tls_host(expired_port, &expired),
                ),
            )
            .unwrap();
            let mut apache = Command::new(APACHE_BIN);
            apache.arg("-f").arg(&conf).arg("-DFOREGROUND");
            let mut group = ProcessGroup::spawn(&apache, &dir.join("stderr.log"));
            let ports = [http_port, https_port, expired_port];
            if wait_listening(&mut group, &ports, "apache2") {
                return GitHttpd {
                    _group: group,
                    http_port,
                    https_port,
                    expired_port,
                    ca_file: ca.cert.clone(),
                    dir: dir.to_path_buf(),
                };
            }
            let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                + &std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            assert!(
                log.contains("Address already in use"),
                "apache2 exited at start:\n{log}"
            );
        }
        panic!("could not start apache2: ports kept being taken");
    }

    /// `scheme://127.0.0.1:PORT/<route>/<absolute path of repo>`. Makes `repo`
    /// readable by Apache's workers first (see [`expose`]).
    pub fn url(&self, port: Port, route: Route, repo: &Path) -> String {
        expose(repo);
        let (scheme, number) = match port {
            Port::Http => ("http", self.http_port),
            Port::Https => ("https", self.https_port),
            Port::Expired => ("https", self.expired_port),
        };
        format!(
            "{scheme}://127.0.0.1:{number}/{}{}",
            route.prefix(),
            repo.display()
        )
    }

    /// The access log's path: one line a request, tab-separated in [`Request`]'s field
    /// order, for a tool that follows it as it grows (`polld-bench` counts listings).
    pub fn access_log(&self) -> PathBuf {
        self.dir.join("access.log")
    }

    /// Every request so far whose target contains `needle` (a repository's path picks
    /// one test's requests out of the shared log), oldest first. Apache writes a line
    /// once it has answered: wait for an expected line rather than read once.
    pub fn requests(&self, needle: &str) -> Vec<Request> {
        let log = std::fs::read_to_string(self.access_log()).unwrap_or_default();
        log.lines()
            .filter_map(parse_request)
            .filter(|request| request.target.contains(needle))
            .collect()
    }

    /// Apache's error log (failed logins, backend errors), for failure messages.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

fn parse_request(line: &str) -> Option<Request> {
    let fields: Vec<&str> = line.split('\t').collect();
    let [port, method, target, status, bytes, protocol, git_protocol] = fields[..] else {
        return None;
    };
    Some(Request {
        port: port.parse().ok()?,
        method: method.to_owned(),
        target: target.to_owned(),
        status: status.parse().ok()?,
        bytes: bytes.parse().unwrap_or(0),
        protocol: protocol.to_owned(),
        git_protocol: git_protocol.to_owned(),
    })
}

/// `url` with `userinfo@` after its scheme: `with_userinfo("https://h/x", "u:p")`.
pub fn with_userinfo(url: &str, userinfo: &str) -> String {
    url.replacen("://", &format!("://{userinfo}@"), 1)
}

/// Makes the repository at `repo` readable by another user (Apache's workers run as
/// `www-data` when the tests run as root, and tempdirs are owner-only): every
/// directory above it traversable, it readable, and git told to create new files
/// readable whatever the umask (`core.sharedRepository`).
fn expose(repo: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut above = repo.parent();
    while let Some(dir) = above {
        if let Ok(meta) = std::fs::metadata(dir) {
            let mode = meta.permissions().mode();
            if mode & 0o011 != 0o011 {
                let _ =
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o011));
            }
        }
        above = dir.parent();
    }
    if repo.join("HEAD").exists() || repo.join(".git").exists() {
        let mut cmd = crate::git_command(repo);
        cmd.args(["config", "core.sharedRepository", "0644"]);
        run_checked(cmd, None);
    }
    chmod(&["-R", "a+rX"], repo);
}

fn chmod(args: &[&str], path: &Path) {
    let mut cmd = Command::new("chmod");
    cmd.args(args).arg(path);
    run_checked(cmd, None);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GitRepo, git_command};

    /// `git ls-remote` (a real git client) against each route and port.
    #[test]
    fn serves_every_route_to_git_itself() {
        let dir = tempfile::tempdir().unwrap();
        let repo = GitRepo::init(&dir.path().join("repo"));
        let head = repo.commit_message("one");
        let httpd = GitHttpd::shared();
        let ls_remote = |url: &str| {
            let mut cmd = git_command(dir.path());
            // The environment may name a CA bundle for git (it wins over -c).
            cmd.env("GIT_SSL_CAINFO", &httpd.ca_file)
                .args(["ls-remote", url, "HEAD"]);
            cmd.output().unwrap()
        };
        for port in [Port::Http, Port::Https] {
            for route in [Route::Anonymous, Route::V0, Route::Redirected] {
                let url = httpd.url(port, route, &repo.path);
                let out = ls_remote(&url);
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(
                    stdout.contains(&head),
                    "{url}: {stdout} {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    httpd.error_log()
                );
            }
            let auth = httpd.url(port, Route::Auth, &repo.path);
            assert!(!ls_remote(&auth).status.success(), "{auth} needs a login");
            let out = ls_remote(&with_userinfo(&auth, &format!("{USER}:{PASSWORD}")));
            assert!(String::from_utf8_lossy(&out.stdout).contains(&head));
        }
        let expired = httpd.url(Port::Expired, Route::Anonymous, &repo.path);
        // (git with GnuTLS says only "verification failed", not why.)
        assert!(
            !ls_remote(&expired).status.success(),
            "{expired} is refused"
        );

        let needle = repo.path.display().to_string();
        let requests = httpd.requests(&needle);
        assert!(
            requests
                .iter()
                .any(|r| r.target.starts_with("/old/") && r.status == 301),
            "{requests:?}"
        );
        assert!(
            requests
                .iter()
                .any(|r| r.target.starts_with("/git/") && r.git_protocol == "version=2"),
            "{requests:?}"
        );
        assert!(
            requests
                .iter()
                .filter(|r| r.target.starts_with("/v0/"))
                .all(|r| r.git_protocol == "-"),
            "{requests:?}"
        );
    }
}
