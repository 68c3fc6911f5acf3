//! Where a poller's repository lives, decided once at build time.
//!
//! git's own rules for telling a URL, an scp-like address and a local path apart are
//! reproduced here so that `polld check` rejects what git would misread, and so that a
//! relative path means the same thing whatever directory the daemon was started in.

use std::path::Path;

/// How polld reaches the repository; decides which credentials can apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A path on this machine (libgit2's in-process local transport).
    Local,
    File,
    Git,
    Http,
    Ssh,
}

impl Transport {
    pub(crate) fn authenticates(self) -> bool {
        matches!(self, Transport::Http | Transport::Ssh)
    }
}

/// The repository address as handed to libgit2.
#[derive(Debug, Clone)]
pub(crate) struct Location {
    /// What libgit2 connects to: the configured string, or an absolute local path.
    pub(crate) url: String,
    pub(crate) transport: Transport,
    /// The login named in the address (`user@` of a URL or scp-like address), if any.
    pub(crate) url_username: Option<String>,
}

impl Location {
    /// Classifies `repo` and resolves a relative local path against `config_dir`.
    pub(crate) fn parse(repo: &str, config_dir: &Path) -> Result<Location, String> {
        polld_backend::check_repo(repo)?;
        if let Some(transport) = remote_helper_prefix(repo) {
            return Err(format!(
                "repo uses git's `{transport}::<address>` remote-helper syntax, which polld \
                 refuses (it can run arbitrary commands); use a plain URL or path"
            ));
        }
        if let Some(scheme_end) = repo.find("://") {
            return Self::parse_url(repo, &repo[..scheme_end]);
        }
        if let Some(username) = scp_like_username(repo) {
            refuse_option_like_host(repo, &repo[..repo.find(':').unwrap_or(0)])?;
            return Ok(Location {
                url: repo.to_owned(),
                transport: Transport::Ssh,
                url_username: username,
            });
        }
        let path = config_dir.join(repo);
        let url = path
            .to_str()
            .ok_or_else(|| format!("local repo path {} is not valid UTF-8", path.display()))?
            .to_owned();
        Ok(Location {
            url,
            transport: Transport::Local,
            url_username: None,
        })
    }

    fn parse_url(repo: &str, scheme: &str) -> Result<Location, String> {
        let transport = match scheme.to_ascii_lowercase().as_str() {
            "file" => Transport::File,
            "git" => Transport::Git,
            "http" | "https" => Transport::Http,
            "ssh" | "git+ssh" | "ssh+git" => Transport::Ssh,
            _ => {
                return Err(format!(
                    "repo URL scheme {scheme:?} is not supported \
                     (file, git, http, https, ssh)"
                ));
            }
        };
        let rest = &repo[scheme.len() + 3..];
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        if transport == Transport::Ssh {
            refuse_option_like_host(repo, authority)?;
        }
        let url_username = authority.rfind('@').map(|at| {
            let userinfo = &authority[..at];
            userinfo[..userinfo.find(':').unwrap_or(userinfo.len())].to_owned()
        });
        Ok(Location {
            url: repo.to_owned(),
            transport,
            url_username: url_username.filter(|u| !u.is_empty()),
        })
    }
}

/// An ssh host or login starting with `-` would be read by an ssh client as an option
/// (`ssh://-oProxyCommand=...`, the CVE-2017-1000117 class). libgit2's in-process ssh is
/// not fooled, but no such address is ever legitimate: refuse it at load time.
fn refuse_option_like_host(repo: &str, user_at_host: &str) -> Result<(), String> {
    let (user, host) = match user_at_host.rsplit_once('@') {
        Some((user, host)) => (user, host),
        None => ("", user_at_host),
    };
    if user.starts_with('-') || host.starts_with('-') {
        return Err(format!(
            "repo {:?}: an ssh host or login starting with '-' could be taken for an ssh option",
            polld_backend::redact::strip_userinfo(repo)
        ));
    }
    Ok(())
}

/// The `<transport>` of git's `<transport>::<address>` syntax (`ext::sh -c ...`), which
/// makes git run a remote helper: never acceptable from a config file.
fn remote_helper_prefix(repo: &str) -> Option<&str> {
    let (prefix, _) = repo.split_once("::")?;
    let is_helper_name = !prefix.is_empty()
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '_'));
    is_helper_name.then_some(prefix)
}

/// git's rule: a colon before any slash makes `[user@]host:path` an ssh address.
/// Returns `Some(login)` for such an address (`Some(None)` when it names no login).
fn scp_like_username(repo: &str) -> Option<Option<String>> {
    let colon = repo.find(':')?;
    if repo[..colon].contains('/') {
        return None;
    }
    let host_part = &repo[..colon];
    Some(
        host_part
            .rfind('@')
            .map(|at| host_part[..at].to_owned())
            .filter(|u| !u.is_empty()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(repo: &str) -> Result<Location, String> {
        Location::parse(repo, Path::new("/etc/polld"))
    }

    #[test]
    fn refuses_ssh_hosts_and_logins_that_look_like_options() {
        assert!(parse("ssh://-oProxyCommand=x/r").is_err());
        assert!(parse("ssh://-oProxyCommand=x@host/r").is_err());
        assert!(parse("git+ssh://user@-host/r").is_err());
        assert!(parse("-oProxyCommand=x:r").is_err());
        assert!(parse("user@-oProxyCommand=x:r").is_err());
        assert!(parse("ssh://git@host/-r").is_ok());
    }

    #[test]
    fn classifies_addresses() {
        let local = parse("repos/app.git").unwrap();
        assert_eq!(local.transport, Transport::Local);
        assert_eq!(local.url, "/etc/polld/repos/app.git");
        assert_eq!(parse("/srv/app").unwrap().url, "/srv/app");
        assert_eq!(parse("./a:b").unwrap().transport, Transport::Local);

        let scp = parse("deploy@git.example:team/app.git").unwrap();
        assert_eq!(scp.transport, Transport::Ssh);
        assert_eq!(scp.url_username.as_deref(), Some("deploy"));
        assert_eq!(parse("host:app").unwrap().url_username, None);

        let https = parse("https://ada:pw@git.example/app.git").unwrap();
        assert_eq!(https.transport, Transport::Http);
        assert_eq!(https.url_username.as_deref(), Some("ada"));
        assert_eq!(parse("ssh://git@h:22/x").unwrap().transport, Transport::Ssh);
        assert_eq!(parse("file:///srv/x").unwrap().transport, Transport::File);
        assert_eq!(parse("git://h/x").unwrap().transport, Transport::Git);
        assert_eq!(parse("ssh://[::1]/x").unwrap().transport, Transport::Ssh);
    }

    #[test]
    fn refuses_dangerous_or_unknown_forms() {
        assert!(parse("-oProxyCommand=x").unwrap_err().contains("`-`"));
        assert!(parse("ext::sh -c x").unwrap_err().contains("ext::"));
        assert!(parse("fd::17").is_err());
        assert!(parse("ftp://h/x").unwrap_err().contains("not supported"));
        assert!(parse("").is_err());
    }
}
