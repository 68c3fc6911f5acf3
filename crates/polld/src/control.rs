//! The HTTP control endpoint (`[daemon] listen`): the status page, health, metrics, status, and the POSTs
//! that poke pollers or reload the config.
//!
//! POSTs need `Authorization: Bearer <token>` when `token_env` is set; the token is
//! compared in constant time. `POST /hooks/{forge}` is the exception: a forge signs its
//! deliveries instead (`polld_hooks::verify`), and only forges `[hooks]` configures have
//! an endpoint. Hook bodies are the only bodies read: at most [`MAX_BODY`] each, within
//! [`HOOK_BODY_TIMEOUT`], and at most [`HOOK_BODIES`] at once, so unauthenticated
//! senders can hold neither much memory nor every connection. Query strings are
//! bounded; connections are bounded in time and number by `http_server`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use polld_core::config::{Config, ConfigError};
use polld_core::daemon::Control;
use polld_hooks::{Delivery, Forge, MAX_BODY, Secret};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::{http_server, page, status};

/// Longest request URI accepted (a `/notify?repo=` URL fits easily).
const MAX_URI: usize = 4096;

/// How long a hook's sender has to send its whole body (25 MiB at 1 MB/s fits).
pub const HOOK_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Hook bodies read at once; more wait up to [`HOOK_QUEUE_WAIT`] for their turn, then
/// get `503`. Bounds what unverified bodies can take: `HOOK_BODIES` × [`MAX_BODY`].
pub const HOOK_BODIES: usize = 16;
pub const HOOK_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Each configured forge's webhook secret, read when the daemon starts.
pub type HookSecrets = HashMap<Forge, Secret>;

/// Loads the config again, for `POST /reload` (the same loader SIGHUP uses).
pub type Loader = Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

#[derive(Clone)]
struct Shared {
    control: Arc<Control>,
    token: Option<Arc<str>>,
    load: Loader,
    hooks: Arc<HookSecrets>,
    hook_bodies: Arc<Semaphore>,
}

/// Binds `address` now (so a bad address fails at start) and serves until `shutdown`.
pub async fn serve(
    address: SocketAddr,
    control: Arc<Control>,
    token: Option<String>,
    hooks: HookSecrets,
    load: Loader,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let shared = Shared {
        control,
        token: token.map(Arc::from),
        load,
        hooks: Arc::new(hooks),
        hook_bodies: Arc::new(Semaphore::new(HOOK_BODIES)),
    };
    let posts = Router::new()
        .route("/poll", post(poll_all))
        .route("/poll/{name}", post(poll_one))
        .route("/notify", post(notify))
        .route("/reload", post(reload))
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ));
    let app = Router::new()
        .route("/", get(page::page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/status", get(status_json))
        // Outside the bearer token's layer: forges sign instead.
        .route("/hooks/{forge}", post(hook))
        .merge(posts)
        .layer(middleware::from_fn(limit_uri))
        .with_state(shared);
    tracing::info!(%address, "control endpoint listening");
    Ok(tokio::spawn(http_server::serve(listener, app, shutdown)))
}

async fn limit_uri(request: Request, next: Next) -> Response {
    if request.uri().to_string().len() > MAX_URI {
        return (StatusCode::URI_TOO_LONG, "request URI too long\n").into_response();
    }
    next.run(request).await
}

async fn require_token(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    if let Some(token) = &shared.token {
        let offered = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(offered.as_bytes().ct_eq(token.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "missing or wrong bearer token\n",
            )
                .into_response();
        }
    }
    next.run(request).await
}

async fn healthz(State(shared): State<Shared>) -> Response {
    match shared.control.health() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn metrics(State(shared): State<Shared>) -> Response {
    let text = shared.control.metrics_text().await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn status_json(State(shared): State<Shared>) -> Response {
    match shared.control.status().await {
        Ok(statuses) => {
            let mut body = status::json(&shared.control.config(), &statuses);
            body["daemon"] = json!({ "tasks": shared.control.tasks() });
            axum::Json(body).into_response()
        }
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response(),
    }
}

async fn poll_all(State(shared): State<Shared>) -> Response {
    shared.control.poll_all();
    (StatusCode::ACCEPTED, axum::Json(json!({"polling": "all"}))).into_response()
}

async fn poll_one(State(shared): State<Shared>, Path(name): Path<String>) -> Response {
    if shared.control.poll(&name) {
        (StatusCode::ACCEPTED, axum::Json(json!({"polling": [name]}))).into_response()
    } else {
        (StatusCode::NOT_FOUND, format!("no poller named {name:?}\n")).into_response()
    }
}

async fn notify(
    State(shared): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(repo) = query.get("repo") else {
        return (
            StatusCode::BAD_REQUEST,
            "say which repository: /notify?repo=URL\n",
        )
            .into_response();
    };
    let pollers = shared.control.notify(repo);
    if pollers.is_empty() {
        let shown = polld_backend::redact::strip_userinfo(repo);
        return (
            StatusCode::NOT_FOUND,
            format!("no poller watches {shown:?}\n"),
        )
            .into_response();
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "polling": pollers })),
    )
        .into_response()
}

async fn reload(State(shared): State<Shared>) -> Response {
    match crate::reload(&shared.control, &shared.load).await {
        Ok(summary) => axum::Json(summary).into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response(),
    }
}

/// `POST /hooks/{forge}`: verify the delivery as its forge signs it, then poll every
/// poller of every repository URL a push names, as `/notify` does. The payload's commit
/// ids are never used: the poll finds the commits.
async fn hook(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let Some((forge, secret)) = name
        .parse::<Forge>()
        .ok()
        .and_then(|forge| Some((forge, shared.hooks.get(&forge)?)))
    else {
        return (
            StatusCode::NOT_FOUND,
            format!("no hook endpoint for {name:?}: [hooks] configures no such forge\n"),
        )
            .into_response();
    };
    let label = forge.as_str();
    let refuse = |result: &'static str, status: StatusCode, message: String| {
        shared.control.hook_request(label, result);
        tracing::info!(forge = label, result, "hook refused: {message}");
        (status, format!("{message}\n")).into_response()
    };
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if let Some(size) = declared.filter(|size| *size > MAX_BODY as u64) {
        return refuse(
            "too_large",
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body of {size} bytes is over the limit of {MAX_BODY} bytes"),
        );
    }
    let Ok(Ok(_permit)) = tokio::time::timeout(
        HOOK_QUEUE_WAIT,
        Arc::clone(&shared.hook_bodies).acquire_owned(),
    )
    .await
    else {
        return refuse(
            "busy",
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{HOOK_BODIES} hook deliveries are being read; try again"),
        );
    };
    let body = match tokio::time::timeout(HOOK_BODY_TIMEOUT, read_body(body)).await {
        Ok(Ok(body)) => body,
        Ok(Err(BodyError::TooLarge)) => {
            return refuse(
                "too_large",
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body is over the limit of {MAX_BODY} bytes"),
            );
        }
        Ok(Err(BodyError::Unreadable(error))) => {
            return refuse(
                "malformed",
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {error}"),
            );
        }
        Err(_) => {
            return refuse(
                "timeout",
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {HOOK_BODY_TIMEOUT:?}"),
            );
        }
    };
    let lookup = |name: &str| parts.headers.get(name).map(|value| value.as_bytes());
    let delivery =
        polld_hooks::verify(forge, secret, lookup, &body).and_then(|verified| verified.delivery());
    let delivery = match delivery {
        Ok(delivery) => delivery,
        Err(error) => {
            let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
            return refuse(error.result(), status, error.to_string());
        }
    };
    match delivery {
        Delivery::Push { urls } => {
            let polled = shared.control.notify_any(&urls);
            if polled.is_empty() {
                let shown: Vec<String> = urls
                    .iter()
                    .map(|url| polld_backend::redact::strip_userinfo(url))
                    .collect();
                shared.control.hook_request(label, "no_poller");
                tracing::info!(forge = label, repository = ?shown, "hook: no poller watches the pushed repository");
                return (
                    StatusCode::NOT_FOUND,
                    format!("no poller watches {}\n", shown.join(" nor ")),
                )
                    .into_response();
            }
            shared.control.hook_request(label, "push");
            tracing::debug!(forge = label, pollers = ?polled, "hook: polling");
            (
                StatusCode::ACCEPTED,
                axum::Json(json!({ "polled": polled })),
            )
                .into_response()
        }
        other @ (Delivery::Ping | Delivery::Ignored { .. }) => {
            shared.control.hook_request(label, other.result());
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

enum BodyError {
    TooLarge,
    Unreadable(axum::Error),
}

/// The whole body, or `TooLarge` as soon as it passes [`MAX_BODY`] (a sender may not
/// say its length, or lie about it).
async fn read_body(body: axum::body::Body) -> Result<Vec<u8>, BodyError> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(BodyError::Unreadable)?;
        if bytes.len() + chunk.len() > MAX_BODY {
            return Err(BodyError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}
