//! Every forge's real payloads (`tests/payloads/`, sources in the research notes and
//! the commit that added them), signed here as that forge signs them, through
//! `verify` and `delivery`, as the `/hooks/*` endpoints will call them.
//!
//! Payload bytes are signed as read, never re-serialised: a forge signs the bytes it
//! sends, and a test that signed a re-serialised copy would pass over a verifier that
//! parses before it verifies.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use polld_core::repo_key::repo_key;
use polld_hooks::{Delivery, Forge, HookError, Secret, verify};
use polld_test_support::forge::{
    Signed, bitbucket, forgejo, gitea, github, gitlab, gogs, hmac_hex, payload,
};

const SECRET: &str = "It's a Secret to Everybody";

/// A delivery taken in as the `/hooks/{forge}` endpoint takes it, without a socket.
trait Deliver {
    fn send(&self, forge: Forge, secret: &str) -> Result<Delivery, HookError>;
}

impl Deliver for Signed {
    fn send(&self, forge: Forge, secret: &str) -> Result<Delivery, HookError> {
        let secret = Secret::new(secret).unwrap();
        verify(forge, &secret, |name| self.lookup(name), &self.body)?.delivery()
    }
}

fn urls(delivery: Result<Delivery, HookError>) -> Vec<String> {
    match delivery {
        Ok(Delivery::Push { urls }) => urls,
        other => panic!("expected a push, got {other:?}"),
    }
}

fn strings(urls: &[&str]) -> Vec<String> {
    urls.iter().map(|url| url.to_string()).collect()
}

/// Every poller spelling must match some URL of the push, as `/notify` matches.
fn reaches(urls: &[String], pollers: &[&str]) {
    let dir = Path::new("/etc/polld");
    for poller in pollers {
        assert!(
            urls.iter()
                .any(|url| repo_key(url, dir) == repo_key(poller, dir)),
            "no URL of {urls:?} reaches a poller on {poller}"
        );
    }
}

fn assert_refused(result: Result<Delivery, HookError>, status: u16, result_label: &str) {
    match result {
        Err(error) => {
            assert_eq!(
                (error.status(), error.result()),
                (status, result_label),
                "{error}"
            );
        }
        Ok(delivery) => panic!("expected {status}, got {delivery:?}"),
    }
}

// ---------------------------------------------------------------------------------
// GitHub

const GITHUB_URLS: [&str; 4] = [
    "https://github.com/Codertocat/Hello-World.git",
    "git@github.com:Codertocat/Hello-World.git",
    "git://github.com/Codertocat/Hello-World.git",
    "https://github.com/Codertocat/Hello-World",
];

#[test]
fn github_pushes_name_every_url_form() {
    for file in [
        "github-push.json",
        "github-push-tag.json",
        "github-push-delete-tag.json",
    ] {
        let urls = urls(github("push", payload(file), SECRET).send(Forge::GitHub, SECRET));
        assert_eq!(urls, strings(&GITHUB_URLS), "{file}");
        reaches(
            &urls,
            &[
                "https://github.com/Codertocat/Hello-World.git",
                "ssh://git@github.com/Codertocat/Hello-World",
                "git@github.com:Codertocat/Hello-World.git",
            ],
        );
    }
}

#[test]
fn github_branch_deletion_is_a_push() {
    let request = github("push", payload("github-push-delete-branch.json"), SECRET);
    let urls = urls(request.send(Forge::GitHub, SECRET));
    reaches(&urls, &["git@github.com:eeshangarg/public-repo.git"]);
    // The `delete` event GitHub sends beside it polls too (coalesced with the push's).
    let request = github("delete", payload("github-push-delete-branch.json"), SECRET);
    assert!(matches!(
        request.send(Forge::GitHub, SECRET),
        Ok(Delivery::Push { .. })
    ));
}

#[test]
fn github_pings_poll_nothing() {
    for file in ["github-ping.json", "github-ping-organization.json"] {
        let delivery = github("ping", payload(file), SECRET).send(Forge::GitHub, SECRET);
        assert_eq!(delivery.ok(), Some(Delivery::Ping), "{file}");
    }
    let delivery =
        github("issues", payload("github-ping.json"), SECRET).send(Forge::GitHub, SECRET);
    assert_eq!(
        delivery.ok(),
        Some(Delivery::Ignored {
            event: "issues".to_owned()
        })
    );
}

#[test]
fn github_refuses_wrong_missing_and_tampered_signatures() {
    let request = || github("push", payload("github-push.json"), SECRET);
    assert_refused(
        request().send(Forge::GitHub, "not the secret"),
        401,
        "bad_signature",
    );
    assert_refused(
        request().tampered().send(Forge::GitHub, SECRET),
        401,
        "bad_signature",
    );
    // The SHA-1 header alone is not enough, whatever its value.
    let sha1_only = request().without("X-Hub-Signature-256");
    match sha1_only.send(Forge::GitHub, SECRET) {
        Err(error @ HookError::MissingSignature { .. }) => {
            assert!(error.to_string().contains("SHA-1"), "{error}");
        }
        other => panic!("expected a missing signature, got {other:?}"),
    }
    let unsigned = sha1_only.without("X-Hub-Signature");
    assert_refused(
        unsigned.send(Forge::GitHub, SECRET),
        401,
        "missing_signature",
    );
    // Signed but not JSON: authentic, unusable.
    let garbage = github("push", b"{\"repository\": ".to_vec(), SECRET);
    assert_refused(garbage.send(Forge::GitHub, SECRET), 400, "malformed");
}

/// GitHub's `application/x-www-form-urlencoded` content type: the signature covers the
/// encoded body, the JSON is its `payload` field.
#[test]
fn github_form_deliveries_sign_the_encoded_body() {
    let json = String::from_utf8(payload("github-push.json")).unwrap();
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &json)
        .finish()
        .into_bytes();
    let request = github("push", form, SECRET)
        .without("Content-Type")
        .header("Content-Type", "application/x-www-form-urlencoded");
    assert_eq!(
        urls(request.send(Forge::GitHub, SECRET)),
        strings(&GITHUB_URLS)
    );
}

// ---------------------------------------------------------------------------------
// GitLab

#[test]
fn gitlab_pushes_tags_and_deletions_name_project_urls() {
    let cases = [
        (
            "Push Hook",
            "gitlab-push.json",
            vec![
                "http://example.com/mike/diaspora.git",
                "git@example.com:mike/diaspora.git",
                "http://example.com/mike/diaspora",
            ],
        ),
        (
            "Tag Push Hook",
            "gitlab-tag-push.json",
            vec![
                "http://example.com/jsmith/example.git",
                "git@example.com:jsmith/example.git",
                "http://example.com/jsmith/example",
            ],
        ),
        (
            "Push Hook",
            "gitlab-push-delete-branch.json",
            vec![
                "https://gitlab.com/TomaszKolek/my-awesome-project.git",
                "git@gitlab.com:TomaszKolek/my-awesome-project.git",
                "https://gitlab.com/TomaszKolek/my-awesome-project",
            ],
        ),
    ];
    for (event, file, expected) in cases {
        let urls = urls(gitlab(event, payload(file), SECRET).send(Forge::GitLab, SECRET));
        assert_eq!(urls, strings(&expected), "{file}");
    }
    let urls =
        urls(gitlab("Push Hook", payload("gitlab-push.json"), SECRET).send(Forge::GitLab, SECRET));
    reaches(
        &urls,
        &[
            "git@example.com:mike/diaspora.git",
            "https://example.com/mike/diaspora",
        ],
    );
}

#[test]
fn gitlab_refuses_wrong_and_missing_tokens() {
    let request = || gitlab("Push Hook", payload("gitlab-push.json"), SECRET);
    assert_refused(
        request().send(Forge::GitLab, "not the secret"),
        401,
        "bad_signature",
    );
    assert_refused(
        request()
            .without("X-Gitlab-Token")
            .send(Forge::GitLab, SECRET),
        401,
        "missing_signature",
    );
    // A token is no signature: a tampered body passes the check (GitLab's scheme) but
    // still only makes polld poll, which is why polld never trusts the payload's commits.
    assert!(request().tampered().send(Forge::GitLab, SECRET).is_ok());
    let note = gitlab("Note Hook", b"{\"object_kind\":\"note\"}".to_vec(), SECRET);
    assert!(matches!(
        note.send(Forge::GitLab, SECRET),
        Ok(Delivery::Ignored { .. })
    ));
}

// ---------------------------------------------------------------------------------
// Gitea, Forgejo, Gogs

#[test]
fn gitea_forgejo_and_gogs_pushes_name_every_url_form() {
    let gitea_push =
        urls(gitea("push", payload("gitea-push.json"), SECRET).send(Forge::Gitea, SECRET));
    assert_eq!(
        gitea_push,
        strings(&[
            "https://try.gitea.io/kostekIV/test.git",
            "git@try.gitea.io:kostekIV/test.git",
            "https://try.gitea.io/kostekIV/test",
        ])
    );
    reaches(&gitea_push, &["git@try.gitea.io:kostekIV/test.git"]);

    let docs =
        urls(forgejo("push", payload("gitea-push-docs.json"), SECRET).send(Forge::Gitea, SECRET));
    assert_eq!(
        docs,
        strings(&[
            "http://localhost:3000/gitea/webhooks.git",
            "ssh://gitea@localhost:2222/gitea/webhooks.git",
            "http://localhost:3000/gitea/webhooks",
        ])
    );
    reaches(
        &docs,
        &[
            "https://localhost:3000/gitea/webhooks",
            "ssh://git@localhost:2222/gitea/webhooks.git",
        ],
    );

    let gogs_push =
        urls(gogs("push", payload("gogs-push.json"), SECRET).send(Forge::Gitea, SECRET));
    assert_eq!(
        gogs_push,
        strings(&[
            "http://localhost:3000/john/try-git.git",
            "john@localhost:john/try-git.git",
            "http://localhost:3000/john/try-git",
        ])
    );
}

/// Gitea reports a deleted branch only as a `delete` event: it must poll.
#[test]
fn gitea_branch_deletion_polls() {
    let request = gitea("delete", payload("gitea-delete-branch.json"), SECRET);
    let urls = urls(request.send(Forge::Gitea, SECRET));
    reaches(&urls, &["https://dummy-gitea.com/TestOrg/test-repo.git"]);
    let issues = gitea("issues", payload("gitea-delete-branch.json"), SECRET);
    assert!(matches!(
        issues.send(Forge::Gitea, SECRET),
        Ok(Delivery::Ignored { .. })
    ));
}

#[test]
fn gitea_refuses_wrong_missing_and_tampered_signatures() {
    let request = || forgejo("push", payload("gitea-push.json"), SECRET);
    assert_refused(
        request().send(Forge::Gitea, "not the secret"),
        401,
        "bad_signature",
    );
    assert_refused(
        request().tampered().send(Forge::Gitea, SECRET),
        401,
        "bad_signature",
    );
    // One wrong copy among right ones: not from the forge.
    let mixed = request()
        .without("X-Forgejo-Signature")
        .header("X-Forgejo-Signature", hmac_hex("other", b"x"));
    assert_refused(mixed.send(Forge::Gitea, SECRET), 401, "bad_signature");
    // A hook without a secret: Gitea still sends the headers, empty.
    let unsigned = gitea("push", payload("gitea-push.json"), SECRET)
        .without("X-Gitea-Signature")
        .without("X-Gogs-Signature")
        .without("X-Hub-Signature-256")
        .header("X-Gitea-Signature", "")
        .header("X-Gogs-Signature", "")
        .header("X-Hub-Signature-256", "sha256=");
    assert_refused(
        unsigned.send(Forge::Gitea, SECRET),
        401,
        "missing_signature",
    );
    // `X-Hub-Signature-256` alone is GitHub's scheme, not this endpoint's.
    let hub_only = request()
        .without("X-Gitea-Signature")
        .without("X-Gogs-Signature")
        .without("X-Forgejo-Signature");
    assert_refused(
        hub_only.send(Forge::Gitea, SECRET),
        401,
        "missing_signature",
    );
}

/// Gitea's and Gogs' form content type: they sign the JSON, not the encoded body.
#[test]
fn gitea_form_deliveries_sign_the_json() {
    let json = payload("gitea-push.json");
    let hex = hmac_hex(SECRET, &json);
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", std::str::from_utf8(&json).unwrap())
        .finish()
        .into_bytes();
    let request = Signed::new(form.clone())
        .header("X-Gitea-Event", "push")
        .header("X-Gitea-Signature", hex)
        .header("Content-Type", "application/x-www-form-urlencoded");
    assert_eq!(urls(request.send(Forge::Gitea, SECRET)).len(), 3);
    // Signed over the encoded body instead: not what Gitea does, refused.
    let request = Signed::new(form.clone())
        .header("X-Gitea-Event", "push")
        .header("X-Gitea-Signature", hmac_hex(SECRET, &form))
        .header("Content-Type", "application/x-www-form-urlencoded");
    assert_refused(request.send(Forge::Gitea, SECRET), 401, "bad_signature");
}

// ---------------------------------------------------------------------------------
// Bitbucket Cloud and Data Center

/// The signed deliveries published with the Jenkins Bitbucket plugin's tests, checked
/// against their published signatures: proof that the copies here are byte-exact and
/// that verification agrees with Bitbucket's own.
#[test]
fn bitbucket_published_signatures_verify() {
    let secret = "Gkvl$k$wyNpQAF42";
    let cloud = Signed::new(payload("bitbucket-cloud-push.json"))
        .header("X-Event-Key", "repo:push")
        .header(
            "X-Hub-Signature",
            "sha256=f205c729821c6954aff2afe72b965c34015b4baf96ea8ddc2cc44999c014a035",
        );
    let urls_cloud = urls(cloud.send(Forge::Bitbucket, secret));
    assert_eq!(
        urls_cloud,
        strings(&["https://bitbucket.org/nfalco79/test-repos"])
    );
    reaches(
        &urls_cloud,
        &[
            "https://bitbucket.org/nfalco79/test-repos.git",
            "git@bitbucket.org:nfalco79/test-repos.git",
        ],
    );

    let server = Signed::new(payload("bitbucket-dc-refs-changed-delete-branch.json"))
        .header("X-Event-Key", "repo:refs_changed")
        .header(
            "X-Hub-Signature",
            "sha256=4ffba9e7b58ea3d7e1a230446e8c92baea0aeec89b73f598932387254f0de13e",
        );
    let urls_server = urls(server.send(Forge::Bitbucket, secret));
    assert_eq!(
        urls_server,
        strings(&[
            "http://localhost:7990/bitbucket/scm/amuniz/test-repos.git",
            "ssh://git@localhost:7999/amuniz/test-repos.git",
        ])
    );
    assert_refused(server.send(Forge::Bitbucket, SECRET), 401, "bad_signature");
}

#[test]
fn bitbucket_pushes_tags_and_deletions_poll() {
    for (event, file) in [
        ("repo:push", "bitbucket-cloud-push-tag.json"),
        ("repo:push", "bitbucket-cloud-push-delete-branch.json"),
    ] {
        let urls = urls(bitbucket(event, payload(file), SECRET).send(Forge::Bitbucket, SECRET));
        assert_eq!(
            urls,
            strings(&["https://bitbucket.org/amuniz/test-repos"]),
            "{file}"
        );
    }
    for file in [
        "bitbucket-dc-refs-changed.json",
        "bitbucket-dc-refs-changed-update.json",
    ] {
        let request = bitbucket("repo:refs_changed", payload(file), SECRET);
        assert_eq!(
            urls(request.send(Forge::Bitbucket, SECRET)).len(),
            2,
            "{file}"
        );
    }
    let update = bitbucket(
        "repo:refs_changed",
        payload("bitbucket-dc-refs-changed-update.json"),
        SECRET,
    );
    reaches(
        &urls(update.send(Forge::Bitbucket, SECRET)),
        &[
            "https://bitbucketserver/scm/myproject/test-repo.git",
            "ssh://git@bitbucketserver:7999/myproject/test-repo.git",
        ],
    );
}

/// Data Center's "Test connection" is a ping when signed, and like any unsigned request
/// a `401` when not (it is never signed by the versions seen so far).
#[test]
fn bitbucket_pings() {
    let signed = bitbucket(
        "diagnostics:ping",
        payload("bitbucket-dc-ping.json"),
        SECRET,
    );
    assert_eq!(
        signed.send(Forge::Bitbucket, SECRET).ok(),
        Some(Delivery::Ping)
    );
    // Data Center's "Test connection" sends its ping unsigned: a ping all the same,
    // since a ping polls nothing. A wrongly signed ping is still a forgery.
    let unsigned =
        Signed::new(payload("bitbucket-dc-ping.json")).header("X-Event-Key", "diagnostics:ping");
    assert_eq!(
        unsigned.send(Forge::Bitbucket, SECRET).ok(),
        Some(Delivery::Ping)
    );
    let forged = bitbucket(
        "diagnostics:ping",
        payload("bitbucket-dc-ping.json"),
        "not the secret",
    );
    assert_refused(forged.send(Forge::Bitbucket, SECRET), 401, "bad_signature");
    let unsigned_push = Signed::new(payload("bitbucket-dc-refs-changed.json"))
        .header("X-Event-Key", "repo:refs_changed");
    assert_refused(
        unsigned_push.send(Forge::Bitbucket, SECRET),
        401,
        "missing_signature",
    );
}

#[test]
fn bitbucket_refuses_wrong_missing_and_tampered_signatures() {
    let request = || {
        bitbucket(
            "repo:push",
            payload("bitbucket-cloud-push-tag.json"),
            SECRET,
        )
    };
    assert_refused(
        request().send(Forge::Bitbucket, "not the secret"),
        401,
        "bad_signature",
    );
    assert_refused(
        request().tampered().send(Forge::Bitbucket, SECRET),
        401,
        "bad_signature",
    );
    assert_refused(
        request()
            .without("X-Hub-Signature")
            .send(Forge::Bitbucket, SECRET),
        401,
        "missing_signature",
    );
    // A GitHub delivery (its signature under the other header) is not a Bitbucket one.
    let github = github("push", payload("github-push.json"), SECRET);
    assert_refused(github.send(Forge::Bitbucket, SECRET), 401, "bad_signature");
}

// ---------------------------------------------------------------------------------

/// The signature is checked before anything in the body or the event header is read,
/// so an unauthenticated client gets `401` whatever it sends.
#[test]
fn nothing_is_parsed_before_the_signature_holds() {
    for forge in Forge::ALL {
        let request = Signed::new(b"not json".to_vec());
        assert_refused(request.send(forge, SECRET), 401, "missing_signature");
    }
}
