//! `polld notify URL...`: what a VCS server's own hook (svn `post-commit`, hg
//! `changegroup`, git `post-receive`) runs to make the daemon poll at once.
//!
//! It asks the running daemon, through its `[daemon] listen` address and `token_env`
//! token, `POST /notify?repo=URL` once per URL. A hook runs inside somebody's commit or
//! push, so it is bounded: [`DEADLINE`] for everything, and it never fails the commit
//! for the daemon's sake beyond its exit code (the regular poll is the safety net).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use polld_core::config::Config;

use crate::{EXIT_FAILED, EXIT_USAGE};

/// The longest a hook waits for the daemon, all URLs together.
const DEADLINE: Duration = Duration::from_secs(10);

/// What asking about one URL came to.
enum Answer {
    Polling(Vec<String>),
    NoPoller(String),
}

/// Exit 0 when some poller matched, 1 when none did or the daemon cannot be reached,
/// 2 when the config cannot say how to reach it (no `listen`, the token's variable
/// unset) or the daemon refuses the token.
pub async fn notify(config: &Config, urls: &[String]) -> ExitCode {
    let Some(listen) = config.daemon.listen else {
        eprintln!("polld notify: the config has no [daemon] listen, so there is no daemon to tell");
        return ExitCode::from(EXIT_USAGE);
    };
    let token = match &config.daemon.token_env {
        Some(variable) => match std::env::var(variable) {
            Ok(token) => Some(token),
            Err(_) => {
                eprintln!(
                    "polld notify: token_env names ${variable}, which is not set here (the daemon needs its token)"
                );
                return ExitCode::from(EXIT_USAGE);
            }
        },
        None => None,
    };
    let address = reachable(listen);
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(DEADLINE)
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            eprintln!("polld notify: cannot build an HTTP client: {error}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let asked = urls
        .iter()
        .map(|url| ask(&client, address, token.as_deref(), url));
    let answers = match tokio::time::timeout(DEADLINE, futures_util::future::join_all(asked)).await
    {
        Ok(answers) => answers,
        Err(_) => {
            eprintln!("polld notify: the daemon at {address} did not answer within {DEADLINE:?}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let mut matched = false;
    for (url, answer) in urls.iter().zip(answers) {
        match answer {
            Ok(Answer::Polling(pollers)) => {
                matched = true;
                println!("polld notify: polling {} for {url}", pollers.join(", "));
            }
            Ok(Answer::NoPoller(message)) => eprintln!("polld notify: {message}"),
            Err(Failure::Unreachable(why)) => {
                eprintln!("polld notify: cannot reach the daemon at {address}: {why}");
                return ExitCode::from(EXIT_FAILED);
            }
            Err(Failure::Refused(why)) => {
                eprintln!("polld notify: the daemon at {address} refused: {why}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    if matched {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

enum Failure {
    Unreachable(String),
    Refused(String),
}

async fn ask(
    client: &reqwest::Client,
    address: SocketAddr,
    token: Option<&str>,
    url: &str,
) -> Result<Answer, Failure> {
    let endpoint =
        reqwest::Url::parse_with_params(&format!("http://{address}/notify"), [("repo", url)])
            .map_err(|error| Failure::Unreachable(error.to_string()))?;
    let mut request = client.post(endpoint);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|error| Failure::Unreachable(polld_backend::one_line(&error)))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    match status.as_u16() {
        202 => {
            let pollers = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|answer| {
                    answer["polling"].as_array().map(|names| {
                        names
                            .iter()
                            .filter_map(|name| name.as_str().map(str::to_owned))
                            .collect()
                    })
                })
                .unwrap_or_default();
            Ok(Answer::Polling(pollers))
        }
        404 => Ok(Answer::NoPoller(text.trim().to_owned())),
        401 => Err(Failure::Refused(
            "401: the token in token_env is not the daemon's".to_owned(),
        )),
        _ => Err(Failure::Unreachable(format!("{status}: {}", text.trim()))),
    }
}

/// Where to connect for a daemon listening on `listen`: a wildcard address means this
/// host's loopback of the same family.
fn reachable(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}
