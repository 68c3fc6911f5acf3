//! The cheap check over http(s) (Apache with mod_dav_svn): two requests svn itself
//! makes, on a pooled connection, instead of an `svn info` process.
//!
//! 1. `OPTIONS <url>` with the body svn sends (libsvn_ra_serf/options.c): only with
//!    that body does mod_dav_svn add `SVN-Youngest-Rev`, the repository's youngest
//!    revision, to its answer, along with the repository's UUID and root. When the
//!    youngest is the one this poller saw last, the answer is known: one request.
//! 2. Otherwise `PROPFIND Depth: 0` of the URL as it is in that revision
//!    (`<rev-root-stub>/<youngest>/<path>`, as svn's `stat` does) for `version-name`:
//!    the revision the URL last changed in, svn's "Last Changed Rev".
//!
//! Credentials go out with the first request (HTTP Basic, as svn sends them after a
//! 401), so a wrong password is refused once, not retried. Anything else unexpected
//! (another authentication scheme, a redirect, a missing header, odd XML) is left to
//! `svn info`: see `check.rs`.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{CONTENT_TYPE, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};

use crate::check::{Problem, Seen};
use crate::command::Login;
use crate::error::SvnError;
use crate::http_client;
use crate::info::Info;
use crate::location::decode;
use crate::xml::{Item, XmlReader, name_of};

/// What svn sends with its first OPTIONS (`create_options_body`).
const OPTIONS_BODY: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
<D:options xmlns:D=\"DAV:\"><D:activity-collection-set/></D:options>";

/// The one property asked for: `DAV:version-name`, the node's created revision.
const PROPFIND_BODY: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
<propfind xmlns=\"DAV:\"><prop><version-name/></prop></propfind>";

/// The most an OPTIONS answer's body may be (mod_dav_svn sends about 200 bytes).
const MAX_OPTIONS_BODY: usize = 64 * 1024;
/// The most a PROPFIND answer may be (one `<response>` of one property: under 1 KiB).
const MAX_PROPFIND_BODY: usize = 256 * 1024;

/// Everything but unreserved characters and `/`, for a path inside the repository.
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub(crate) struct DavCheck {
    /// The polled URL, canonical (see `check.rs`), without credentials.
    url: String,
    /// `scheme://host[:port]` of `url`.
    origin: String,
    /// `url`'s path, percent-decoded.
    path: String,
    ca_file: Option<PathBuf>,
    timeout: Duration,
    client: OnceLock<reqwest::Client>,
}

/// What OPTIONS said.
struct Options {
    youngest: u64,
    uuid: String,
    /// The repository root's path on the server, as sent (percent-encoded).
    root: String,
    /// Where revision roots are: `<stub>/<rev>/<path>`.
    rev_root_stub: String,
}

impl DavCheck {
    /// `url` is canonical and has a scheme and an authority (see `check.rs`).
    pub(crate) fn new(
        url: String,
        origin: String,
        ca_file: Option<PathBuf>,
        timeout: Duration,
    ) -> DavCheck {
        let path = decode(&url[origin.len()..]);
        DavCheck {
            url,
            origin,
            path,
            ca_file,
            timeout,
            client: OnceLock::new(),
        }
    }

    fn client(&self) -> Result<&reqwest::Client, SvnError> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let client = http_client::client(self.ca_file.as_deref())?;
        Ok(self.client.get_or_init(|| client))
    }

    /// The polled URL's [`Info`]; `None` when it is `last`'s, the repository not having
    /// moved since.
    pub(crate) async fn check(
        &self,
        login: &Login,
        last: Option<&Seen>,
    ) -> Result<Option<Seen>, Problem> {
        let client = self.client().map_err(Problem::Fail)?;
        let options = self.options(client, login).await?;
        if let Some(last) = last
            && last.uuid == options.uuid
            && last.info.youngest == options.youngest
        {
            return Ok(None);
        }
        let root_path = decode(&options.root);
        let inside = self
            .path
            .strip_prefix(root_path.trim_end_matches('/'))
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
            .ok_or_else(|| {
                Problem::sticky(format!(
                    "the repository root {} is not a prefix of the URL's path",
                    options.root
                ))
            })?;
        let last_changed = self.last_changed(client, login, &options, inside).await?;
        if last_changed > options.youngest {
            return Err(Problem::sticky(format!(
                "last changed revision {last_changed} is after the youngest, {}",
                options.youngest
            )));
        }
        Ok(Some(Seen {
            uuid: options.uuid,
            info: Info {
                youngest: options.youngest,
                last_changed,
                url: self.url.clone(),
                root: format!("{}{}", self.origin, options.root.trim_end_matches('/')),
            },
        }))
    }

    async fn options(&self, client: &reqwest::Client, login: &Login) -> Result<Options, Problem> {
        let request = client
            .request(Method::OPTIONS, &self.url)
            .header(CONTENT_TYPE, "text/xml")
            .body(OPTIONS_BODY);
        let response = self.send(request, login).await?;
        if response.status() != StatusCode::OK {
            return Err(refusal(&response, login));
        }
        let headers = response.headers().clone();
        read_body(response, MAX_OPTIONS_BODY, self.timeout).await?;
        let header = |name: &str| -> Result<String, Problem> {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
                .ok_or_else(|| {
                    Problem::sticky(format!(
                        "OPTIONS answered without a {name} header (not mod_dav_svn 1.7+ \
                         with its HTTP v2 protocol?)"
                    ))
                })
        };
        let youngest = header("SVN-Youngest-Rev")?;
        Ok(Options {
            youngest: youngest.parse().map_err(|_| {
                Problem::sticky(format!("SVN-Youngest-Rev {youngest:?} is not a number"))
            })?,
            uuid: header("SVN-Repository-UUID")?,
            root: header("SVN-Repository-Root")?,
            rev_root_stub: header("SVN-Rev-Root-Stub")?,
        })
    }

    /// `version-name` of the URL in revision `options.youngest`; `inside` is the URL's
    /// path inside the repository (decoded, `""` for the root).
    async fn last_changed(
        &self,
        client: &reqwest::Client,
        login: &Login,
        options: &Options,
        inside: &str,
    ) -> Result<u64, Problem> {
        let target = format!(
            "{}{}/{}{}",
            self.origin,
            options.rev_root_stub.trim_end_matches('/'),
            options.youngest,
            utf8_percent_encode(inside, PATH)
        );
        let propfind =
            Method::from_bytes(b"PROPFIND").map_err(|e| Problem::sticky(e.to_string()))?;
        let request = client
            .request(propfind, target)
            .header("Depth", "0")
            .header(CONTENT_TYPE, "text/xml")
            .body(PROPFIND_BODY);
        let response = self.send(request, login).await?;
        if response.status() != StatusCode::MULTI_STATUS {
            return Err(refusal(&response, login));
        }
        let body = read_body(response, MAX_PROPFIND_BODY, self.timeout).await?;
        version_name(&body).map_err(|what| Problem::sticky(format!("PROPFIND: {what}")))
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        login: &Login,
    ) -> Result<reqwest::Response, Problem> {
        let mut request = request.timeout(self.timeout);
        if let Some(username) = &login.username {
            request = request.basic_auth(username, login.password.as_deref());
        }
        request
            .send()
            .await
            .map_err(|error| transport(error, self.timeout))
    }
}

/// Why a request failed before an answer: past the deadline the poll fails; otherwise
/// `svn info` tries (and says why in its own words if it cannot either).
fn transport(error: reqwest::Error, timeout: Duration) -> Problem {
    if error.is_timeout() {
        return Problem::Fail(SvnError::CheckTimeout {
            via: "http(s)",
            timeout,
        });
    }
    Problem::Fallback {
        reason: polld_backend::one_line(&error.without_url()),
        sticky: false,
    }
}

/// What an answer other than the expected one means.
fn refusal(response: &reqwest::Response, login: &Login) -> Problem {
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED {
        let basic = challenges(response.headers())
            .iter()
            .any(|c| c.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("basic")));
        if !basic {
            return Problem::sticky(format!(
                "the server asks for authentication other than Basic ({:?})",
                challenges(response.headers())
            ));
        }
        return Problem::Fail(match login.username {
            Some(_) => SvnError::Authentication {
                via: "http(s)",
                message: "the server refused the username and password (401)".into(),
            },
            None => SvnError::LoginNeeded { via: "http(s)" },
        });
    }
    Problem::Fallback {
        reason: format!("the server answered {status}"),
        // A redirect will not go away by itself; an error status may.
        sticky: status.is_redirection(),
    }
}

fn challenges(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .map(|value| value.trim().to_owned())
        .collect()
}

/// The whole body, no more than `max` bytes of it, read as it arrives.
async fn read_body(
    mut response: reqwest::Response,
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, Problem> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| transport(error, timeout))?
    {
        if body.len() + chunk.len() > max {
            return Err(Problem::sticky(format!(
                "an answer larger than {} KiB",
                max / 1024
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The number in the first `version-name` element (in the `DAV:` namespace, whatever
/// its prefix) of a PROPFIND answer, which must be a whole document.
fn version_name(body: &[u8]) -> Result<u64, String> {
    let local = |name: &str| name.rsplit(':').next().unwrap_or(name).to_owned();
    let mut xml = XmlReader::new("PROPFIND", body);
    let mut inside = false;
    let mut text = String::new();
    let mut found = None;
    loop {
        let item = xml.next().map_err(|error| match error {
            SvnError::Xml { message, .. } => message,
            other => other.to_string(),
        })?;
        match item {
            Item::Start(start) => {
                if local(name_of(&start)) == "version-name" {
                    inside = true;
                    text.clear();
                }
            }
            Item::Text(piece) if inside => text.push_str(&piece),
            Item::Text(_) => {}
            Item::End(name) => {
                if inside && local(&name) == "version-name" {
                    inside = false;
                    if found.is_none() {
                        found = text.trim().parse().ok();
                    }
                }
            }
            Item::Eof => {
                return found.ok_or_else(|| "no version-name with a revision in the answer".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_version_name_whatever_its_prefix() {
        let answer = r#"<?xml version="1.0" encoding="utf-8"?>
<D:multistatus xmlns:D="DAV:" xmlns:ns0="DAV:">
<D:response xmlns:lp1="DAV:" xmlns:lp2="http://subversion.tigris.org/xmlns/dav/">
<D:href>/svn/trunk/</D:href>
<D:propstat>
<D:prop>
<lp1:version-name>3</lp1:version-name>
</D:prop>
<D:status>HTTP/1.1 200 OK</D:status>
</D:propstat>
</D:response>
</D:multistatus>
"#;
        assert_eq!(version_name(answer.as_bytes()), Ok(3));
        let plain = "<multistatus><response><propstat><prop><version-name>17</version-name>\
                     </prop></propstat></response></multistatus>";
        assert_eq!(version_name(plain.as_bytes()), Ok(17));
    }

    #[test]
    fn refuses_answers_without_a_revision() {
        let missing = "<D:multistatus xmlns:D=\"DAV:\"><D:response><D:propstat><D:prop>\
                       <D:version-name/></D:prop><D:status>HTTP/1.1 404 Not Found</D:status>\
                       </D:propstat></D:response></D:multistatus>";
        assert!(version_name(missing.as_bytes()).is_err());
        assert!(version_name(b"<a><version-name>x</version-name></a>").is_err());
        assert!(
            version_name(b"<a><version-name>3</version-name>").is_err(),
            "cut"
        );
        let entity = "<!DOCTYPE a [<!ENTITY n \"3\">]><a><version-name>&n;</version-name></a>";
        assert!(version_name(entity.as_bytes()).is_err(), "no DTD entities");
    }
}
