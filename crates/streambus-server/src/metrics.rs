//! The Prometheus recorder, and the names and helpers of the service's own
//! metrics. The `/metrics` route is in `routes::metrics`.
//!
//! The monitor gauges (stream length, lag, pending, consumers by status) are
//! refreshed on every scrape from fresh snapshots, so they are as current as
//! the scrape and cost nothing between scrapes. The scaler's target gauge
//! (`streambus_group_target_consumers`) is set by the scaler's own sampler,
//! on its fixed interval, whatever the scrape rate.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `streambus_server_ws_clients` | gauge | | WebSocket clients connected |
//! | `streambus_server_ws_cut_off_total` | counter | reason (`lagged`, `stalled`) | clients disconnected for being too slow |
//! | `streambus_server_relayed_total` | counter | stream | entries read by the relay |
//! | `streambus_redis_up` | gauge | | 1 while the service's health watcher reaches Redis, 0 while it does not |
//!
//! The library's `streambus_reconnects_total` (sockets to Redis replaced after
//! one failed) is shown from the start, at 0, so that a rate over it works
//! before the first reconnect.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Gauge: WebSocket clients connected.
pub const WS_CLIENTS: &str = "streambus_server_ws_clients";
/// Counter: WebSocket clients cut off for being too slow.
pub const WS_CUT_OFF: &str = "streambus_server_ws_cut_off_total";
/// Counter: entries read by the relay.
pub const RELAYED: &str = "streambus_server_relayed_total";
/// Gauge: 1 while Redis answers the health watcher, 0 while it does not.
pub const REDIS_UP: &str = "streambus_redis_up";

/// Installs the Prometheus recorder for the process, once; later calls (a second
/// [`AppState`](crate::AppState) in the same process, as in tests) get the same handle.
///
/// If the application installed another recorder first, the service still
/// answers `/metrics`, from a recorder of its own that sees only what is
/// recorded through its handle (a warning says so).
pub(crate) fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = match PrometheusBuilder::new().install_recorder() {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(error = %e, "another metrics recorder is installed; /metrics will not show the library's metrics");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            };
            streambus::metrics::describe();
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_gauge!(WS_CLIENTS, "WebSocket clients connected");
    metrics::describe_counter!(WS_CUT_OFF, "WebSocket clients cut off for being too slow");
    metrics::describe_counter!(RELAYED, "Entries read by the relay");
    metrics::describe_gauge!(
        REDIS_UP,
        "1 while the service reaches Redis (health watcher), 0 while it does not"
    );
    // Present from the start, so that a scrape always shows the service.
    metrics::gauge!(WS_CLIENTS).set(0.0);
    // The state has just connected (it fails otherwise).
    metrics::gauge!(REDIS_UP).set(1.0);
    // Registered at 0; the library counts each reconnect.
    metrics::counter!(streambus::metrics::RECONNECTS).increment(0);
}

/// Sets the Redis-up gauge.
pub(crate) fn redis_up(up: bool) {
    metrics::gauge!(REDIS_UP).set(if up { 1.0 } else { 0.0 });
}

/// Counts entries the relay read from `stream`.
pub(crate) fn relayed(stream: &str, n: usize) {
    metrics::counter!(RELAYED, "stream" => stream.to_owned()).increment(n as u64);
}

/// Counts a client cut off, by reason.
pub(crate) fn cut_off(reason: &'static str) {
    metrics::counter!(WS_CUT_OFF, "reason" => reason).increment(1);
}

/// Counts a connected WebSocket client for as long as it lives.
pub(crate) struct ClientGauge;

impl ClientGauge {
    pub(crate) fn new() -> Self {
        metrics::gauge!(WS_CLIENTS).increment(1.0);
        ClientGauge
    }
}

impl Drop for ClientGauge {
    fn drop(&mut self) {
        metrics::gauge!(WS_CLIENTS).decrement(1.0);
    }
}
