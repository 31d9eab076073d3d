//! `GET /metrics`: the Prometheus text of the library's metrics and the
//! service's own (see [`crate::metrics`]).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

/// Refreshes the monitor gauges from fresh snapshots, then renders everything
/// in the Prometheus text format. A stream that cannot be inspected keeps its
/// previous values. The scaler is not fed here: its sampler has its own
/// interval, so the scrape rate does not change its advice.
pub(crate) async fn render(State(state): State<AppState>) -> Response {
    let refreshed = state
        .catalog()
        .snapshots(&mut state.conn(), &state.config().monitor)
        .await;
    if let Err(e) = refreshed {
        // A scrape still returns what exists; the health watcher logs an outage.
        tracing::debug!(error = %crate::chain::error_chain(&e), "/metrics: cannot refresh the monitor gauges");
    }
    let handle = state.metrics_handle();
    handle.run_upkeep();
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        handle.render(),
    )
        .into_response()
}
