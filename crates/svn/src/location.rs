//! Where a poller's repository lives, decided once at build time: the URL handed to
//! `svn`, and any credentials the configured `repo` carried.
//!
//! The URL given to `svn` is always a URL (a local path becomes `file://`), never
//! carries a password (svn would show it in `ps`), and is pure ASCII: every other byte
//! is percent-encoded (svn decodes it again), so the URL reaches svn intact whatever
//! locale svn ends up in (in the C locale svn cannot convert a non-ASCII argument;
//! see `command.rs`).

use std::path::{Component, Path, PathBuf};

use percent_encoding::{
    AsciiSet, CONTROLS, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode,
};

/// Bytes that may not appear raw in a URL argument: controls, space and (always, in
/// `utf8_percent_encode`) non-ASCII. Everything else is left as the user wrote it, so an
/// already percent-encoded URL is not encoded twice.
const URL_UNSAFE: &AsciiSet = &CONTROLS.add(b' ');

/// Everything but unreserved characters and `/`, for turning a file path into a URL path.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How svn reaches the repository; decides which credentials can apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// `file://`, also for a configured local path.
    File,
    /// `svn://` (svnserve).
    Svn,
    /// `svn+ssh://`: svnserve tunnelled over ssh, which does its own authentication.
    SvnSsh,
    /// `http://` and `https://` (Apache mod_dav_svn).
    Http,
}

impl Scheme {
    /// Whether svn's `--username` / `--password-from-stdin` mean anything here.
    pub(crate) fn takes_password(self) -> bool {
        matches!(self, Scheme::Svn | Scheme::Http)
    }
}

/// The repository address as handed to svn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Location {
    /// ASCII, without a password, safe as an argument after `--`.
    pub(crate) url: String,
    pub(crate) scheme: Scheme,
    /// `user` of an `svn://user:pw@host` or `http://user:pw@host` repo (percent-decoded):
    /// used when the `username` key is absent.
    pub(crate) url_username: Option<String>,
    /// `pw` of such a repo: used when `password_env` is absent. Never logged.
    pub(crate) url_password: Option<String>,
}

impl Location {
    /// Classifies `repo`; a relative local path is relative to `config_dir`.
    pub(crate) fn parse(repo: &str, config_dir: &Path) -> Result<Location, String> {
        polld_backend::check_repo(repo)?;
        match repo.find("://") {
            Some(scheme_end) => Self::parse_url(repo, &repo[..scheme_end]),
            None => Self::from_path(&config_dir.join(repo)),
        }
    }

    fn from_path(path: &Path) -> Result<Location, String> {
        let path = normalize(path);
        let text = path
            .to_str()
            .ok_or_else(|| format!("local repo path {} is not valid UTF-8", path.display()))?;
        Ok(Location {
            url: format!("file://{}", utf8_percent_encode(text, PATH_SEGMENT)),
            scheme: Scheme::File,
            url_username: None,
            url_password: None,
        })
    }

    fn parse_url(repo: &str, scheme: &str) -> Result<Location, String> {
        let scheme_kind = match scheme.to_ascii_lowercase().as_str() {
            "file" => Scheme::File,
            "svn" => Scheme::Svn,
            "svn+ssh" => Scheme::SvnSsh,
            "http" | "https" => Scheme::Http,
            other if other.starts_with("svn+") => {
                return Err(format!(
                    "repo URL scheme {scheme:?} needs a [tunnels] entry in svn's config, which \
                     polld keeps private; only svn+ssh is supported"
                ));
            }
            _ => {
                return Err(format!(
                    "repo URL scheme {scheme:?} is not supported (file, svn, svn+ssh, http, https)"
                ));
            }
        };
        let after_scheme = scheme.len() + 3;
        let rest = &repo[after_scheme..];
        let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_len];
        let (userinfo, host) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };

        if scheme_kind == Scheme::SvnSsh {
            // CVE-2017-9800: svn hands the host (and login) to ssh, where a leading '-'
            // is an option such as -oProxyCommand=... svn 1.9.7+ refuses it too.
            if host.starts_with('-') || userinfo.is_some_and(|u| u.starts_with('-')) {
                return Err(
                    "svn+ssh repo host or login starts with '-': ssh would read it as an option"
                        .into(),
                );
            }
            if userinfo.is_some_and(|u| u.contains(':')) {
                return Err(
                    "an svn+ssh repo URL cannot carry a password (ssh would see it on its \
                     command line); use an ssh key or agent"
                        .into(),
                );
            }
            // The login stays in the URL: it is ssh's, not a secret.
            return Ok(Location {
                url: encode_url(repo),
                scheme: scheme_kind,
                url_username: None,
                url_password: None,
            });
        }

        let (url_username, url_password) = match userinfo {
            None => (None, None),
            Some(_) if scheme_kind == Scheme::File => {
                return Err("a file:// repo URL cannot carry a user name or password".into());
            }
            Some(userinfo) => {
                let (user, password) = match userinfo.split_once(':') {
                    Some((user, password)) => (user, Some(password)),
                    None => (userinfo, None),
                };
                (
                    Some(decode(user)).filter(|u| !u.is_empty()),
                    password.map(decode).filter(|p| !p.is_empty()),
                )
            }
        };
        let without_userinfo = format!(
            "{}{}{}",
            &repo[..after_scheme],
            host,
            &rest[authority_len..]
        );
        Ok(Location {
            url: encode_url(&without_userinfo),
            scheme: scheme_kind,
            url_username,
            url_password,
        })
    }
}

/// Percent-decodes a URL component (lossily, should it not be UTF-8).
pub(crate) fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

fn encode_url(url: &str) -> String {
    utf8_percent_encode(url, URL_UNSAFE).to_string()
}

/// `path` made absolute and free of `.` and `..`, without touching the disk (svn
/// refuses URLs with `..` segments).
fn normalize(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(repo: &str) -> Result<Location, String> {
        Location::parse(repo, Path::new("/etc/polld"))
    }

    #[test]
    fn local_paths_become_file_urls() {
        let local = parse("repos/app").unwrap();
        assert_eq!(local.scheme, Scheme::File);
        assert_eq!(local.url, "file:///etc/polld/repos/app");
        assert_eq!(
            parse("/srv/a b/dé").unwrap().url,
            "file:///srv/a%20b/d%C3%A9"
        );
        assert_eq!(parse("../srv/./r").unwrap().url, "file:///etc/srv/r");
        assert_eq!(parse("/srv/50%").unwrap().url, "file:///srv/50%25");
    }

    #[test]
    fn urls_lose_their_password_and_non_ascii() {
        let svn = parse("svn://ada:p%40ss@svn.example:3690/repo/trunk").unwrap();
        assert_eq!(svn.scheme, Scheme::Svn);
        assert_eq!(svn.url, "svn://svn.example:3690/repo/trunk");
        assert_eq!(svn.url_username.as_deref(), Some("ada"));
        assert_eq!(svn.url_password.as_deref(), Some("p@ss"));
        let http = parse("https://svn.example/repo/dé x").unwrap();
        assert_eq!(http.scheme, Scheme::Http);
        assert_eq!(http.url, "https://svn.example/repo/d%C3%A9%20x");
        assert_eq!(http.url_username, None);
        assert_eq!(parse("file:///srv/r%20x").unwrap().url, "file:///srv/r%20x");
        let ssh = parse("svn+ssh://deploy@svn.example/repo").unwrap();
        assert_eq!(ssh.url, "svn+ssh://deploy@svn.example/repo");
        assert_eq!(ssh.scheme, Scheme::SvnSsh);
    }

    #[test]
    fn refuses_dangerous_or_unknown_forms() {
        assert!(parse("-r5").unwrap_err().contains("`-`"));
        assert!(
            parse("svn+ssh://-oProxyCommand=touch%20x/repo")
                .unwrap_err()
                .contains("'-'")
        );
        assert!(
            parse("svn+ssh://-oProxyCommand=x@host/repo")
                .unwrap_err()
                .contains("'-'")
        );
        assert!(
            parse("svn+ssh://u:pw@host/repo")
                .unwrap_err()
                .contains("password")
        );
        assert!(
            parse("svn+foo://host/repo")
                .unwrap_err()
                .contains("tunnels")
        );
        assert!(
            parse("git://host/repo")
                .unwrap_err()
                .contains("not supported")
        );
        assert!(parse("file://u@/srv/r").is_err());
        assert!(parse(" ").is_err());
    }
}
