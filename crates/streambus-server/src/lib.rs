//! The streambus service: a WebSocket relay of live events, a JSON API over the
//! monitor, the scaler and the dead-letter streams, Prometheus metrics, and a
//! dashboard page, all served by one binary (`streambus serve`).
//!
//! ```no_run
//! use streambus_server::{app, serve, AppState, ServerConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ServerConfig {
//!     streams: vec!["aurora:alerts".into()],
//!     ..Default::default()
//! };
//! config.validate()?;
//! let client = streambus::Client::open("redis://127.0.0.1:6379")?;
//! let listener = tokio::net::TcpListener::bind(config.listen).await?;
//! let state = AppState::new(config, client).await?;
//! serve(listener, state, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! # Routes
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /` , `/app.js`, `/app.css` | no | the dashboard |
//! | `GET /healthz` | no | `{"status":"ok","redis":"ok"}`, or 503 `{"status":"redis_unreachable",...}` |
//! | `GET /ws?streams=S1,S2[&from=ID]` | yes | live entries as JSON text messages |
//! | `GET /api/streams` | yes | streams, groups, lag, pending, dead-letter counts |
//! | `GET /api/streams/{s}/groups/{g}` | yes | the monitor snapshot of a group |
//! | `GET /api/streams/{s}/groups/{g}/scale` | yes | the scaler's suggestion |
//! | `GET /api/streams/{s}/dlq?count=N` | yes | dead letters |
//! | `POST /api/streams/{s}/messages` | yes | publish the JSON body |
//! | `GET /metrics` | yes | Prometheus text |
//!
//! # Faults
//!
//! The service keeps running while Redis is unreachable (a silent network,
//! resets, a restart). A health watcher pings Redis every second: `/healthz`
//! then answers 503 `{"status":"redis_unreachable",...}`, the dashboard shows
//! a "Redis unreachable" banner, `streambus_redis_up` is 0, and the API answers
//! 503 with a `reason` and `Retry-After`. WebSocket clients stay connected;
//! each relay reader retries (50 ms doubling to 2 s, with jitter) and resumes
//! after the last id it relayed: no gap, no duplicate. With the default
//! timeouts everything works again within 10 s of Redis being reachable.
//! Started without Redis, the service exits with an error.
//!
//! # Layout
//!
//! Four layers; a module uses only the layers below it, so there is no
//! cycle. Only the http layer uses axum, but for one type: the state picks
//! axum's `Utf8Bytes` as the text the relay fans out, so that each entry is
//! encoded once and only reference-counted per client.
//!
//! ```text
//!  http      routes::{api, ws, metrics, dashboard}   auth   security   error
//!              │ read and call
//!  state     state::AppState: owns the connections, the engines, their tasks
//!              │ owns
//!  engines   relay (+ relay::reader)   sampler   catalog   health
//!              │ use
//!  leaves    config   metrics   chain
//! ```
//!
//! - [`config`]: [`ServerConfig`] and its [`validate`](ServerConfig::validate).
//! - `catalog`: which streams are shown (configured, or found by `SCAN`;
//!   partitioned streams as one), and their snapshots. Used by the routes and
//!   the sampler.
//! - `relay`: the relay engine: one `XREAD` reader per stream (`relay::reader`),
//!   fanned out to subscribers through broadcast channels; replay, resume
//!   after faults, reset notices. Generic over the text it fans out; no axum.
//! - `sampler`: feeds the scaler's advisors on a fixed interval
//!   ([`ServerConfig::scale_interval`]), in a task of its own: the request
//!   rate never changes the advice.
//! - `health`: whether Redis is reachable (one watcher task), for `/healthz`,
//!   the dashboard's banner and `streambus_redis_up`.
//! - [`state`]: [`AppState`], what the routes share; it starts and owns the
//!   relay readers, the sampler and the health watcher.
//! - `routes`: the HTTP layer. `routes::api` (the JSON routes, with their
//!   bodies typed in `routes::responses`), `routes::ws` (the WebSocket route:
//!   adapts the relay engine to axum: slow clients, close frames),
//!   `routes::metrics` (`/metrics`), `routes::dashboard` and `assets/` (the page).
//! - [`auth`]: bearer token, constant-time comparison (middleware).
//! - [`security`]: security headers (CSP) on every response (middleware).
//! - [`metrics`]: the Prometheus recorder and the service's own metrics.
//! - [`error`]: [`ApiError`], the routes' JSON errors, which never leak
//!   internals. `chain`: an error with its sources, for the engines' logs.

#![warn(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod auth;
mod catalog;
mod chain;
pub mod config;
pub mod error;
mod health;
pub mod metrics;
mod relay;
mod routes;
mod sampler;
pub mod security;
pub mod state;

use std::future::Future;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{middleware, Router};
use tokio::net::TcpListener;

pub use config::{ConfigError, ServerConfig};
pub use error::ApiError;
pub use state::AppState;

use routes::{api, dashboard, ws};

/// The service's routes, with auth, security headers and the body limit.
/// Apart from [`serve`] so that tests can call it with
/// `tower::ServiceExt::oneshot`.
pub fn app(state: AppState) -> Router {
    let protected = Router::new()
        .route("/ws", get(ws::ws_handler))
        .route("/api/streams", get(api::streams))
        .route("/api/streams/{stream}/groups/{group}", get(api::group))
        .route(
            "/api/streams/{stream}/groups/{group}/scale",
            get(api::scale),
        )
        .route("/api/streams/{stream}/dlq", get(api::dead_letters))
        .route("/api/streams/{stream}/messages", post(api::publish))
        .route("/metrics", get(routes::metrics::render))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    let public = Router::new()
        .route("/healthz", get(api::healthz))
        .route("/", get(dashboard::index))
        .route("/app.js", get(dashboard::script))
        .route("/app.css", get(dashboard::style));
    Router::new()
        .merge(protected)
        .merge(public)
        .fallback(|| async { ApiError::not_found("no such route") })
        // Bodies over the limit get 413 before they are read into memory.
        .layer(DefaultBodyLimit::max(state.config().max_body_bytes))
        .layer(middleware::from_fn(security::headers))
        .with_state(state)
}

/// Serves [`app`] on `listener` until `shutdown` completes, then closes every
/// WebSocket with a close frame ("server shutting down"), waits for them (at
/// most [`ServerConfig::shutdown_grace`]) and for in-flight requests.
///
/// The caller owns the listener (bind it where and how it likes, e.g. port 0
/// in tests) and the shutdown signal.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "streambus service listening");
    }
    let router = app(state.clone());
    let signal_state = state.clone();
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: closing WebSocket clients");
            // WebSocket tasks are detached from their HTTP connection: tell
            // them to close, or graceful shutdown would not wait for them.
            signal_state.begin_shutdown();
        })
        .await;
    // Also when `axum::serve` failed: stop the readers and clients.
    state.begin_shutdown();
    let clients = state.clients();
    clients.close();
    if tokio::time::timeout(state.config().shutdown_grace, clients.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = clients.len(),
            "WebSocket clients did not close within the grace period"
        );
    }
    result
}
