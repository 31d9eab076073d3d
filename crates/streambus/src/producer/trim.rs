//! Retention that never deletes what a group still needs
//! ([`ProducerOptions::keep_unacked`](super::ProducerOptions::keep_unacked)).
//!
//! The XADDs then trim nothing themselves. A task of the producer runs the
//! trimming script (`scripts/trim_keep_unacked.lua`: the bound from `XINFO
//! GROUPS` and the pending summaries, and the trim, in one atomic step) on a
//! stream after every [`Trimmer::every`] entries published to it, and once a
//! second on each stream it published to that is still over its length (a
//! group's backlog held the trim back: once the group catches up, the stream
//! shrinks back without waiting for more publishes).
//!
//! Why not in every XADD: the script reads every group's state, which costs
//! about as much as the XADD itself; once per [`Trimmer::every`] entries it is
//! lost in the noise (see BENCHMARKS.md, "keep_unacked"). The price is that
//! the stream may be over its length by up to that many entries between two
//! runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use redis::Script;
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::Retention;
use crate::connection::Connection;
use crate::id::EntryId;

static TRIM: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/trim_keep_unacked.lua")));

/// How often a stream over its length is trimmed again without new publishes.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Most entries one run of the script deletes: Redis's own default for
/// approximate trimming (100 nodes of 100), so a run stays short.
const MAX_DELETE: u64 = 10_000;

/// The trimming of one producer's streams.
pub(super) struct Trimmer {
    conn: Connection,
    retention: Retention,
    /// Entries published to a stream between two runs of the script.
    every: u64,
    streams: Mutex<HashMap<Arc<str>, Due>>,
    wake: Notify,
    /// A failure was logged as a warning (later ones go to debug).
    warned: AtomicBool,
    /// Held while streams are taken off the due list and trimmed, by the
    /// task and by [`Trimmer::trim_if_due`]: a `publish_batch` that returns
    /// finds its stream trimmed (or the failure said) even when the task took
    /// the run first. (Without it a short-lived publisher could exit while
    /// the task's run was under way: neither trimmed nor a warning.)
    running: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Due {
    /// Entries published since the last run.
    since: u64,
    /// The last run left it over its length.
    over: bool,
}

impl Trimmer {
    /// A trimmer for `retention`, or `None` when there is nothing to trim.
    pub(super) fn new(conn: Connection, retention: Retention) -> Option<Arc<Trimmer>> {
        let every = match retention {
            Retention::Unbounded => return None,
            // A tenth of the length, from 100 to 10,000 entries.
            Retention::MaxLen { len, .. } => (len / 10).clamp(100, MAX_DELETE),
            Retention::MaxAge(_) => 1_000,
        };
        Some(Arc::new(Trimmer {
            conn,
            retention,
            every,
            streams: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            warned: AtomicBool::new(false),
            running: tokio::sync::Mutex::new(()),
        }))
    }

    /// `n` entries were written to `stream`.
    pub(super) fn published(&self, stream: &Arc<str>, n: u64) {
        if n == 0 {
            return;
        }
        let mut streams = self.lock();
        let due = match streams.get_mut(stream) {
            Some(due) => due,
            None => streams.entry(stream.clone()).or_default(),
        };
        due.since += n;
        if due.since >= self.every {
            self.wake.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Due>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs until the producer is dropped (its task is aborted then).
    pub(super) async fn run(self: Arc<Self>) {
        loop {
            let retry = tokio::select! {
                _ = self.wake.notified() => false,
                _ = tokio::time::sleep(RETRY_EVERY) => true,
            };
            let _running = self.running.lock().await;
            let due: Vec<Arc<str>> = {
                let mut streams = self.lock();
                streams
                    .iter_mut()
                    .filter(|(_, d)| d.since >= self.every || (retry && (d.over || d.since > 0)))
                    .map(|(s, d)| {
                        d.since = 0;
                        s.clone()
                    })
                    .collect()
            };
            for stream in due {
                self.run_once(&stream).await;
            }
        }
    }

    /// Trims `stream` now if it is due (for `publish_batch`, which returns
    /// once its stream is trimmed, so that a short-lived publisher leaves it
    /// trimmed too).
    pub(super) async fn trim_if_due(&self, stream: &Arc<str>) {
        // After a run of the task that is under way, if any.
        let _running = self.running.lock().await;
        let due = match self.lock().get_mut(stream) {
            Some(d) if d.since >= self.every => {
                d.since = 0;
                true
            }
            _ => false,
        };
        if due {
            self.run_once(stream).await;
        }
    }

    /// One run on `stream`, noting whether it is still over its length.
    async fn run_once(&self, stream: &Arc<str>) {
        let over = match self.trim(stream).await {
            Ok(over) => over,
            Err(e) => {
                // Tried again within a second; said once, then at debug.
                if self.warned.swap(true, Ordering::Relaxed) {
                    debug!(%stream, error = %e, "trimming failed");
                } else {
                    warn!(%stream, error = %e, "trimming (keep_unacked) failed: the stream is not trimmed until a run succeeds (tried again after more publishes, and every second)");
                }
                true
            }
        };
        if let Some(d) = self.lock().get_mut(stream) {
            d.over = over;
        }
    }

    /// One run of the script; whether the stream is still over its length.
    async fn trim(&self, stream: &str) -> redis::RedisResult<bool> {
        let mut invocation = TRIM.key(stream);
        match self.retention {
            Retention::Unbounded => return Ok(false),
            Retention::MaxLen { len, .. } => invocation.arg("len").arg(len),
            Retention::MaxAge(age) => {
                let cutoff = SystemTime::now()
                    .checked_sub(age)
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                invocation.arg("age").arg(EntryId::at_time(cutoff))
            }
        };
        let over: u64 = invocation
            .arg(MAX_DELETE)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(over > 0)
    }
}
