//! The worker: runs a handler over a consumer group, and loses nothing.
//!
//! Guarantee: **at-least-once**. An entry leaves the group's pending list only by an
//! acknowledgement after its handler succeeded, or by an atomic move to the
//! dead-letter stream. A crash, a panic, a lost connection, a Redis restart or a
//! shutdown can cause a redelivery, never a loss (with Redis persistence on).
//!
//! What it does, per part:
//!
//! - **Reading** (`read`): a permit per in-flight entry (`concurrency`), taken
//!   *before* reading, so a read never fetches more than there is room for
//!   (`XREADGROUP COUNT <free permits>`), on a blocking connection of its own;
//!   with a backlog, the next read is sent before the last one's reply is taken
//!   (unless entries must stay in stream order). With `concurrency: 1` the
//!   permits are a read-ahead instead, sized from the handler's pace (see
//!   [`WorkerOptions::concurrency`]), and every entry goes through one queue.
//! - **Handling** (`dispatch`): the entries of one read are spread over at most
//!   one task per CPU, each running its entries concurrently. A panic anywhere
//!   in the handler (in its future, or in a closure before it returns one) is
//!   caught and counts as a failure of that delivery only. With
//!   `ordered_by_key`, entries with the same envelope `key` run one at a time,
//!   in stream order.
//! - **Idempotency** (`idempotency`, optional): a lease on the envelope id is
//!   taken before the handler runs, so duplicates never run at the same time.
//! - **Acknowledging** (`acks`): in batches (many ids per XACK), sent in the same
//!   round trip as the next read, or by a flusher after `ack_flush_interval`
//!   (acks that complete while a read blocks), and on shutdown.
//! - **Maintenance** (`maintenance`, [`crate::claim`]): entries pending longer
//!   than the visibility timeout (dead consumers) or failed here and due by
//!   their backoff are claimed and handled again; after `max_deliveries` they
//!   are dead-lettered, in a task of their own. Retry schedules of entries no
//!   longer pending here are pruned on every full scan.
//! - **Faults**: a failed read is retried with exponential backoff and jitter; a
//!   missing group (`NOGROUP`, e.g. Redis restarted without persistence) is
//!   recreated from the beginning of the stream (duplicates possible, no loss).
//! - **Shutdown**: on the cancellation token, stop reading, let in-flight
//!   handlers finish within `shutdown_grace`, flush acknowledgements, return a
//!   [`WorkerReport`]. What did not finish stays pending for a later run or
//!   another consumer. Dropping the future of [`Worker::run`] instead is a hard
//!   stop: its tasks end at once, nothing more is handled or acknowledged, and
//!   what was in flight stays pending.
//!
//! # Layout
//!
//! - `options`: [`WorkerOptions`] and [`WorkerReport`].
//! - `read`: the read loop, with read-ahead.
//! - `dispatch`: concurrency, keyed order, panics; the in-flight marks.
//! - `idempotency`: the lease on an envelope id.
//! - `acks`: the `AckQueue` and the flusher.
//! - `maintenance`: the periodic duties: reclaim, retry schedules, dead-letter
//!   moves.

mod acks;
mod dispatch;
mod idempotency;
mod maintenance;
mod options;
mod read;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, Semaphore};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::connection::{Client, Connection};
use crate::consumer::{self, Consumer, ConsumerOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::handler::Handler;
use crate::keys;
use crate::metrics as m;
use crate::partition::lease::Fence;

use acks::AckQueue;
use dispatch::{InFlight, KeyQueue};
use maintenance::RetrySchedule;
pub use options::{WorkerOptions, WorkerReport};

#[derive(Default)]
struct Stats {
    delivered: AtomicU64,
    acked: AtomicU64,
    retried: AtomicU64,
    panicked: AtomicU64,
    reclaimed: AtomicU64,
    dead_lettered: AtomicU64,
    duplicates_skipped: AtomicU64,
    duplicates_deferred: AtomicU64,
    gone: AtomicU64,
    groups_recreated: AtomicU64,
}

impl Stats {
    fn report(&self, unfinished: u64) -> WorkerReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WorkerReport {
            delivered: get(&self.delivered),
            acked: get(&self.acked),
            retried: get(&self.retried),
            panicked: get(&self.panicked),
            reclaimed: get(&self.reclaimed),
            dead_lettered: get(&self.dead_lettered),
            duplicates_skipped: get(&self.duplicates_skipped),
            duplicates_deferred: get(&self.duplicates_deferred),
            gone: get(&self.gone),
            unfinished,
            groups_recreated: get(&self.groups_recreated),
        }
    }
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Runs a [`Handler`] over one consumer group of one stream.
#[derive(Debug)]
pub struct Worker {
    client: Client,
    stream: String,
    group: String,
    consumer: String,
    options: WorkerOptions,
    /// Whether `run` checks the server's settings first; off for the workers of a
    /// partitioned stream, whose owner checks once for all of them.
    preflight: bool,
    /// Set by a leased [`crate::partition::PartitionedWorker`]: the partition's
    /// owner lease, checked before reads, handlers and acks (see `Shared::fence`).
    fence: Option<Arc<Fence>>,
}

impl Worker {
    /// A worker for `group` on `stream`, named
    /// [`WorkerOptions::consumer_name`]. It connects when it runs.
    pub fn new(
        client: &Client,
        stream: impl Into<String>,
        group: impl Into<String>,
        options: WorkerOptions,
    ) -> Self {
        let consumer = match &options.consumer_name {
            Some(name) => name.clone(),
            None => consumer::default_consumer_name(),
        };
        Worker {
            client: client.clone(),
            stream: stream.into(),
            group: group.into(),
            consumer,
            options,
            preflight: true,
            fence: None,
        }
    }

    /// Skips the check of the server's settings at start (done once by the
    /// owner of several workers).
    pub(crate) fn without_preflight(mut self) -> Self {
        self.preflight = false;
        self
    }

    /// Runs under a partition's owner lease: reads, handlers and acks stop
    /// once `fence` is lost, acks are fenced by the lease atomically, and
    /// pending entries are handled before new ones are read (the handover).
    pub(crate) fn with_fence(mut self, fence: Arc<Fence>) -> Self {
        self.fence = Some(fence);
        self
    }

    /// The consumer name in use.
    pub fn name(&self) -> &str {
        &self.consumer
    }

    /// Runs until `shutdown` is cancelled, then stops gracefully and reports.
    ///
    /// Fails only at start (bad names, bad options, Redis unreachable or refusing
    /// the credentials); later faults are logged and retried.
    ///
    /// Dropping the returned future (instead of cancelling `shutdown`) stops
    /// the worker at once: its handlers are dropped at their next `.await`, no
    /// acknowledgement is sent any more, and what was in flight stays pending
    /// for a later run (under the same name, at once) or another consumer.
    pub async fn run<H: Handler>(
        self,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<WorkerReport> {
        let o = &self.options;
        keys::validate_name("stream", &self.stream)?;
        keys::validate_name("group", &self.group)?;
        keys::validate_name("consumer", &self.consumer)?;
        if o.concurrency == 0 || o.batch_size == 0 || o.max_deliveries == 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "concurrency, batch size and max deliveries must be at least 1",
            ));
        }
        let conn = self.client.connect().await?;
        if self.preflight {
            crate::admin::preflight::warn_about(&mut conn.clone()).await;
        }
        let mut consumer = Consumer::with_shared(
            &self.client,
            conn.clone(),
            &self.stream,
            &self.group,
            ConsumerOptions {
                batch_size: o.batch_size,
                max_wait: o.block,
                start: o.start,
                create_group: true,
                consumer_name: Some(self.consumer.clone()),
            },
        )
        .await?;
        // The reclaim loop takes own pending entries back, with delivery counts.
        consumer.skip_own_pending();

        // With concurrency 1 the entries are handled one after another, in
        // stream order, from a read-ahead of up to batch_size entries (see
        // `Shared::note_pace`); otherwise a permit is an entry being
        // handled.
        let sequential = o.concurrency == 1;
        let permit_total = if sequential {
            o.batch_size
        } else {
            o.concurrency
        };
        let labels = [
            ("stream", self.stream.clone()),
            ("group", self.group.clone()),
        ];
        let shared = Arc::new(Shared {
            handler,
            conn: conn.clone(),
            stream: self.stream.as_str().into(),
            group: self.group.clone(),
            consumer: self.consumer.clone(),
            options: self.options.clone(),
            // Sequential: the read-ahead allowance starts at 1 and grows
            // with the handler's measured pace.
            permits: Arc::new(Semaphore::new(if sequential { 1 } else { permit_total })),
            permit_total,
            sequential,
            read_ahead: Mutex::new(ReadAhead {
                capacity: 1,
                target: 1,
                pace_ns: 0,
            }),
            in_flight: Arc::default(),
            retry_schedule: Mutex::default(),
            keyed: Mutex::new(HashMap::new()),
            acks: Mutex::default(),
            ack_ready: Notify::new(),
            handler_tasks: std::thread::available_parallelism().map_or(2, |n| n.get()),
            stats: Stats::default(),
            tasks: TaskTracker::new(),
            hard_stop: HardStop::default(),
            fence: self.fence.clone(),
            metrics: Metrics {
                delivered: metrics::counter!(m::DELIVERED, &labels),
                acked: metrics::counter!(m::ACKED, &labels),
                retried: metrics::counter!(m::RETRIED, &labels),
                reclaimed: metrics::counter!(m::RECLAIMED, &labels),
                dead_lettered: metrics::counter!(m::DEAD_LETTERED, &labels),
                handler_seconds: metrics::histogram!(m::HANDLER_SECONDS, &labels),
            },
        });
        info!(stream = %self.stream, group = %self.group, consumer = %self.consumer, "worker started");

        let flush_stop = CancellationToken::new();
        let flusher = tokio::spawn(shared.clone().ack_flusher(flush_stop.clone()));
        let mut on_drop = HardStopOnDrop {
            shared: Some(shared.clone()),
            flusher: flusher.abort_handle(),
        };
        shared.read_loop(&mut consumer, &shutdown).await;

        // Shutdown: no more reads or claims; let handlers finish within the grace.
        shared.tasks.close();
        let mut unfinished = 0;
        if tokio::time::timeout(o.shutdown_grace, shared.tasks.wait())
            .await
            .is_err()
        {
            unfinished = shared.in_flight.len() as u64;
            warn!(
                unfinished,
                "shutdown grace ran out; unfinished entries stay pending"
            );
            shared.hard_stop.cancel();
            shared.tasks.wait().await;
        }
        flush_stop.cancel();
        if let Err(e) = flusher.await {
            error!(error = %e, "ack flusher ended abnormally");
        }
        on_drop.disarm();
        let report = shared.stats.report(unfinished);
        info!(?report, "worker stopped");
        Ok(report)
    }
}

/// Makes [`Worker::run`] safe to drop: if its future is dropped before it
/// returns, the handler tasks are told to stop (`hard_stop`), the ack queue is
/// closed (so nothing acknowledges any more) and the flusher is aborted.
/// Reads sent ahead are aborted by their own handles.
struct HardStopOnDrop<H: Handler> {
    /// `None` once `run` finished normally.
    shared: Option<Arc<Shared<H>>>,
    flusher: AbortHandle,
}

impl<H: Handler> HardStopOnDrop<H> {
    fn disarm(&mut self) {
        self.shared = None;
    }
}

impl<H: Handler> Drop for HardStopOnDrop<H> {
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        warn!(stream = %shared.stream, "worker dropped without a shutdown; in-flight entries stay pending");
        shared.hard_stop.cancel();
        shared.close_acks();
        self.flusher.abort();
    }
}

struct Metrics {
    delivered: metrics::Counter,
    acked: metrics::Counter,
    retried: metrics::Counter,
    reclaimed: metrics::Counter,
    dead_lettered: metrics::Counter,
    handler_seconds: metrics::Histogram,
}

/// What the parts of one running worker share.
struct Shared<H> {
    handler: H,
    /// For XACK, XCLAIM, XPENDING and scripts; reads have their own connection.
    conn: Connection,
    stream: Arc<str>,
    group: String,
    consumer: String,
    options: WorkerOptions,
    /// One permit per entry read and not yet done with: being handled
    /// (bounded concurrency), or, with `sequential`, waiting its turn.
    permits: Arc<Semaphore>,
    /// The number of permits.
    permit_total: usize,
    /// Concurrency 1: every entry (read or reclaimed) runs in one queue, one
    /// at a time, in the order it came; reads fetch ahead of the handler.
    sequential: bool,
    /// With `sequential`: the size of `permits` and what it should be.
    read_ahead: Mutex<ReadAhead>,
    /// Entries this process handles right now, from dispatch until acknowledged,
    /// dead-lettered or handed back for retry. The reclaim loop never touches
    /// them. Each mark is held by a drop guard ([`dispatch::Mark`]).
    in_flight: Arc<InFlight>,
    /// Retry delays asked for by the handler, by entry; pruned by the reclaim scan.
    retry_schedule: Mutex<RetrySchedule>,
    /// With `ordered_by_key`: keys with an entry in progress, and what waits behind it.
    keyed: Mutex<HashMap<String, KeyQueue>>,
    /// Ids to acknowledge; unbounded, but fed only by handlers, whose number is
    /// bounded by the permits. Taken by the next read (sent in the same round
    /// trip) or, after `ack_flush_interval`, by the flusher, whichever comes first.
    acks: Mutex<AckQueue>,
    /// Woken when `acks` goes from empty to non-empty.
    ack_ready: Notify,
    /// Most tasks the entries of one read are spread over (the number of CPUs).
    handler_tasks: usize,
    stats: Stats,
    /// Handler and dead-letter tasks, waited for at shutdown.
    tasks: TaskTracker,
    /// Cancelled when the shutdown grace runs out, or `run` is dropped:
    /// unfinished handlers are dropped.
    hard_stop: HardStop,
    /// Leased partitions only: the owner lease. Once it is lost (its local
    /// deadline passed, or a renewal or fenced ack found it taken), nothing
    /// more is read, claimed, handled, dead-lettered or acknowledged here; the
    /// read loop ends and the worker stops. Checked locally (no round trip);
    /// acks are also fenced in Redis (`fenced_ack.lua`).
    fence: Option<Arc<Fence>>,
    metrics: Metrics,
}

impl<H> Shared<H> {
    /// Whether this worker has lost its partition's lease (never without one).
    fn fenced_out(&self) -> bool {
        self.fence.as_ref().is_some_and(|f| !f.holds())
    }
}

/// The read-ahead of a sequential worker (see `Shared::note_pace`).
struct ReadAhead {
    /// Permits the semaphore has now.
    capacity: usize,
    /// Permits it should have; extra ones are forgotten as they come back.
    target: usize,
    /// The handler's recent time per entry (an average), in nanoseconds; 0
    /// before the first.
    pace_ns: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent (single
    // inserts and removes), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A cancellation token whose `is_cancelled` is one atomic load:
/// `CancellationToken::is_cancelled` takes a mutex, and the worker asks once
/// per entry, from every handler task at once.
#[derive(Debug, Default)]
struct HardStop {
    cancelled: std::sync::atomic::AtomicBool,
    token: CancellationToken,
}

impl HardStop {
    fn cancel(&self) {
        self.cancelled
            .store(true, std::sync::atomic::Ordering::Release);
        self.token.cancel();
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(std::sync::atomic::Ordering::Acquire)
    }

    fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }
}
