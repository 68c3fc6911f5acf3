//! Which events are pushes, and the repository URLs a push names.
//!
//! The structs below hold only URL fields, each optional, and ignore everything else.
//! Real payloads differ between forge versions in fields polld does not need (GitHub
//! sends `created_at` as a number in pushes and a string elsewhere; GitLab's
//! timestamps have several formats): typed parsers that read those broke on real
//! deliveries (Argo CD #16453, #20444, #12239). Commit ids are not read at all: the
//! poll that follows finds the commits, so a forged or stale id cannot reach a build.

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::{Delivery, Forge, HookError};

pub(crate) fn delivery(forge: Forge, event: &str, json: &[u8]) -> Result<Delivery, HookError> {
    let kind = match forge {
        Forge::GitHub => github_kind(event),
        Forge::GitLab => gitlab_kind(event, json)?,
        Forge::Gitea => gitea_kind(event),
        Forge::Bitbucket => bitbucket_kind(event),
    };
    match kind {
        Kind::Push => {
            let urls = dedup(match forge {
                Forge::GitHub | Forge::Gitea => parse::<GitHubLike>(json)?.urls(),
                Forge::GitLab => parse::<GitLab>(json)?.urls(),
                Forge::Bitbucket => parse::<Bitbucket>(json)?.urls(),
            });
            if urls.is_empty() {
                return Err(HookError::NoRepository {
                    event: event.to_owned(),
                });
            }
            Ok(Delivery::Push { urls })
        }
        // Not a push, but still JSON from the forge: a body that is not is refused
        // (`400`) whatever the event, as the contract says of malformed JSON.
        Kind::Ping => parse::<IgnoredAny>(json).map(|_| Delivery::Ping),
        Kind::Other => parse::<IgnoredAny>(json).map(|_| Delivery::Ignored {
            event: event.to_owned(),
        }),
    }
}

enum Kind {
    Push,
    Ping,
    Other,
}

/// `push` covers branches, tags and deletions (`deleted: true`). GitHub's `create` and
/// `delete` events come with a push for the same ref; they poll too, since a poll more is
/// harmless and coalesced with the push's, and GitHub sends no `create` event when more
/// than three tags are pushed at once (so polling on it alone would not do, but on both
/// never misses).
fn github_kind(event: &str) -> Kind {
    match event {
        "push" | "create" | "delete" => Kind::Push,
        "ping" => Kind::Ping,
        _ => Kind::Other,
    }
}

/// `Push Hook` and `Tag Push Hook` (which also covers deleted tags; a deleted branch is a
/// `Push Hook` with `after` all zeros). A system hook says which event it carries only in
/// its body (`event_name`), with the same `project` as a project hook. GitLab has no
/// ping: its "Test" button sends a push.
fn gitlab_kind(event: &str, json: &[u8]) -> Result<Kind, HookError> {
    Ok(match event {
        "Push Hook" | "Tag Push Hook" => Kind::Push,
        "System Hook" => {
            #[derive(Deserialize)]
            struct SystemHook {
                #[serde(default)]
                event_name: Option<String>,
            }
            match parse::<SystemHook>(json)?.event_name.as_deref() {
                Some("push" | "tag_push") => Kind::Push,
                _ => Kind::Other,
            }
        }
        _ => Kind::Other,
    })
}

/// Gitea, Forgejo and Gogs report a deleted branch or tag only as a `delete` event (no
/// push), so `delete` must poll; `create` polls too, for the same reason as GitHub's.
/// They have no ping: their "Test delivery" sends a push.
fn gitea_kind(event: &str) -> Kind {
    match event {
        "push" | "create" | "delete" => Kind::Push,
        _ => Kind::Other,
    }
}

/// Bitbucket Cloud's `repo:push` and Data Center's `repo:refs_changed` cover branches,
/// tags and deletions. Data Center's "Test connection" sends `diagnostics:ping`.
fn bitbucket_kind(event: &str) -> Kind {
    match event {
        "repo:push" | "repo:refs_changed" => Kind::Push,
        crate::verify::BITBUCKET_PING => Kind::Ping,
        _ => Kind::Other,
    }
}

fn parse<'a, T: Deserialize<'a>>(json: &'a [u8]) -> Result<T, HookError> {
    serde_json::from_slice(json).map_err(HookError::Malformed)
}

/// In order, without empty strings or exact repeats (GitLab's `project` and legacy
/// `repository` usually agree).
fn dedup(urls: impl IntoIterator<Item = Option<String>>) -> Vec<String> {
    let mut unique: Vec<String> = Vec::new();
    for url in urls.into_iter().flatten() {
        let url = url.trim();
        if !url.is_empty() && !unique.iter().any(|seen| seen == url) {
            unique.push(url.to_owned());
        }
    }
    unique
}

/// GitHub, and Gitea/Forgejo/Gogs (which copied GitHub's repository object).
#[derive(Deserialize)]
struct GitHubLike {
    #[serde(default)]
    repository: Option<GitHubRepository>,
}

#[derive(Deserialize)]
struct GitHubRepository {
    /// `https://host/owner/repo.git`.
    #[serde(default)]
    clone_url: Option<String>,
    /// scp form `git@host:owner/repo.git`, or `ssh://user@host:port/owner/repo.git`.
    #[serde(default)]
    ssh_url: Option<String>,
    /// GitHub only: `git://github.com/owner/repo.git`.
    #[serde(default)]
    git_url: Option<String>,
    /// The web page, `https://host/owner/repo`.
    #[serde(default)]
    html_url: Option<String>,
}

impl GitHubLike {
    fn urls(self) -> Vec<Option<String>> {
        let Some(repository) = self.repository else {
            return Vec::new();
        };
        vec![
            repository.clone_url,
            repository.ssh_url,
            repository.git_url,
            repository.html_url,
        ]
    }
}

#[derive(Deserialize)]
struct GitLab {
    #[serde(default)]
    project: Option<GitLabProject>,
    /// Deprecated since GitLab 8.5 in favour of `project`, still sent: read too, for
    /// older servers that send only this one.
    #[serde(default)]
    repository: Option<GitLabRepository>,
}

#[derive(Deserialize)]
struct GitLabProject {
    #[serde(default)]
    git_http_url: Option<String>,
    #[serde(default)]
    git_ssh_url: Option<String>,
    #[serde(default)]
    web_url: Option<String>,
}

#[derive(Deserialize)]
struct GitLabRepository {
    #[serde(default)]
    git_http_url: Option<String>,
    #[serde(default)]
    git_ssh_url: Option<String>,
    /// The web page.
    #[serde(default)]
    homepage: Option<String>,
}

impl GitLab {
    fn urls(self) -> Vec<Option<String>> {
        let mut urls = Vec::new();
        if let Some(project) = self.project {
            urls.extend([project.git_http_url, project.git_ssh_url, project.web_url]);
        }
        if let Some(repository) = self.repository {
            urls.extend([
                repository.git_http_url,
                repository.git_ssh_url,
                repository.homepage,
            ]);
        }
        urls
    }
}

/// Bitbucket Cloud (`links.html` is an object, no clone links in its webhooks) and Data
/// Center (`links.clone` is a list of `{name: http|ssh, href}`). `links.self` is not
/// read: an API URL in Cloud, a `/browse` page in Data Center, neither a repository.
#[derive(Deserialize)]
struct Bitbucket {
    #[serde(default)]
    repository: Option<BitbucketRepository>,
}

#[derive(Deserialize)]
struct BitbucketRepository {
    #[serde(default)]
    links: Option<BitbucketLinks>,
}

#[derive(Deserialize)]
struct BitbucketLinks {
    #[serde(default)]
    html: Option<Link>,
    #[serde(default)]
    clone: Option<Vec<Link>>,
}

#[derive(Deserialize)]
struct Link {
    #[serde(default)]
    href: Option<String>,
}

impl Bitbucket {
    fn urls(self) -> Vec<Option<String>> {
        let Some(links) = self.repository.and_then(|repository| repository.links) else {
            return Vec::new();
        };
        let mut urls: Vec<Option<String>> = links
            .clone
            .unwrap_or_default()
            .into_iter()
            .map(|link| link.href)
            .collect();
        urls.push(links.html.and_then(|link| link.href));
        urls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_bodies_are_errors_for_every_event() {
        for (forge, event) in [
            (Forge::GitHub, "push"),
            (Forge::GitHub, "ping"),
            (Forge::GitLab, "System Hook"),
            (Forge::Gitea, "issues"),
            (Forge::Bitbucket, "repo:refs_changed"),
        ] {
            for body in [&b"{"[..], b"", b"payload=%7B%7D"] {
                let error = delivery(forge, event, body).expect_err("malformed");
                assert_eq!(error.status(), 400, "{forge} {event}");
            }
        }
        // A URL field of the wrong type is malformed too, not silently skipped.
        let error = delivery(Forge::GitHub, "push", br#"{"repository":{"clone_url":7}}"#)
            .expect_err("wrong type");
        assert!(matches!(error, HookError::Malformed(_)), "{error:?}");
    }

    #[test]
    fn a_push_without_urls_is_refused() {
        for body in [&b"{}"[..], br#"{"repository":{"clone_url":""}}"#] {
            let error = delivery(Forge::GitHub, "push", body).expect_err("no repository");
            assert!(matches!(error, HookError::NoRepository { .. }), "{error:?}");
        }
    }

    #[test]
    fn gitlab_system_hooks_are_pushes_by_their_body() {
        let body = br#"{"event_name":"tag_push","project":{"web_url":"https://gl.example/a/b"}}"#;
        assert_eq!(
            delivery(Forge::GitLab, "System Hook", body).ok(),
            Some(Delivery::Push {
                urls: vec!["https://gl.example/a/b".to_owned()]
            })
        );
        let body = br#"{"event_name":"user_create"}"#;
        assert!(matches!(
            delivery(Forge::GitLab, "System Hook", body),
            Ok(Delivery::Ignored { .. })
        ));
    }
}
