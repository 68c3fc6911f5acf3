//! Where a poller's repository lives, decided once at build time.
//!
//! hg is always handed an absolute path or a URL without credentials, after `--`, so
//! that nothing from the config can be read as an option, as a `[paths]` alias or as
//! credentials on a command line.

use std::path::{Path, PathBuf};

use url::Url;

/// How polld reaches the repository: decides how heads are listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A local path or a `file://` URL: listed by `hg polld-heads`.
    Local,
    /// `http://` or `https://`: listed by two GETs of the wire protocol.
    Http(Url),
    /// `ssh://`: listed by `hg polld-heads` (hg runs `ssh -o BatchMode=yes`).
    Ssh,
}

#[derive(Debug, Clone)]
pub(crate) struct Location {
    /// What hg is given: an absolute path, or the URL with any userinfo removed.
    pub(crate) source: String,
    pub(crate) transport: Transport,
    /// `user` and `password` of an http(s) URL's userinfo (percent-decoded): handed
    /// to hg through the private rc and to the head check as basic auth, never in a URL.
    pub(crate) url_username: Option<String>,
    pub(crate) url_password: Option<String>,
}

impl Location {
    /// Classifies `repo` and resolves a relative local path against `config_dir`.
    pub(crate) fn parse(repo: &str, config_dir: &Path) -> Result<Location, String> {
        polld_backend::check_repo(repo)?;
        if repo.contains('#') {
            return Err(
                "repo contains '#': hg would read what follows as a branch; \
                 use the branches key instead"
                    .into(),
            );
        }
        let Some(scheme_end) = repo.find("://") else {
            return Ok(Location::local(config_dir.join(repo)));
        };
        match repo[..scheme_end].to_ascii_lowercase().as_str() {
            "file" => Ok(Location {
                source: repo.to_owned(),
                ..Location::local(PathBuf::new())
            }),
            "http" | "https" => Location::http(repo),
            "ssh" => Location::ssh(repo),
            scheme => Err(format!(
                "repo URL scheme {scheme:?} is not supported (file, http, https, ssh, \
                 or a local path)"
            )),
        }
    }

    fn local(path: PathBuf) -> Location {
        Location {
            source: path.to_string_lossy().into_owned(),
            transport: Transport::Local,
            url_username: None,
            url_password: None,
        }
    }

    fn http(repo: &str) -> Result<Location, String> {
        let mut url = Url::parse(repo).map_err(|e| format!("repo is not a valid URL: {e}"))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err("repo URL has no host".into());
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| "the repo URL's userinfo is not valid UTF-8".to_owned())
        };
        let username = Some(decode(url.username())?).filter(|u| !u.is_empty());
        let password = url.password().map(decode).transpose()?;
        // Cannot fail for http(s) URLs with a host.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Ok(Location {
            source: url.to_string(),
            transport: Transport::Http(url),
            url_username: username,
            url_password: password,
        })
    }

    /// `ssh://[user@]host[:port]/path`. A host or user starting with `-` would reach
    /// ssh as an option (CVE-2017-1000116); hg refuses it too, but `polld check`
    /// should say so first.
    fn ssh(repo: &str) -> Result<Location, String> {
        let rest = &repo["ssh://".len()..];
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        let (user, host) = match authority.rsplit_once('@') {
            Some((user, host)) => (Some(user), host),
            None => (None, authority),
        };
        if host.is_empty() {
            return Err("repo ssh URL has no host".into());
        }
        if host.starts_with('-') || user.is_some_and(|u| u.starts_with('-')) {
            return Err(format!(
                "repo {repo:?}: an ssh host or user starting with '-' could be taken for \
                 an ssh option"
            ));
        }
        if authority.chars().any(char::is_whitespace) {
            return Err("repo ssh URL has whitespace in its host part".into());
        }
        if user.is_some_and(|u| u.contains(':')) {
            return Err(
                "repo ssh URL carries a password; use an ssh key (ssh-agent or ~/.ssh)".into(),
            );
        }
        Ok(Location {
            source: repo.to_owned(),
            transport: Transport::Ssh,
            url_username: None,
            url_password: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(repo: &str) -> Result<Location, String> {
        Location::parse(repo, Path::new("/etc/polld"))
    }

    #[test]
    fn classifies_addresses() {
        let local = parse("repos/app").unwrap();
        assert_eq!(local.transport, Transport::Local);
        assert_eq!(local.source, "/etc/polld/repos/app");
        assert_eq!(parse("/srv/app").unwrap().source, "/srv/app");
        let file = parse("file:///srv/app").unwrap();
        assert_eq!(
            (file.transport, file.source.as_str()),
            (Transport::Local, "file:///srv/app")
        );
        let ssh = parse("ssh://hg@hg.example:2222/app").unwrap();
        assert_eq!(ssh.transport, Transport::Ssh);
        assert_eq!(ssh.source, "ssh://hg@hg.example:2222/app");

        let http = parse("https://ada:p%40ss@hg.example/app").unwrap();
        assert!(matches!(http.transport, Transport::Http(_)));
        assert_eq!(http.source, "https://hg.example/app");
        assert_eq!(http.url_username.as_deref(), Some("ada"));
        assert_eq!(http.url_password.as_deref(), Some("p@ss"));
        assert_eq!(parse("http://h:8000/").unwrap().url_username, None);
    }

    #[test]
    fn refuses_dangerous_or_unknown_forms() {
        assert!(parse("-R/tmp").unwrap_err().contains("`-`"));
        assert!(
            parse("ssh://-oProxyCommand=touch%20x/r")
                .unwrap_err()
                .contains("'-'")
        );
        assert!(
            parse("ssh://-oProxyCommand=x@h/r")
                .unwrap_err()
                .contains("'-'")
        );
        assert!(
            parse("ssh://u@-oProxyCommand=x/r")
                .unwrap_err()
                .contains("'-'")
        );
        assert!(parse("ssh://u:pw@h/r").unwrap_err().contains("password"));
        assert!(parse("ssh:///r").is_err());
        assert!(
            parse("static-http://h/r")
                .unwrap_err()
                .contains("not supported")
        );
        assert!(parse("bundle:///x").unwrap_err().contains("not supported"));
        assert!(parse("http://h/r#stable").unwrap_err().contains("'#'"));
        assert!(parse("  ").is_err());
        assert!(parse("a\nb").is_err());
    }
}
