//! Keeping credentials out of everything polld writes.
//!
//! A `repo` URL may carry `user:password@`. The contract promises that this userinfo
//! never reaches a log line, an error, a change record, status output or the store.

/// The `repo` string as it may be shown: any `userinfo@` in a `scheme://` URL removed.
///
/// Over ssh a bare user name (`ssh://git@host/x`) is a login, not a secret, and stays,
/// as do scp-like git addresses (`git@host:path`) and local paths. Over http(s) even a
/// bare user name goes: hosting services put access tokens there.
pub fn strip_userinfo(repo: &str) -> String {
    let Some(scheme_end) = repo.find("://") else {
        return repo.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &repo[authority_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return repo.to_owned();
    };
    let over_ssh = repo[..scheme_end].to_ascii_lowercase().contains("ssh");
    if over_ssh && !rest[..at].contains(':') {
        return repo.to_owned();
    }
    format!("{}{}", &repo[..authority_start], &rest[at + 1..])
}

/// Whether `repo` carries credentials that [`strip_userinfo`] would remove.
pub fn has_userinfo(repo: &str) -> bool {
    strip_userinfo(repo) != repo
}

/// Removes `repo`'s userinfo wherever it appears in `text`: error messages from VCS
/// tools and libraries echo the URL they were given.
pub fn scrub(text: &str, repo: &str) -> String {
    let stripped = strip_userinfo(repo);
    if stripped == repo {
        return text.to_owned();
    }
    text.replace(repo, &stripped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_only_url_userinfo() {
        assert_eq!(
            strip_userinfo("https://ada:s3cret@git.example/app.git"),
            "https://git.example/app.git"
        );
        assert_eq!(strip_userinfo("https://tok@host/a@b"), "https://host/a@b");
        assert_eq!(
            strip_userinfo("git@github.com:a/b.git"),
            "git@github.com:a/b.git"
        );
        assert_eq!(strip_userinfo("/srv/repo"), "/srv/repo");
        assert!(has_userinfo("svn://u:p@host/repo"));
    }

    #[test]
    fn scrubs_echoed_urls() {
        let repo = "https://ada:s3cret@git.example/app.git";
        let message = format!("failed to connect to {repo}: refused");
        assert_eq!(
            scrub(&message, repo),
            "failed to connect to https://git.example/app.git: refused"
        );
    }
}
