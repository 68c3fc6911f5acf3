//! Each forge's proof that a delivery comes from it: an HMAC-SHA256 of the payload keyed
//! with the shared secret (GitHub, Gitea/Forgejo/Gogs, Bitbucket), or the secret itself
//! (GitLab's `X-Gitlab-Token`).
//!
//! Every comparison is constant-time: a comparison that stops at the first differing
//! byte tells a client, by its timing, how many leading bytes of its guess were right,
//! and so lets it find a valid signature (or GitLab's token) byte by byte. SHA-1
//! signatures (`X-Hub-Signature: sha1=`) are never accepted, even where a forge still
//! sends them, so a single weaker scheme cannot undo the stronger one.

use std::borrow::Cow;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{Forge, HookError, MAX_BODY, Secret, Verified};

const GITHUB_SIGNATURE: &str = "X-Hub-Signature-256";
const HUB_SIGNATURE: &str = "X-Hub-Signature";
const GITLAB_TOKEN: &str = "X-Gitlab-Token";
/// Bitbucket Data Center's "Test connection" event.
pub(crate) const BITBUCKET_PING: &str = "diagnostics:ping";
/// Gitea sends `X-Gitea-Signature` and `X-Gogs-Signature`, Forgejo also
/// `X-Forgejo-Signature`, Gogs only `X-Gogs-Signature`: all the same hex HMAC.
const GITEA_SIGNATURES: [&str; 3] = [
    "X-Gitea-Signature",
    "X-Forgejo-Signature",
    "X-Gogs-Signature",
];
const GITEA_EVENTS: [&str; 3] = ["X-Gitea-Event", "X-Forgejo-Event", "X-Gogs-Event"];

/// Checks a delivery to `POST /hooks/<forge>` against `secret`, then reads its envelope:
/// the event name and, for a form-encoded delivery, the JSON in its `payload` field.
///
/// `header` looks a header up by name, case-insensitively, as HTTP header maps do
/// (e.g. `|name| headers.get(name).map(|v| v.as_bytes())` over axum's `HeaderMap`).
/// Headers are read as bytes so a value that is not UTF-8 is a wrong signature (`401`),
/// not a missing one.
///
/// In order: a body over [`MAX_BODY`] is [`HookError::TooLarge`]; then the signature
/// (`401` errors); only then the event header (`400`), so an unauthenticated client
/// learns nothing but `401`.
pub fn verify<'b, 'h>(
    forge: Forge,
    secret: &Secret,
    header: impl Fn(&str) -> Option<&'h [u8]>,
    body: &'b [u8],
) -> Result<Verified<'b>, HookError> {
    if body.len() > MAX_BODY {
        return Err(HookError::TooLarge { size: body.len() });
    }
    // An empty header is no header: Gitea and Gogs send theirs empty when the hook has
    // no secret, and an empty value can prove nothing.
    let present = |name: &str| {
        header(name)
            .map(<[u8]>::trim_ascii)
            .filter(|v| !v.is_empty())
    };
    let form = present("Content-Type").is_some_and(is_form);
    let (json, event_headers): (Cow<'b, [u8]>, &[&'static str]) = match forge {
        Forge::GitHub => {
            let Some(signature) = present(GITHUB_SIGNATURE) else {
                return Err(HookError::MissingSignature {
                    header: GITHUB_SIGNATURE,
                    hint: if present(HUB_SIGNATURE).is_some() {
                        " (X-Hub-Signature, SHA-1, is not accepted)"
                    } else {
                        ""
                    },
                });
            };
            let tag = prefixed_sha256(GITHUB_SIGNATURE, signature)?;
            // GitHub signs the body as sent: for a form delivery, the encoded form.
            check_hmac(GITHUB_SIGNATURE, secret, body, &tag)?;
            let json = if form {
                Cow::Owned(form_payload(body).ok_or(HookError::MissingFormPayload)?)
            } else {
                Cow::Borrowed(body)
            };
            (json, &["X-GitHub-Event"])
        }
        Forge::GitLab => {
            let token = present(GITLAB_TOKEN).ok_or(HookError::MissingSignature {
                header: GITLAB_TOKEN,
                hint: "",
            })?;
            check_token(secret, token)?;
            (Cow::Borrowed(body), &["X-Gitlab-Event"])
        }
        Forge::Gitea => {
            let signatures: Vec<(&'static str, &[u8])> = GITEA_SIGNATURES
                .into_iter()
                .filter_map(|name| present(name).map(|value| (name, value)))
                .collect();
            if signatures.is_empty() {
                return Err(HookError::MissingSignature {
                    header: GITEA_SIGNATURES[0],
                    hint: " (or X-Forgejo-Signature or X-Gogs-Signature)",
                });
            }
            // Gitea, Forgejo and Gogs sign the JSON, not the body: for a form delivery,
            // the decoded `payload` field. Without one there is nothing they could have
            // signed but the body, which then fails like any forgery.
            let payload = if form { form_payload(body) } else { None };
            let signed: &[u8] = payload.as_deref().unwrap_or(body);
            // Every signature header present must hold, not just one: they are copies
            // of one HMAC, so a delivery with a wrong one was not made by the forge.
            for (name, value) in signatures {
                let tag =
                    decode_sha256_hex(value).ok_or(HookError::BadSignature { header: name })?;
                check_hmac(name, secret, signed, &tag)?;
            }
            let json = match payload {
                Some(payload) => Cow::Owned(payload),
                None if form => return Err(HookError::MissingFormPayload),
                None => Cow::Borrowed(body),
            };
            (json, &GITEA_EVENTS)
        }
        Forge::Bitbucket => {
            // Data Center's "Test connection" ping is never signed, even with a secret
            // set. An unsigned ping is let through as a ping (`204`, nothing polled, its
            // body never read): it can make polld do nothing, and refusing it would make
            // a correct setup look broken. Any other unsigned event is refused.
            let Some(signature) = present(HUB_SIGNATURE) else {
                if present("X-Event-Key") == Some(BITBUCKET_PING.as_bytes()) {
                    return Ok(Verified {
                        forge,
                        event: BITBUCKET_PING.to_owned(),
                        json: Cow::Borrowed(b"{}"),
                    });
                }
                return Err(HookError::MissingSignature {
                    header: HUB_SIGNATURE,
                    hint: "",
                });
            };
            let tag = prefixed_sha256(HUB_SIGNATURE, signature)?;
            check_hmac(HUB_SIGNATURE, secret, body, &tag)?;
            (Cow::Borrowed(body), &["X-Event-Key"])
        }
    };
    let event =
        event_headers
            .iter()
            .find_map(|name| present(name))
            .ok_or(HookError::MissingEvent {
                header: event_headers[0],
            })?;
    Ok(Verified {
        forge,
        event: String::from_utf8_lossy(event).into_owned(),
        json,
    })
}

/// `application/x-www-form-urlencoded`, with or without parameters.
fn is_form(content_type: &[u8]) -> bool {
    let media_type = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    media_type.eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
}

/// The decoded `payload` field of a form body, where GitHub, Gitea and Gogs put the
/// JSON when a hook's content type is `application/x-www-form-urlencoded`.
fn form_payload(body: &[u8]) -> Option<Vec<u8>> {
    url::form_urlencoded::parse(body)
        .find(|(name, _)| name == "payload")
        .map(|(_, value)| value.into_owned().into_bytes())
}

/// `sha256=<hex>` (GitHub's `X-Hub-Signature-256`, Bitbucket's `X-Hub-Signature`).
fn prefixed_sha256(header: &'static str, value: &[u8]) -> Result<[u8; 32], HookError> {
    let Some(equals) = value.iter().position(|&b| b == b'=') else {
        return Err(HookError::BadSignature { header });
    };
    let (algorithm, hex) = (&value[..equals], &value[equals + 1..]);
    if !algorithm.eq_ignore_ascii_case(b"sha256") {
        let algorithm = &algorithm[..algorithm.len().min(16)];
        return Err(HookError::UnsupportedAlgorithm {
            header,
            algorithm: String::from_utf8_lossy(algorithm).into_owned(),
        });
    }
    if hex.is_empty() {
        // Gitea sends `X-Hub-Signature-256: sha256=` when its hook has no secret.
        return Err(HookError::MissingSignature { header, hint: "" });
    }
    decode_sha256_hex(hex).ok_or(HookError::BadSignature { header })
}

/// 64 hex digits, either case (every forge sends lowercase, but hex is hex). Not
/// constant-time, and need not be: the signature a client sends is no secret.
fn decode_sha256_hex(hex: &[u8]) -> Option<[u8; 32]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    if hex.len() != 64 {
        return None;
    }
    let mut tag = [0; 32];
    for (byte, pair) in tag.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(tag)
}

/// HMAC-SHA256(secret, signed) == tag, compared in constant time (`verify_slice`).
fn check_hmac(
    header: &'static str,
    secret: &Secret,
    signed: &[u8],
    tag: &[u8; 32],
) -> Result<(), HookError> {
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.bytes()) else {
        // HMAC takes keys of any length; were it ever to refuse one, nothing verifies.
        return Err(HookError::BadSignature { header });
    };
    mac.update(signed);
    mac.verify_slice(tag)
        .map_err(|_| HookError::BadSignature { header })
}

/// GitLab sends the token itself. Both sides are hashed before the constant-time
/// comparison so that it also takes the same time whatever the token's length (a
/// byte-wise `ct_eq` returns at once on a length mismatch, telling the length). GitLab
/// removes line breaks from the token before sending it, so the secret is compared
/// without them too.
fn check_token(secret: &Secret, token: &[u8]) -> Result<(), HookError> {
    let expected: Vec<u8> = secret
        .bytes()
        .iter()
        .copied()
        .filter(|b| !matches!(b, b'\r' | b'\n'))
        .collect();
    let equal = Sha256::digest(token)
        .as_slice()
        .ct_eq(Sha256::digest(&expected).as_slice());
    if bool::from(equal) {
        Ok(())
    } else {
        Err(HookError::BadSignature {
            header: GITLAB_TOKEN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'h>(pairs: &'h [(&str, &str)]) -> impl Fn(&str) -> Option<&'h [u8]> {
        |name| {
            pairs
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_bytes())
        }
    }

    fn secret(text: &str) -> Secret {
        Secret::new(text).expect("non-empty")
    }

    /// GitHub's published test vector (validating-webhook-deliveries.md).
    #[test]
    fn githubs_published_vector_verifies() {
        let pairs = [
            (
                "x-hub-signature-256",
                "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            ),
            ("X-GitHub-Event", "push"),
        ];
        let verified = verify(
            Forge::GitHub,
            &secret("It's a Secret to Everybody"),
            headers(&pairs),
            b"Hello, World!",
        )
        .expect("verified");
        assert_eq!(verified.event(), "push");
        // Upper-case hex is the same signature.
        let upper = [
            (
                "X-Hub-Signature-256",
                "sha256=757107EA0EB2509FC211221CCE984B8A37570B6D7586C22C46F4379C8B043E17",
            ),
            ("X-GitHub-Event", "push"),
        ];
        assert!(
            verify(
                Forge::GitHub,
                &secret("It's a Secret to Everybody"),
                headers(&upper),
                b"Hello, World!"
            )
            .is_ok()
        );
    }

    #[test]
    fn malformed_signatures_are_bad_not_panics() {
        let secret = secret("s");
        for value in [
            "sha256=zz",
            "sha256=757107ea",
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1é",
        ] {
            let pairs = [("X-Hub-Signature-256", value), ("X-GitHub-Event", "push")];
            let error =
                verify(Forge::GitHub, &secret, headers(&pairs), b"{}").expect_err("refused");
            assert!(
                matches!(error, HookError::BadSignature { .. }),
                "{value}: {error:?}"
            );
        }
        let pairs = [
            ("X-Hub-Signature", "sha1=0123"),
            ("X-Event-Key", "repo:push"),
        ];
        let error = verify(Forge::Bitbucket, &secret, headers(&pairs), b"{}").expect_err("sha1");
        assert!(
            matches!(error, HookError::UnsupportedAlgorithm { .. }),
            "{error:?}"
        );
        assert_eq!(error.status(), 401);
    }

    #[test]
    fn an_empty_signature_is_a_missing_one() {
        let secret = secret("s");
        let pairs = [
            ("X-Gitea-Signature", ""),
            ("X-Gogs-Signature", " "),
            ("X-Hub-Signature-256", "sha256="),
            ("X-Gitea-Event", "push"),
        ];
        let error = verify(Forge::Gitea, &secret, headers(&pairs), b"{}").expect_err("empty");
        assert!(
            matches!(error, HookError::MissingSignature { .. }),
            "{error:?}"
        );
        let error = verify(Forge::GitHub, &secret, headers(&pairs), b"{}").expect_err("empty");
        assert!(
            matches!(error, HookError::MissingSignature { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn gitlab_tokens_compare_whole() {
        let secret = secret("tok3n\n");
        for (token, ok) in [
            ("tok3n", true),
            ("tok3", false),
            ("tok3nn", false),
            ("TOK3N", false),
        ] {
            let pairs = [("X-Gitlab-Token", token), ("X-Gitlab-Event", "Push Hook")];
            assert_eq!(
                verify(Forge::GitLab, &secret, headers(&pairs), b"{}").is_ok(),
                ok,
                "{token}"
            );
        }
    }

    #[test]
    fn oversize_bodies_are_refused_before_anything_else() {
        let body = vec![b' '; MAX_BODY + 1];
        let error = verify(Forge::GitLab, &secret("s"), headers(&[]), &body).expect_err("large");
        assert_eq!(error.status(), 413);
    }

    #[test]
    fn a_verified_delivery_needs_an_event_name() {
        let pairs = [("X-Gitlab-Token", "s")];
        let error = verify(Forge::GitLab, &secret("s"), headers(&pairs), b"{}").expect_err("event");
        assert!(matches!(error, HookError::MissingEvent { .. }), "{error:?}");
        assert_eq!(error.status(), 400);
    }

    #[test]
    fn content_types() {
        assert!(is_form(b"application/x-www-form-urlencoded"));
        assert!(is_form(b"Application/X-WWW-Form-Urlencoded; charset=utf-8"));
        assert!(!is_form(b"application/json"));
    }
}
