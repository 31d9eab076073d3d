//! Requests to the service's router in-process, with
//! `tower::ServiceExt::oneshot` (no socket), and their bodies.

use axum::body::{Body, Bytes};
use axum::http::{header, Request, Response};
use serde_json::Value;
use streambus_server::{app, AppState};
use tower::ServiceExt;

use super::TOKEN;

/// Largest body read back: more than any response of the tests.
const MAX_BODY: usize = 16 << 20;

/// Answers `req` with a fresh router on `state`.
pub async fn call(state: &AppState, req: Request<Body>) -> Response<Body> {
    app(state.clone()).oneshot(req).await.unwrap()
}

/// A GET of `path`, with `token` as a bearer token if given.
pub fn get(path: &str, token: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Body::empty()).unwrap()
}

/// An authorized POST of the JSON `body` to `path`.
pub fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap()
}

/// The body of `resp`, whole.
pub async fn bytes(resp: Response<Body>) -> Bytes {
    axum::body::to_bytes(resp.into_body(), MAX_BODY)
        .await
        .unwrap()
}

/// The body of `resp` as JSON; panics with the body when it is not.
pub async fn json(resp: Response<Body>) -> Value {
    let bytes = bytes(resp).await;
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// The body of `resp` as UTF-8 text.
pub async fn text(resp: Response<Body>) -> String {
    String::from_utf8(bytes(resp).await.to_vec()).unwrap()
}
