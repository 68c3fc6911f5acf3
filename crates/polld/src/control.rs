//! The HTTP control endpoint (`[daemon] listen`): health, metrics, status, and the POSTs
//! that poke pollers or reload the config.
//!
//! POSTs need `Authorization: Bearer <token>` when `token_env` is set; the token is
//! compared in constant time. Nothing here reads a request body, and query strings are
//! bounded, so a client cannot make the daemon buffer much; connections are bounded in
//! time and number by `http_server`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use polld_core::config::{Config, ConfigError};
use polld_core::daemon::Control;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::{http_server, status};

/// Longest request URI accepted (a `/notify?repo=` URL fits easily).
const MAX_URI: usize = 4096;

/// Loads the config again, for `POST /reload` (the same loader SIGHUP uses).
pub type Loader = Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

#[derive(Clone)]
struct Shared {
    control: Arc<Control>,
    token: Option<Arc<str>>,
    load: Loader,
}

/// Binds `address` now (so a bad address fails at start) and serves until `shutdown`.
pub async fn serve(
    address: SocketAddr,
    control: Arc<Control>,
    token: Option<String>,
    load: Loader,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let shared = Shared {
        control,
        token: token.map(Arc::from),
        load,
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
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/status", get(status_json))
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
