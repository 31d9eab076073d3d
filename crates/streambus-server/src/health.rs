//! Whether Redis is reachable, as the service last saw it: one watcher task
//! pings Redis every [`PROBE_INTERVAL`] on the shared connection, and its
//! result is what `/healthz`, the dashboard's banner and the
//! `streambus_redis_up` gauge show.
//!
//! One source of truth, so that the three agree and do not flap between the
//! views of different connections. `/healthz` answers from it at once, without
//! a round trip to Redis: a probe asking during a black hole gets its 503 now,
//! not after a response timeout, and anyone hammering `/healthz` (it needs no
//! token) costs Redis nothing.
//!
//! The ping runs under the library's own response timeout, never a shorter
//! one of ours: a request that times out in the library retires its socket,
//! so the next ping dials a new one. A shorter outer timeout would drop the
//! request before the library noticed, and the watcher could keep pinging
//! into a dead socket.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use streambus::{ConnectOptions, Connection, ErrorKind};
use tokio_util::sync::CancellationToken;

use crate::chain::error_chain;
use crate::metrics as server_metrics;

/// How often the watcher pings Redis. With the library's defaults (3 s
/// connect and response timeouts) a lost Redis shows within about 4 s, and
/// its return within about 1 s of the first ping that gets through.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// What `Retry-After` says (seconds) when Redis is unreachable: about the
/// watcher's interval plus a dial, so that a client that obeys it asks again
/// soon after recovery, without hammering.
pub(crate) const RETRY_AFTER_SECS: u64 = 2;

/// Since when Redis is unreachable, and why.
#[derive(Clone, Debug)]
pub(crate) struct Outage {
    /// Wall-clock start, for people (`/healthz` shows it as Unix ms).
    pub since: SystemTime,
    /// Monotonic start, for durations.
    pub started: Instant,
    /// The kind of the last failure (`connection`, `timeout`, `busy`, ...):
    /// a fixed word, never the error text (`/healthz` is open to anyone).
    pub kind: ErrorKind,
}

impl Outage {
    /// `since` in milliseconds since the Unix epoch.
    pub(crate) fn since_ms(&self) -> u64 {
        self.since
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// The shared view of Redis' health. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct RedisHealth {
    outage: Arc<Mutex<Option<Outage>>>,
}

impl RedisHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Outage>> {
        self.outage
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current outage, `None` while Redis answers.
    pub(crate) fn outage(&self) -> Option<Outage> {
        self.lock().clone()
    }

    /// Redis answered. Logs the end of an outage, once.
    pub(crate) fn record_ok(&self) {
        let ended = self.lock().take();
        if let Some(o) = ended {
            tracing::info!(
                down_for = ?o.started.elapsed(),
                "Redis is reachable again"
            );
        }
        server_metrics::redis_up(true);
    }

    /// Redis did not answer. Logs the start of an outage, once (later
    /// failures of the same outage only update its kind).
    pub(crate) fn record_err(&self, kind: ErrorKind, detail: &str) {
        let mut outage = self.lock();
        match &mut *outage {
            Some(o) => o.kind = kind,
            None => {
                tracing::warn!(
                    error = %detail,
                    "Redis is unreachable; the API answers 503 until it is back, and the relay then resumes where it stopped"
                );
                *outage = Some(Outage {
                    since: SystemTime::now(),
                    started: Instant::now(),
                    kind,
                });
            }
        }
        drop(outage);
        server_metrics::redis_up(false);
    }

    /// Pings Redis on `conn` every [`PROBE_INTERVAL`] until `shutdown`.
    /// `options`: those of the client `conn` came from.
    pub(crate) async fn watch(
        self,
        mut conn: Connection,
        options: ConnectOptions,
        shutdown: CancellationToken,
    ) {
        // A safety net only, above what the library allows a dial plus a
        // request (see the module docs for why it must not be shorter).
        let guard = options.connect_timeout + options.response_timeout * 2 + Duration::from_secs(1);
        let cmd = redis::cmd("PING");
        loop {
            let ping = tokio::select! {
                r = tokio::time::timeout(guard, cmd.query_async::<()>(&mut conn)) => r,
                _ = shutdown.cancelled() => return,
            };
            match ping {
                Ok(Ok(())) => self.record_ok(),
                Ok(Err(e)) => self.record_err(
                    kind_of(&e),
                    &format!("cannot PING Redis: {}", error_chain(&e)),
                ),
                Err(_) => self.record_err(
                    ErrorKind::Timeout,
                    &format!("Redis did not answer PING within {guard:?}"),
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// Whether an error means "Redis is unreachable right now": the kinds that
/// get 503 with `Retry-After`.
pub(crate) fn is_unreachable(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Connection
            | ErrorKind::Timeout
            | ErrorKind::Busy
            | ErrorKind::Unavailable
            | ErrorKind::Unconfirmed
    )
}

/// The library's kind for a failed `PING` (the library classifies the errors
/// of its own calls; a bare command gets this coarser version).
fn kind_of(e: &redis::RedisError) -> ErrorKind {
    if e.is_timeout() {
        ErrorKind::Timeout
    } else if matches!(
        e.code(),
        Some("LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN")
    ) {
        ErrorKind::Busy
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        ErrorKind::Connection
    } else {
        ErrorKind::Redis
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_starts_once_and_ends_on_success() {
        let h = RedisHealth::default();
        assert!(h.outage().is_none());
        h.record_err(ErrorKind::Connection, "refused");
        let first = h.outage().unwrap();
        h.record_err(ErrorKind::Timeout, "no reply");
        let later = h.outage().unwrap();
        assert_eq!(later.since, first.since, "one outage, one start");
        assert_eq!(later.kind, ErrorKind::Timeout);
        assert!(later.since_ms() > 0);
        h.record_ok();
        assert!(h.outage().is_none());
    }
}
