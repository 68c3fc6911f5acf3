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

/// Removes `repo`'s credentials from `text`, however a tool spelled them: error
/// messages from VCS tools and libraries echo the URL they were given, sometimes
/// re-serialised (libgit2 adds a default port). The URL's `user:password@` goes
/// wherever it appears, and the password alone becomes `***`.
pub fn scrub(text: &str, repo: &str) -> String {
    let stripped = strip_userinfo(repo);
    if stripped == repo {
        return text.to_owned();
    }
    let mut text = text.replace(repo, &stripped);
    if let Some(userinfo) = userinfo(repo) {
        text = text.replace(&format!("{userinfo}@"), "");
        if let Some((_, password)) = userinfo.split_once(':') {
            text = hide(&text, password);
        }
    }
    text
}

/// Replaces every occurrence of `secret` (a password read from the environment) in
/// `text` with `***`.
pub fn hide(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        return text.to_owned();
    }
    text.replace(secret, "***")
}

/// The `user:password` of a `scheme://user:password@host/...` URL.
fn userinfo(repo: &str) -> Option<&str> {
    let rest = &repo[repo.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    authority.rfind('@').map(|at| &authority[..at])
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
    fn scrubs_every_spelling_of_the_credentials() {
        let repo = "https://ada:s3cret@git.example/app.git";
        let message = format!("failed to connect to {repo}: refused");
        assert_eq!(
            scrub(&message, repo),
            "failed to connect to https://git.example/app.git: refused"
        );
        assert_eq!(
            scrub(
                "cannot reach https://ada:s3cret@git.example:443/app.git",
                repo
            ),
            "cannot reach https://git.example:443/app.git"
        );
        assert_eq!(
            scrub("password s3cret rejected", repo),
            "password *** rejected"
        );
        assert_eq!(scrub("plain /srv/x", "/srv/x"), "plain /srv/x");
        assert_eq!(
            hide("password hunter2 rejected", "hunter2"),
            "password *** rejected"
        );
        assert_eq!(hide("fine", ""), "fine");
    }
}
