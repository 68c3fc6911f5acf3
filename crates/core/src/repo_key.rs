//! Matching a repository as a VCS server names it (`POST /notify?repo=...`) against the
//! `repo` keys of the config, however each happens to be spelled.

use std::path::{Component, Path, PathBuf};

/// A canonical form of a repository address: scheme, credentials, a trailing slash and a
/// trailing `.git` are ignored; a local path and its `file://` URL are the same; an
/// scp-like `git@host:path` is `host/path`. Host names compare case-insensitively.
pub fn repo_key(repo: &str, config_dir: &Path) -> String {
    let repo = repo.trim();
    let key = if let Some((scheme, rest)) = repo.split_once("://") {
        if scheme.eq_ignore_ascii_case("file") {
            local_path(rest, config_dir)
        } else {
            let rest = rest.split(['?', '#']).next().unwrap_or(rest);
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let host = authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host);
            format!("{}/{}", host.to_ascii_lowercase(), path)
        }
    } else if let Some((login_host, path)) = scp_like(repo) {
        let host = login_host
            .rsplit_once('@')
            .map_or(login_host, |(_, host)| host);
        format!(
            "{}/{}",
            host.to_ascii_lowercase(),
            path.trim_start_matches('/')
        )
    } else {
        local_path(repo, config_dir)
    };
    let key = key.trim_end_matches('/');
    key.strip_suffix(".git")
        .unwrap_or(key)
        .trim_end_matches('/')
        .to_owned()
}

/// The host a repository is polled from, for capping polls at once per host; `None`
/// for a local path (and `file://`), which no remote can slow down.
pub fn host_of(repo: &str) -> Option<String> {
    let key = repo_key(repo, Path::new("/"));
    if key.starts_with('/') {
        return None;
    }
    key.split('/').next().map(str::to_owned)
}

/// `host:path` with no slash before the colon, as git reads it.
fn scp_like(repo: &str) -> Option<(&str, &str)> {
    let (before, after) = repo.split_once(':')?;
    (!before.contains('/') && !before.is_empty()).then_some((before, after))
}

/// An absolute, lexically normalised path (no filesystem access: the path may be remote
/// to this machine's view, and must not depend on whether it exists).
fn local_path(path: &str, config_dir: &Path) -> String {
    let joined = config_dir.join(path);
    let mut normal = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    let absolute = if normal.is_absolute() {
        normal
    } else {
        std::env::current_dir().unwrap_or_default().join(normal)
    };
    absolute.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_repository_match() {
        let dir = Path::new("/etc/polld");
        let same = |a: &str, b: &str| assert_eq!(repo_key(a, dir), repo_key(b, dir), "{a} vs {b}");
        same("https://git.example/app.git", "http://git.example/app");
        same(
            "https://ada:pw@Git.Example/app/",
            "git://git.example/app.git",
        );
        same("ssh://git@git.example/app.git", "git@git.example:app.git");
        same("/srv/repos/app", "file:///srv/repos/app/");
        same("repos/app", "/etc/polld/repos/app");
        same("../polld/repos/app.git", "file:///etc/polld/repos/app");
        assert_ne!(
            repo_key("https://git.example/app", dir),
            repo_key("https://git.example/lib", dir)
        );
        assert_ne!(
            repo_key("https://a.example/app", dir),
            repo_key("https://b.example/app", dir)
        );
    }

    #[test]
    fn hosts_are_remote_only() {
        assert_eq!(
            host_of("https://ada:pw@Git.Example:8443/app.git").as_deref(),
            Some("git.example:8443")
        );
        assert_eq!(
            host_of("git@git.example:app.git").as_deref(),
            Some("git.example")
        );
        assert_eq!(
            host_of("svn+ssh://svn.example/r").as_deref(),
            Some("svn.example")
        );
        assert_eq!(host_of("/srv/repo"), None);
        assert_eq!(host_of("file:///srv/repo"), None);
        assert_eq!(host_of("repos/app"), None);
    }
}
