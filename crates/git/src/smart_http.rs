//! git over http(s): the smart-HTTP protocol, in-process, on pooled connections.
//!
//! A listing is one `POST <repo>/git-upload-pack` carrying a protocol-v2 `ls-refs` with
//! the watched prefixes, on a kept-alive connection (HTTP/2 where the server offers
//! it, so every poller of a host shares one connection): a GitHub repository's
//! thousands of `refs/pull/*` never cross the wire, and a poll that finds nothing costs
//! one small request. Before the first POST, and again every [`REDISCOVER`], the
//! discovery `GET <repo>/info/refs?service=git-upload-pack` learns whether the server
//! speaks v2 and where the repository really is; a server that answers in v0 gets that
//! GET every poll (its advertisement is the listing), and its fetch is a v0 fetch.
//!
//! As git does:
//! - only the discovery GET follows redirects (up to 10; never from https to http), and
//!   the repository's address becomes the redirect's target without the
//!   `info/refs?service=...` tail; a redirect of a POST is an error;
//! - credentials (`username` + `password_env`, or the URL's) are sent as Basic auth,
//!   from the first request, and only to the configured host: never after a redirect
//!   to another host. A 401 fails the poll (no retry loop);
//! - proxies come from `http_proxy`, `https_proxy`, `all_proxy` and `no_proxy`;
//! - TLS certificates are checked against the system's roots plus the poller's
//!   `ca_file`. Dumb HTTP (no smart server) is not supported.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use git2::Oid;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Client, RequestBuilder, Response, StatusCode, Url};
use tokio::io::AsyncRead;
use tokio_util::io::StreamReader;

use crate::pack::PackWriter;
use crate::pkt::{MAX_LISTING, PktReader};
use crate::wire::{self, Capabilities, Greeting, Listed};

/// How long a discovery (v2, and where the repository is) is trusted.
const REDISCOVER: Duration = Duration::from_secs(3600);
const ADVERTISEMENT: &str = "application/x-git-upload-pack-advertisement";
const REQUEST: &str = "application/x-git-upload-pack-request";
const RESULT: &str = "application/x-git-upload-pack-result";
/// How git servers tell git apart from browsers; some serve smart HTTP only to `git/`.
pub(crate) const USER_AGENT: &str = concat!("git/2 (polld/", env!("CARGO_PKG_VERSION"), ")");

/// A login for Basic auth.
pub(crate) struct Login<'a> {
    pub(crate) username: &'a str,
    pub(crate) password: &'a str,
}

/// One http(s) repository, shared by the pollers that list it the same way.
#[derive(Debug)]
pub(crate) struct HttpRemote {
    client: Client,
    /// The repository's URL as configured, without credentials or a trailing slash.
    configured: Url,
    discovered: Mutex<Option<Discovered>>,
}

#[derive(Debug, Clone)]
struct Discovered {
    /// Where the repository is, after the discovery's redirects.
    base: Url,
    capabilities: Capabilities,
    at: Instant,
}

impl HttpRemote {
    /// `url` with its userinfo already removed (see [`split_login`]).
    pub(crate) fn new(client: Client, url: Url) -> HttpRemote {
        HttpRemote {
            client,
            configured: url,
            discovered: Mutex::new(None),
        }
    }

    /// The refs under `prefixes` (and HEAD) in v2; a v0 server's whole advertisement.
    pub(crate) async fn list(
        &self,
        prefixes: &[String],
        login: Option<&Login<'_>>,
    ) -> Result<Listed, String> {
        let (base, capabilities) = match self.fresh_discovery() {
            Some(known) => (known.base, known.capabilities),
            None => match self.discover(login).await? {
                (base, Greeting::V2(capabilities)) => (base, capabilities),
                (_, Greeting::V0(listed)) => return Ok(listed),
            },
        };
        let request = wire::ls_refs_request(&capabilities, prefixes);
        match self
            .post(&base, request, true, login, Some(MAX_LISTING))
            .await
        {
            Ok(mut answer) => wire::read_ls_refs(&mut answer).await,
            Err(error) => {
                // The server may have changed (moved, downgraded): discover again next time.
                self.forget();
                Err(error)
            }
        }
    }

    /// Fetches `wants` (ids as listed) into `pack`, the mirror having `haves`.
    pub(crate) async fn fetch(
        &self,
        wants: &[Oid],
        haves: &[Oid],
        login: Option<&Login<'_>>,
        pack: &mut PackWriter,
    ) -> Result<(), String> {
        let known = match self.fresh_discovery() {
            Some(known) => (known.base, Greeting::V2(known.capabilities)),
            None => self.discover(login).await?,
        };
        let (base, request, v2) = match known {
            (base, Greeting::V2(capabilities)) => (
                base,
                wire::fetch_request_v2(&capabilities, wants, haves),
                true,
            ),
            (base, Greeting::V0(listed)) => (
                base,
                wire::fetch_request_v0(&listed.capabilities, wants, haves)?,
                false,
            ),
        };
        let mut answer = self.post(&base, request, v2, login, None).await?;
        wire::read_pack(&mut answer, pack).await
    }

    fn fresh_discovery(&self) -> Option<Discovered> {
        let known = self
            .discovered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()?;
        (known.at.elapsed() < REDISCOVER).then_some(known)
    }

    fn forget(&self) {
        *self
            .discovered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// `GET info/refs?service=git-upload-pack`, asking for v2: where the repository is,
    /// and the server's greeting. A v2 answer is remembered.
    async fn discover(&self, login: Option<&Login<'_>>) -> Result<(Url, Greeting), String> {
        let url = join(&self.configured, "info/refs?service=git-upload-pack")?;
        let mut request = self
            .client
            .get(url)
            .header("Git-Protocol", "version=2")
            .header("Pragma", "no-cache");
        if let Some(login) = login {
            request = request.basic_auth(login.username, Some(login.password));
        }
        let response = send(request).await?;
        let response = check(response, ADVERTISEMENT, "the ref discovery")?;
        let base = base_after_redirects(&self.configured, response.url())?;
        if base.host_str() != self.configured.host_str() && login.is_some() {
            // The credentials went to the configured host only (reqwest drops them on a
            // redirect elsewhere); later requests go to `base` without them.
            tracing::warn!(
                from = %self.configured,
                to = %base,
                "the repository redirects to another host; polld sends no credentials there"
            );
        }
        let mut reader = body_reader(response, Some(MAX_LISTING));
        let greeting = wire::read_greeting(&mut reader).await?;
        if let Greeting::V2(capabilities) = &greeting {
            if !capabilities.usable()? {
                return Err("the server offers no ls-refs or fetch in protocol v2".into());
            }
            *self
                .discovered
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Discovered {
                base: base.clone(),
                capabilities: capabilities.clone(),
                at: Instant::now(),
            });
        }
        Ok((base, greeting))
    }

    /// `POST git-upload-pack` with `body`; the answer as pkt-lines.
    async fn post(
        &self,
        base: &Url,
        body: Vec<u8>,
        v2: bool,
        login: Option<&Login<'_>>,
        budget: Option<usize>,
    ) -> Result<PktReader<impl AsyncRead + Unpin + use<>>, String> {
        let url = join(base, "git-upload-pack")?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(REQUEST));
        headers.insert("Accept", HeaderValue::from_static(RESULT));
        if v2 {
            headers.insert("Git-Protocol", HeaderValue::from_static("version=2"));
        }
        let mut request = self.client.post(url).headers(headers).body(body);
        if let Some(login) = login
            && base.host_str() == self.configured.host_str()
        {
            request = request.basic_auth(login.username, Some(login.password));
        }
        let response = send(request).await?;
        let response = check(response, RESULT, "git-upload-pack")?;
        Ok(body_reader(response, budget))
    }
}

/// Sends `request`, and once more if the connection failed under it: a pooled
/// keep-alive connection the server closed just as the request went out, or an HTTP/2
/// GOAWAY for the whole connection (Apache sends one under load). Every request polld
/// makes here is read-only, so repeating it is safe; git (through curl) does the same.
async fn send(request: RequestBuilder) -> Result<Response, String> {
    let again = request.try_clone();
    match (request.send().await, again) {
        (Ok(response), _) => Ok(response),
        (Err(error), Some(again)) if !error.is_timeout() && !error.is_connect() => {
            tracing::debug!(
                error = %describe(&error),
                "the connection failed under the request; sending it once more"
            );
            again.send().await.map_err(|e| describe(&e))
        }
        (Err(error), _) => Err(describe(&error)),
    }
}

/// `repo`'s credentials taken out of its URL: the URL to use, and the login it named.
pub(crate) fn split_login(repo: &str) -> Result<(Url, Option<String>, Option<String>), String> {
    let mut url = Url::parse(repo).map_err(|e| format!("not a valid URL: {e}"))?;
    let username = Some(url.username().to_owned()).filter(|u| !u.is_empty());
    let password = url.password().map(str::to_owned);
    let decode = |text: String| {
        percent_encoding::percent_decode_str(&text)
            .decode_utf8_lossy()
            .into_owned()
    };
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let trimmed = url.path().trim_end_matches('/').to_owned();
    url.set_path(&trimmed);
    Ok((url, username.map(decode), password.map(decode)))
}

/// The status and content type a smart-HTTP answer must have.
fn check(response: Response, content_type: &str, what: &str) -> Result<Response, String> {
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED {
        return Err(format!(
            "{what}: authentication failed (HTTP 401): the server rejected the configured \
             credentials (or none are configured: username/password_env)"
        ));
    }
    if status.is_redirection() {
        return Err(format!(
            "{what}: the server redirected (HTTP {status}) a request git does not redirect"
        ));
    }
    if !status.is_success() {
        return Err(format!("{what}: HTTP {status}"));
    }
    let got = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if !got.starts_with(content_type) {
        return Err(format!(
            "{what}: the server answered {got:?}, not {content_type:?}: not a git smart-HTTP \
             server (dumb HTTP is not supported)"
        ));
    }
    Ok(response)
}

fn body_reader(
    response: Response,
    budget: Option<usize>,
) -> PktReader<impl AsyncRead + Unpin + use<>> {
    let stream = response.bytes_stream().map_err(std::io::Error::other);
    PktReader::new(StreamReader::new(stream), budget, "listing")
}

/// `base` + `/` + `tail`.
fn join(base: &Url, tail: &str) -> Result<Url, String> {
    Url::parse(&format!("{}/{tail}", base.as_str().trim_end_matches('/')))
        .map_err(|e| format!("bad URL: {e}"))
}

/// Where the repository is after the discovery's redirects: the final URL without the
/// `/info/refs?service=git-upload-pack` git asked for (git's `update_url_from_redirect`).
fn base_after_redirects(configured: &Url, final_url: &Url) -> Result<Url, String> {
    let mut base = final_url.clone();
    base.set_query(None);
    let Some(path) = base.path().strip_suffix("/info/refs").map(str::to_owned) else {
        return Err(format!(
            "the ref discovery was redirected to {final_url}, which is not a repository's \
             info/refs"
        ));
    };
    base.set_path(&path);
    if configured.scheme() == "https" && base.scheme() != "https" {
        return Err("the repository redirects from https to http; polld refuses".into());
    }
    Ok(base)
}

/// Only the discovery GET follows redirects, as git's `http.followRedirects=initial`.
pub(crate) fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let first = attempt.previous().first();
        let discovery = first.is_some_and(|url| url.path().ends_with("/info/refs"));
        let downgrade =
            first.is_some_and(|url| url.scheme() == "https") && attempt.url().scheme() != "https";
        if discovery && !downgrade && attempt.previous().len() <= 10 {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// An HTTP error with its causes, without the URL (which may carry credentials).
/// rustls names an untrusted certificate only `UnknownIssuer`: the message then says
/// what polld trusts, so that the fix (`ca_file`) is in the error.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), "<repo>");
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if text.contains("UnknownIssuer") {
        text.push_str(
            " (the server's certificate is not signed by a CA polld trusts: the system's \
             roots and the poller's ca_file)",
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_credentials_out_of_the_url() {
        let (url, user, password) = split_login("https://ada:p%40ss@git.example/app.git/").unwrap();
        assert_eq!(url.as_str(), "https://git.example/app.git");
        assert_eq!(user.as_deref(), Some("ada"));
        assert_eq!(password.as_deref(), Some("p@ss"));
        let (url, user, password) = split_login("http://h:8080/r").unwrap();
        assert_eq!(
            (url.as_str(), user, password),
            ("http://h:8080/r", None, None)
        );
    }

    #[test]
    fn a_redirect_moves_the_repository_as_git_does() {
        let configured = Url::parse("https://h/old").unwrap();
        let moved = Url::parse("https://h/new/app.git/info/refs?service=git-upload-pack").unwrap();
        assert_eq!(
            base_after_redirects(&configured, &moved).unwrap().as_str(),
            "https://h/new/app.git"
        );
        let elsewhere = Url::parse("https://h/login?next=x").unwrap();
        assert!(base_after_redirects(&configured, &elsewhere).is_err());
        let downgrade = Url::parse("http://h/new/info/refs?service=git-upload-pack").unwrap();
        assert!(base_after_redirects(&configured, &downgrade).is_err());
        assert_eq!(
            join(&configured, "git-upload-pack").unwrap().as_str(),
            "https://h/old/git-upload-pack"
        );
    }
}
