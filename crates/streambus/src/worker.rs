//! The worker: runs a handler over a consumer group, and loses nothing.
//!
//! Guarantee: **at-least-once**. An entry leaves the group's pending list only by an
//! acknowledgement after its handler succeeded, or by an atomic move to the
//! dead-letter stream. A crash, a panic, a lost connection, a Redis restart or a
//! shutdown can cause a redelivery, never a loss (with Redis persistence on).
//!
//! What it does, per part:
//!
//! - **Reading**: a permit per in-flight entry (`concurrency`), taken *before*
//!   reading, so a read never fetches more than there is room for
//!   (`XREADGROUP COUNT <free permits>`), on a blocking connection of its own.
//! - **Handling**: the entries of one read are spread over at most one task per
//!   CPU, each running its entries concurrently; a panic is caught and counts
//!   as a failure with the panic message as the reason. With `ordered_by_key`,
//!   entries with the same envelope `key` run one at a time, in stream order.
//! - **Acknowledging**: in batches (many ids per XACK), sent in the same round
//!   trip as the next read, or by a flusher after `ack_flush_interval` (acks that
//!   complete while a read blocks), and on shutdown.
//! - **Reclaiming** ([`crate::claim`]): entries pending longer than the visibility
//!   timeout (dead consumers) or failed here and due by their backoff are claimed
//!   and handled again; after `max_deliveries` they are dead-lettered.
//! - **Faults**: a failed read is retried with exponential backoff and jitter; a
//!   missing group (`NOGROUP`, e.g. Redis restarted without persistence) is
//!   recreated from the beginning of the stream (duplicates possible, no loss).
//! - **Shutdown**: on the cancellation token, stop reading, let in-flight
//!   handlers finish within `shutdown_grace`, flush acknowledgements, return a
//!   [`WorkerReport`]. What did not finish stays pending for a later run or
//!   another consumer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::backoff::{Backoff, Jitter};
use crate::claim::{self, ClaimPolicy, Decision};
use crate::connection::{Client, Connection};
use crate::consumer::{self, Consumer, ConsumerOptions};
use crate::dead_letter::{self, MoveGuard, MoveRequest, MoveResult};
use crate::entry::Entry;
use crate::envelope::field;
use crate::error::{Error, ErrorKind, Result};
use crate::group;
use crate::handler::{Delivery, Handler, Outcome};
use crate::id::{EntryId, StartId};
use crate::keys;
use crate::metrics as m;

/// Settings of a [`Worker`]. Every knob is documented with its effect in the
/// README's "Tuning" section.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Entries handled at the same time.
    pub concurrency: usize,
    /// Most entries fetched by one read (never more than free `concurrency`).
    pub batch_size: usize,
    /// How long one read waits for new entries (XREADGROUP BLOCK).
    pub block: Duration,
    /// Acknowledgements are gathered for up to this long and sent in one XACK.
    pub ack_flush_interval: Duration,
    /// At most this many ids per XACK.
    pub ack_batch_size: usize,
    /// Entries held by another consumer are taken over after this much idle time.
    /// Must exceed the longest handler run, or live consumers lose entries to
    /// others (handled twice, not lost).
    pub visibility_timeout: Duration,
    /// How often pending entries are scanned for reclaim and retry.
    pub reclaim_interval: Duration,
    /// Deliveries after which a failing entry is dead-lettered.
    pub max_deliveries: u32,
    /// Delay before retrying a failed entry, by delivery count.
    pub retry_backoff: Backoff,
    /// Delay between attempts to reach Redis again after an error.
    pub reconnect_backoff: Backoff,
    /// On shutdown, how long in-flight handlers may still run.
    pub shutdown_grace: Duration,
    /// Handle entries with the same envelope `key` one at a time, in order.
    pub ordered_by_key: bool,
    /// Skip envelopes whose `id` this group already handled, remembering ids for
    /// this long (SET NX with a TTL). `None`: no guard.
    pub idempotency_ttl: Option<Duration>,
    /// Where the group starts if this worker creates it.
    pub start: StartId,
    /// Approximate maximum length of the dead-letter stream; `None` keeps all.
    pub dead_letter_maxlen: Option<u64>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            concurrency: 256,
            batch_size: 128,
            block: Duration::from_secs(2),
            ack_flush_interval: Duration::from_millis(2),
            ack_batch_size: 512,
            visibility_timeout: Duration::from_secs(30),
            reclaim_interval: Duration::from_secs(1),
            max_deliveries: 5,
            retry_backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
            // Capped at 2 s so that, with the default connection timeouts, a
            // worker works again within 10 s of the network healing (the
            // README's "Faults" section adds it up).
            reconnect_backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(2)),
            shutdown_grace: Duration::from_secs(30),
            ordered_by_key: false,
            idempotency_ttl: None,
            start: StartId::Beginning,
            dead_letter_maxlen: None,
        }
    }
}

/// What a worker did, returned when it stops.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Deliveries handed to the handler (first deliveries and redeliveries).
    pub delivered: u64,
    /// Entries acknowledged.
    pub acked: u64,
    /// Handler results that asked for a retry (failures and panics included).
    pub retried: u64,
    /// Of those, panics.
    pub panicked: u64,
    /// Entries claimed from the pending list (other consumers' or own failures).
    pub reclaimed: u64,
    /// Entries moved to the dead-letter stream.
    pub dead_lettered: u64,
    /// Envelopes skipped by the idempotency guard as already handled.
    pub duplicates_skipped: u64,
    /// Pending entries found deleted from the stream (trimmed) and acknowledged.
    pub gone: u64,
    /// Handlers still running when the shutdown grace ran out (left pending).
    pub unfinished: u64,
    /// Times the group had to be recreated.
    pub groups_recreated: u64,
}

impl WorkerReport {
    /// Adds another report's counts to this one (for workers run side by side).
    pub fn add(&mut self, other: &WorkerReport) {
        self.delivered += other.delivered;
        self.acked += other.acked;
        self.retried += other.retried;
        self.panicked += other.panicked;
        self.reclaimed += other.reclaimed;
        self.dead_lettered += other.dead_lettered;
        self.duplicates_skipped += other.duplicates_skipped;
        self.gone += other.gone;
        self.unfinished += other.unfinished;
        self.groups_recreated += other.groups_recreated;
    }
}

#[derive(Default)]
struct Stats {
    delivered: AtomicU64,
    acked: AtomicU64,
    retried: AtomicU64,
    panicked: AtomicU64,
    reclaimed: AtomicU64,
    dead_lettered: AtomicU64,
    duplicates_skipped: AtomicU64,
    gone: AtomicU64,
    groups_recreated: AtomicU64,
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
}

impl Worker {
    /// A worker for `group` on `stream`, named [`consumer::default_consumer_name`].
    pub fn new(
        client: Client,
        stream: impl Into<String>,
        group: impl Into<String>,
        options: WorkerOptions,
    ) -> Self {
        Worker {
            client,
            stream: stream.into(),
            group: group.into(),
            consumer: consumer::default_consumer_name(),
            options,
            preflight: true,
        }
    }

    /// Sets the consumer name. A worker restarted under the same name takes its
    /// own pending entries back at once, instead of after the visibility timeout.
    pub fn consumer_name(mut self, name: impl Into<String>) -> Self {
        self.consumer = name.into();
        self
    }

    /// Skips the check of the server's settings at start (done once by the
    /// owner of several workers).
    pub(crate) fn without_preflight(mut self) -> Self {
        self.preflight = false;
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
            crate::preflight::warn_about(&mut conn.clone()).await;
        }
        let mut consumer = Consumer::with_shared(
            &self.client,
            conn.clone(),
            &self.stream,
            &self.group,
            &self.consumer,
            ConsumerOptions {
                batch_size: o.batch_size,
                max_wait: o.block,
                start: o.start,
                create_group: true,
            },
        )
        .await?;
        // The reclaim loop takes own pending entries back, with delivery counts.
        consumer.skip_own_pending();

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
            permits: Arc::new(Semaphore::new(o.concurrency)),
            in_flight: Mutex::new(HashSet::new()),
            retry_not_before: Mutex::new(HashMap::new()),
            keyed: Mutex::new(HashMap::new()),
            acks: Mutex::new(AckQueue::default()),
            ack_ready: Notify::new(),
            handler_tasks: std::thread::available_parallelism().map_or(2, |n| n.get()),
            stats: Stats::default(),
            tasks: TaskTracker::new(),
            hard_stop: CancellationToken::new(),
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
        shared.read_loop(&mut consumer, &shutdown).await;

        // Shutdown: no more reads or claims; let handlers finish within the grace.
        shared.tasks.close();
        let mut unfinished = 0;
        if tokio::time::timeout(o.shutdown_grace, shared.tasks.wait())
            .await
            .is_err()
        {
            unfinished = lock(&shared.in_flight).len() as u64;
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
        let s = &shared.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let report = WorkerReport {
            delivered: get(&s.delivered),
            acked: get(&s.acked),
            retried: get(&s.retried),
            panicked: get(&s.panicked),
            reclaimed: get(&s.reclaimed),
            dead_lettered: get(&s.dead_lettered),
            duplicates_skipped: get(&s.duplicates_skipped),
            gone: get(&s.gone),
            unfinished,
            groups_recreated: get(&s.groups_recreated),
        };
        info!(?report, "worker stopped");
        Ok(report)
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

/// A read sent by the worker's read loop whose reply is not taken yet.
struct Ahead {
    read: tokio::task::JoinHandle<Result<Vec<Entry>>>,
    /// The acknowledgements sent with it.
    acks: Vec<EntryId>,
    permits: Vec<OwnedSemaphorePermit>,
    requested: usize,
}

/// Acknowledgements waiting to be sent.
#[derive(Default)]
struct AckQueue {
    ids: Vec<EntryId>,
    /// Set when the flusher has stopped: nothing will send what comes later.
    closed: bool,
}

/// Entries of one key waiting for the one before them to finish.
type KeyQueue = VecDeque<(Delivery, OwnedSemaphorePermit)>;

struct Shared<H> {
    handler: H,
    /// For XACK, XCLAIM, XPENDING and scripts; reads have their own connection.
    conn: Connection,
    stream: Arc<str>,
    group: String,
    consumer: String,
    options: WorkerOptions,
    /// One permit per entry being handled (bounded concurrency).
    permits: Arc<Semaphore>,
    /// Entries this process handles right now, from dispatch until acknowledged,
    /// dead-lettered or handed back for retry. The reclaim loop never touches them.
    in_flight: Mutex<HashSet<EntryId>>,
    /// Retry delays asked for by the handler, by entry.
    retry_not_before: Mutex<HashMap<EntryId, Instant>>,
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
    /// Handler tasks, waited for at shutdown.
    tasks: TaskTracker,
    /// Cancelled when the shutdown grace runs out: unfinished handlers are dropped.
    hard_stop: CancellationToken,
    metrics: Metrics,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent (single
    // inserts and removes), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<H: Handler> Shared<H> {
    /// Reads new entries and, every `reclaim_interval`, reclaims due pending ones,
    /// with the same permits: a read holds its permits while it blocks, so the
    /// reclaim pass runs between reads, and a read blocks no longer than until the
    /// next pass is due.
    ///
    /// While the stream has a backlog (the last read came back full), a second
    /// read is sent before the reply of the first is taken, when there are
    /// permits for it: Redis then serves the next batch while this process
    /// parses and dispatches the last one, instead of the two taking turns.
    async fn read_loop(self: &Arc<Self>, consumer: &mut Consumer, shutdown: &CancellationToken) {
        let o = &self.options;
        let policy = ClaimPolicy {
            visibility_timeout: o.visibility_timeout,
            backoff: o.retry_backoff,
            max_deliveries: o.max_deliveries,
        };
        let mut reclaim = ReclaimCursor {
            next_at: Instant::now(),
            from: None,
            first_pass: true,
        };
        let mut failures: u32 = 0;
        let mut jitter = Jitter::new();
        let mut acks: Vec<EntryId> = Vec::with_capacity(o.ack_batch_size);
        // A read sent and not yet taken, with its permits and the acks it carries.
        let mut ahead: Option<Ahead> = None;
        // The last read came back full: the stream most likely has more.
        let mut backlog = false;
        let half_batch = (o.batch_size.min(o.concurrency) / 2).max(1);
        // Reads sent ahead alternate between two connections, unless entries
        // must reach the handler in stream order (`ordered_by_key`): the
        // replies of two connections may be served in either order.
        let two_connections = !o.ordered_by_key;
        let mut on_shared = false;
        let flip = |on_shared: &mut bool| {
            *on_shared = two_connections && !*on_shared;
            *on_shared
        };
        loop {
            let (read, mut permits, requested) = if let Some(sent) = ahead.take() {
                if backlog && !shutdown.is_cancelled() && Instant::now() < reclaim.next_at {
                    let mut permits = Vec::new();
                    self.take_free_permits(&mut permits);
                    if permits.len() < half_batch {
                        tokio::task::yield_now().await;
                        self.take_free_permits(&mut permits);
                    }
                    if permits.len() >= half_batch {
                        ahead = Some(self.send_read(consumer, permits, flip(&mut on_shared)));
                    }
                }
                let read = sent.read.await.unwrap_or_else(|e| {
                    Err(Error::new(
                        ErrorKind::Redis,
                        format!("read task failed: {e}"),
                    ))
                });
                (
                    self.carried_acks(sent.acks, read),
                    sent.permits,
                    sent.requested,
                )
            } else {
                // Take permits before reading: never fetch more than there is room for.
                let first = tokio::select! {
                    // Shutdown first: a permit freed at the same moment must not
                    // start another read.
                    biased;
                    _ = shutdown.cancelled() => return,
                    p = self.permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                };
                let mut permits = vec![first];
                self.take_free_permits(&mut permits);
                if permits.len() < half_batch {
                    // Few permits free: the handlers of the last read are most
                    // likely about to finish (a quick handler takes microseconds, a
                    // read a round trip). Letting them run first makes this read
                    // fetch a batch instead of a few entries. Measured with a no-op
                    // handler, concurrency 32: see BENCHMARKS.md ("worker").
                    tokio::task::yield_now().await;
                    self.take_free_permits(&mut permits);
                }
                if Instant::now() >= reclaim.next_at {
                    self.reclaim_step(&policy, &mut reclaim, &mut permits).await;
                    if permits.is_empty() {
                        continue;
                    }
                }
                if shutdown.is_cancelled() {
                    return;
                }
                let requested = permits.len();
                if backlog {
                    // Likely more to read: no blocking read, and the next turn may
                    // send a second read before taking this one.
                    ahead = Some(self.send_read(consumer, permits, flip(&mut on_shared)));
                    continue;
                }
                let until_reclaim = reclaim.next_at.saturating_duration_since(Instant::now());
                let block = o.block.min(until_reclaim).max(Duration::from_millis(1));
                // A read that has started is not abandoned on shutdown: Redis may
                // already have delivered entries to it, which would then sit
                // pending under this name until reclaimed. It ends within `block`,
                // and what it brings is handled within the shutdown grace.
                //
                // Acknowledgements ready now go in the same round trip as a
                // non-blocking read (pipeline [XACK ids, XREADGROUP]); only when
                // that read finds nothing does a blocking read follow. Measured
                // together with `dispatch_read` and the per-read bookkeeping
                // (no-op handler, concurrency 32, ratio to redis-benchmark in the
                // same run, noisy 2-core machine): 0.19–0.34 before, 0.32–0.46
                // after (≈ +25–40% msg/s); concurrency 1 unchanged.
                // BENCHMARKS.md has the runs.
                self.take_acks(&mut acks);
                let read = if acks.is_empty() {
                    consumer.read(requested, Some(block)).await
                } else {
                    let read = consumer.ack_then_read(&acks, requested).await;
                    match self.carried_acks(std::mem::take(&mut acks), read) {
                        Ok(entries) if entries.is_empty() && !shutdown.is_cancelled() => {
                            consumer.read(requested, Some(block)).await
                        }
                        other => other,
                    }
                };
                (read, permits, requested)
            };
            backlog = false;
            match read {
                Ok(entries) => {
                    failures = 0;
                    backlog = entries.len() >= requested;
                    self.dispatch_read(entries, &mut permits);
                }
                Err(e) if e.kind() == ErrorKind::NoGroup => {
                    warn!(stream = %self.stream, group = %self.group, "group or stream vanished (Redis restarted without persistence?); recreating it from the beginning of the stream");
                    let mut conn = self.conn.clone();
                    match group::create_group(
                        &mut conn,
                        &self.stream,
                        &self.group,
                        StartId::Beginning,
                    )
                    .await
                    {
                        Ok(_) => bump(&self.stats.groups_recreated, 1),
                        Err(e) => {
                            failures += 1;
                            warn!(error = %e, "cannot recreate the group");
                            if ahead.is_none() && !self.pause(failures, &mut jitter, shutdown).await
                            {
                                return;
                            }
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, attempt = failures, "read failed; retrying");
                    // With a read still under way, take its reply first (it
                    // may carry entries); the pause comes after it.
                    if ahead.is_none() && !self.pause(failures, &mut jitter, shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// Moves the queued acknowledgements (up to `ack_batch_size`) into `acks`.
    fn take_acks(&self, acks: &mut Vec<EntryId>) {
        let mut q = lock(&self.acks);
        std::mem::swap(acks, &mut q.ids);
        if acks.len() > self.options.ack_batch_size {
            q.ids.extend(acks.drain(self.options.ack_batch_size..));
        }
    }

    /// After a read that carried acknowledgements: on success they are done;
    /// on an error they may or may not have been applied, so the flusher sends
    /// them again (XACK is idempotent) and handles its own errors.
    fn carried_acks(&self, acks: Vec<EntryId>, read: Result<Vec<Entry>>) -> Result<Vec<Entry>> {
        if !acks.is_empty() {
            if read.is_ok() {
                self.acked(acks.into_iter());
            } else {
                self.queue_acks(acks);
            }
        }
        read
    }

    /// Sends a non-blocking read for `permits.len()` new entries, with the
    /// acknowledgements queued now, without waiting for its reply.
    ///
    /// The read runs in a task of its own, so that it is sent now and not when
    /// its reply is awaited. With `on_shared` it goes on the shared connection
    /// instead of the consumer's read connection: each connection has its own
    /// reply parser (redis-rs's, ≈38% of the worker's CPU in a profile), so
    /// two reads under way on two connections are parsed on both cores.
    fn send_read(
        &self,
        consumer: &Consumer,
        permits: Vec<OwnedSemaphorePermit>,
        on_shared: bool,
    ) -> Ahead {
        let mut acks = Vec::new();
        self.take_acks(&mut acks);
        let requested = permits.len();
        let reader = consumer.reader(on_shared);
        let carried = acks.clone();
        let read = tokio::spawn(async move { reader.ack_then_read(&carried, requested).await });
        Ahead {
            read,
            acks,
            permits,
            requested,
        }
    }

    /// Adds free permits without waiting, up to `batch_size` in all.
    fn take_free_permits(&self, permits: &mut Vec<OwnedSemaphorePermit>) {
        while permits.len() < self.options.batch_size {
            match self.permits.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
    }

    /// One reclaim page; schedules the next one (at once while the pending list
    /// has more pages, else after `reclaim_interval`).
    async fn reclaim_step(
        self: &Arc<Self>,
        policy: &ClaimPolicy,
        cursor: &mut ReclaimCursor,
        permits: &mut Vec<OwnedSemaphorePermit>,
    ) {
        let page_size = (self.options.batch_size * 2).max(64);
        match self
            .reclaim_page(policy, cursor.from, page_size, cursor.first_pass, permits)
            .await
        {
            Ok(Some(last)) => cursor.from = Some(last.next()),
            Ok(None) => {
                cursor.from = None;
                cursor.first_pass = false;
            }
            Err(e) => {
                // NOGROUP is handled by the read that follows; anything else is
                // retried by the next pass.
                debug!(error = %e, "reclaim scan failed");
                cursor.from = None;
            }
        }
        cursor.next_at = if cursor.from.is_some() && !permits.is_empty() {
            Instant::now()
        } else {
            Instant::now() + self.options.reclaim_interval
        };
    }

    /// Sleeps the reconnect backoff; false if shut down meanwhile.
    async fn pause(&self, attempt: u32, jitter: &mut Jitter, shutdown: &CancellationToken) -> bool {
        let delay = self
            .options
            .reconnect_backoff
            .delay_with_jitter(attempt, jitter.next_unit());
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = shutdown.cancelled() => false,
        }
    }

    /// Starts handling a delivery, unless it is already being handled here.
    fn dispatch(self: &Arc<Self>, d: Delivery, permit: OwnedSemaphorePermit) {
        if !lock(&self.in_flight).insert(d.entry.id) {
            return;
        }
        bump(&self.stats.delivered, 1);
        self.metrics.delivered.increment(1);
        if self.options.ordered_by_key {
            if let Some(key) = d.entry.fields.get_str(field::KEY).map(str::to_owned) {
                {
                    let mut keyed = lock(&self.keyed);
                    if let Some(queue) = keyed.get_mut(&key) {
                        queue.push_back((d, permit));
                        return;
                    }
                    keyed.insert(key.clone(), VecDeque::new());
                }
                let this = self.clone();
                self.tasks
                    .spawn(async move { this.run_key(key, d, permit).await });
                return;
            }
        }
        let this = self.clone();
        self.tasks.spawn(async move {
            this.process(d).await;
            drop(permit);
        });
    }

    /// Starts handling the new entries of one read: one `in_flight` lock for the
    /// whole read, and the entries spread over at most `handler_tasks` tasks,
    /// each running its entries concurrently (`FuturesUnordered`), instead of a
    /// task per entry. Part of the combined +25–40% above (see the read loop);
    /// one task per read vs one per CPU (2 here) measured the same within noise,
    /// so CPU-bound handlers keep using every core.
    fn dispatch_read(
        self: &Arc<Self>,
        entries: Vec<Entry>,
        permits: &mut Vec<OwnedSemaphorePermit>,
    ) {
        if self.options.ordered_by_key {
            for entry in entries {
                let Some(permit) = permits.pop() else { break };
                self.dispatch(
                    Delivery {
                        entry,
                        deliveries: 1,
                    },
                    permit,
                );
            }
            return;
        }
        let mut batch = Vec::with_capacity(entries.len());
        {
            let mut in_flight = lock(&self.in_flight);
            for entry in entries {
                let Some(permit) = permits.pop() else { break };
                if in_flight.insert(entry.id) {
                    batch.push((
                        Delivery {
                            entry,
                            deliveries: 1,
                        },
                        permit,
                    ));
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        bump(&self.stats.delivered, n as u64);
        self.metrics.delivered.increment(n as u64);
        let per_task = n.div_ceil(self.handler_tasks.clamp(1, n));
        let mut rest = batch.into_iter();
        loop {
            let chunk: Vec<_> = rest.by_ref().take(per_task).collect();
            if chunk.is_empty() {
                break;
            }
            let this = self.clone();
            self.tasks.spawn(async move { this.run_chunk(chunk).await });
        }
    }

    /// Runs the handler on several deliveries at once, in this one task; each
    /// permit is released as soon as its entry is done.
    async fn run_chunk(self: Arc<Self>, chunk: Vec<(Delivery, OwnedSemaphorePermit)>) {
        let this = &self;
        let mut running: FuturesUnordered<_> = chunk
            .into_iter()
            .map(|(d, permit)| async move {
                this.process(d).await;
                drop(permit);
            })
            .collect();
        while running.next().await.is_some() {}
    }

    /// Handles the entries of one key one after another.
    async fn run_key(
        self: Arc<Self>,
        key: String,
        mut d: Delivery,
        mut permit: OwnedSemaphorePermit,
    ) {
        loop {
            self.process(d).await;
            drop(permit);
            let next = {
                let mut keyed = lock(&self.keyed);
                match keyed.get_mut(&key).and_then(VecDeque::pop_front) {
                    Some(next) => Some(next),
                    None => {
                        keyed.remove(&key);
                        None
                    }
                }
            };
            match next {
                Some((nd, np)) => {
                    d = nd;
                    permit = np;
                }
                None => return,
            }
        }
    }

    /// Runs the handler on one delivery and carries out its outcome.
    async fn process(&self, d: Delivery) {
        let id = d.entry.id;
        let deliveries = d.deliveries;
        if d.entry.fields.is_empty() {
            // The entry was deleted from the stream (trimmed) while pending: its
            // data is gone, nothing can process it. Acknowledge so it stops
            // counting as pending; the README's retention section says when this
            // can happen.
            warn!(stream = %self.stream, %id, "pending entry no longer exists in the stream (trimmed?); acknowledging it");
            bump(&self.stats.gone, 1);
            self.ack(id);
            return;
        }
        let guard_key = self.idempotency_key(&d.entry);
        if let Some(key) = &guard_key {
            let mut conn = self.conn.clone();
            let seen: std::result::Result<bool, _> =
                redis::cmd("EXISTS").arg(key).query_async(&mut conn).await;
            if let Ok(true) = seen {
                debug!(%id, "already handled by this group; skipping");
                bump(&self.stats.duplicates_skipped, 1);
                self.ack(id);
                return;
            }
        }
        let started = Instant::now();
        let run = AssertUnwindSafe(self.handler.handle(d)).catch_unwind();
        let result = tokio::select! {
            r = run => r,
            _ = self.hard_stop.cancelled() => {
                // Left pending: a later run or another consumer takes it.
                lock(&self.in_flight).remove(&id);
                return;
            }
        };
        self.metrics
            .handler_seconds
            .record(started.elapsed().as_secs_f64());
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(panic) => {
                bump(&self.stats.panicked, 1);
                let msg = panic_message(&*panic);
                error!(%id, panic = %msg, "handler panicked");
                Outcome::retry(format!("handler panicked: {msg}"))
            }
        };
        match outcome {
            Outcome::Ack => {
                if let (Some(key), Some(ttl)) = (guard_key, self.options.idempotency_ttl) {
                    let mut conn = self.conn.clone();
                    let set: std::result::Result<(), _> = redis::cmd("SET")
                        .arg(&key)
                        .arg(1)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl.as_millis() as u64)
                        .query_async(&mut conn)
                        .await;
                    if let Err(e) = set {
                        // The ack still happens; at worst a later duplicate is handled.
                        warn!(%id, error = %e, "cannot record the idempotency marker");
                    }
                }
                self.ack(id);
            }
            Outcome::Retry { delay, reason } => {
                bump(&self.stats.retried, 1);
                self.metrics.retried.increment(1);
                if deliveries >= self.options.max_deliveries {
                    let reason =
                        format!("failed {deliveries} times (max_deliveries); last error: {reason}");
                    self.dead_letter(id, &reason, MoveGuard::Owner).await;
                } else {
                    debug!(%id, deliveries, %reason, "handler failed; will retry");
                    if let Some(delay) = delay {
                        lock(&self.retry_not_before).insert(id, Instant::now() + delay);
                    }
                    lock(&self.in_flight).remove(&id);
                }
            }
            Outcome::DeadLetter { reason } => {
                self.dead_letter(id, &reason, MoveGuard::Owner).await;
            }
        }
    }

    fn idempotency_key(&self, entry: &Entry) -> Option<String> {
        self.options.idempotency_ttl?;
        let envelope_id = entry.fields.get_str(field::ID)?;
        entry.fields.get(field::DATA)?;
        Some(keys::idempotency(&self.stream, &self.group, envelope_id))
    }

    fn ack(&self, id: EntryId) {
        self.queue_acks(std::iter::once(id));
    }

    /// Queues ids for the next XACK (sent with the next read, or by the flusher).
    fn queue_acks(&self, ids: impl IntoIterator<Item = EntryId>) {
        let mut q = lock(&self.acks);
        if q.closed {
            // Only after the flusher stopped, which happens after every handler
            // finished: the entries stay pending and are redelivered.
            drop(q);
            let mut in_flight = lock(&self.in_flight);
            for id in ids {
                in_flight.remove(&id);
            }
            return;
        }
        let was_empty = q.ids.is_empty();
        q.ids.extend(ids);
        let wake = was_empty && !q.ids.is_empty();
        drop(q);
        if wake {
            self.ack_ready.notify_one();
        }
    }

    /// Bookkeeping after a successful XACK: one lock per batch.
    fn acked(&self, ids: impl ExactSizeIterator<Item = EntryId>) {
        let n = ids.len() as u64;
        bump(&self.stats.acked, n);
        self.metrics.acked.increment(n);
        let mut in_flight = lock(&self.in_flight);
        let mut delays = lock(&self.retry_not_before);
        for id in ids {
            in_flight.remove(&id);
            if !delays.is_empty() {
                delays.remove(&id);
            }
        }
    }

    /// Moves an entry to the dead-letter stream, retrying while Redis is unreachable.
    async fn dead_letter(&self, id: EntryId, reason: &str, guard: MoveGuard) {
        let mut conn = self.conn.clone();
        let mut jitter = Jitter::new();
        let mut attempt = 0;
        loop {
            let request = MoveRequest {
                stream: &self.stream,
                group: &self.group,
                consumer: &self.consumer,
                id,
                reason,
                guard,
                maxlen: self.options.dead_letter_maxlen,
            };
            let r = dead_letter::move_entry(&mut conn, request).await;
            match r {
                Ok(MoveResult::Moved) => {
                    warn!(stream = %self.stream, %id, %reason, "dead-lettered");
                    bump(&self.stats.dead_lettered, 1);
                    self.metrics.dead_lettered.increment(1);
                    break;
                }
                Ok(other) => {
                    debug!(%id, result = ?other, "dead-letter move not needed");
                    break;
                }
                Err(e) if e.is_retryable() && attempt < 20 && !self.hard_stop.is_cancelled() => {
                    attempt += 1;
                    let delay = self
                        .options
                        .reconnect_backoff
                        .delay_with_jitter(attempt, jitter.next_unit());
                    warn!(%id, error = %e, "dead-letter move failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    // Still pending: the reclaim loop will try again.
                    error!(%id, error = %e, "cannot dead-letter entry; it stays pending");
                    break;
                }
            }
        }
        lock(&self.in_flight).remove(&id);
        lock(&self.retry_not_before).remove(&id);
    }

    /// Sends the acknowledgements that the read loop does not take with its next
    /// read (e.g. those that complete while a read blocks), in batches gathered
    /// for up to `ack_flush_interval`.
    async fn ack_flusher(self: Arc<Self>, stop: CancellationToken) {
        let o = &self.options;
        let mut batch: Vec<EntryId> = Vec::with_capacity(o.ack_batch_size);
        let mut jitter = Jitter::new();
        loop {
            let mut stopping = tokio::select! {
                _ = self.ack_ready.notified() => false,
                _ = stop.cancelled() => true,
            };
            if !stopping
                && !o.ack_flush_interval.is_zero()
                && lock(&self.acks).ids.len() < o.ack_batch_size
            {
                // Gather what else completes within the flush interval. The
                // read loop may take them meanwhile, with its next read.
                stopping = tokio::select! {
                    _ = tokio::time::sleep(o.ack_flush_interval) => false,
                    _ = stop.cancelled() => true,
                };
            }
            {
                let mut q = lock(&self.acks);
                if stopping {
                    q.closed = true;
                }
                std::mem::swap(&mut batch, &mut q.ids);
            }
            self.send_acks(&mut batch, stopping, &mut jitter).await;
            if stopping {
                return;
            }
        }
    }

    /// XACK `ids` on the shared connection, `ack_batch_size` at a time, retrying
    /// while Redis is unreachable; empties `ids`.
    async fn send_acks(&self, ids: &mut Vec<EntryId>, stopping: bool, jitter: &mut Jitter) {
        let o = &self.options;
        let mut attempt = 0;
        while !ids.is_empty() {
            let n = ids.len().min(o.ack_batch_size.max(1));
            let mut conn = self.conn.clone();
            match consumer::ack(&mut conn, &self.stream, &self.group, &ids[..n]).await {
                Ok(_) => self.acked(ids.drain(..n)),
                Err(e) if e.is_retryable() && (!stopping || attempt < 10) => {
                    attempt += 1;
                    let delay = o
                        .reconnect_backoff
                        .delay_with_jitter(attempt, jitter.next_unit());
                    warn!(error = %e, ids = n, "acknowledgement failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    // NOGROUP (the group was recreated: these will be delivered
                    // again) or Redis gone for good at shutdown: they stay pending.
                    warn!(error = %e, ids = n, "cannot acknowledge; the entries stay pending and will be redelivered");
                    let mut in_flight = lock(&self.in_flight);
                    for id in ids.drain(..n) {
                        in_flight.remove(&id);
                    }
                }
            }
        }
    }

    /// One page of the pending list; returns the last id seen if the page was
    /// full (there may be more), `None` at the end.
    async fn reclaim_page(
        self: &Arc<Self>,
        policy: &ClaimPolicy,
        cursor: Option<EntryId>,
        page_size: usize,
        first_pass: bool,
        permits: &mut Vec<OwnedSemaphorePermit>,
    ) -> Result<Option<EntryId>> {
        let o = &self.options;
        let min_scan = if first_pass {
            Duration::ZERO
        } else {
            o.retry_backoff.delay(1).min(o.visibility_timeout)
        };
        let mut conn = self.conn.clone();
        let page = claim::pending_page(
            &mut conn,
            &self.stream,
            &self.group,
            min_scan,
            cursor,
            page_size,
        )
        .await?;
        let full = page.len() >= page_size;
        let last = page.last().map(|p| p.id);
        let now = Instant::now();
        let mut to_claim: Vec<(Duration, EntryId, u32)> = Vec::new();
        for p in &page {
            let mine = p.consumer == self.consumer;
            let in_flight = lock(&self.in_flight).contains(&p.id);
            let delay = lock(&self.retry_not_before)
                .get(&p.id)
                .map(|t| t.saturating_duration_since(now) + p.idle);
            match claim::decide(p, policy, mine, in_flight, delay, first_pass) {
                Decision::Skip => {}
                Decision::Claim { min_idle } => to_claim.push((min_idle, p.id, p.deliveries)),
                Decision::DeadLetter { min_idle } => {
                    if !lock(&self.in_flight).insert(p.id) {
                        continue;
                    }
                    let reason = format!(
                        "delivered {} times without success (max_deliveries {}); last held by {}",
                        p.deliveries, o.max_deliveries, p.consumer
                    );
                    self.dead_letter(p.id, &reason, MoveGuard::IdleAtLeast(min_idle))
                        .await;
                }
            }
        }
        // Claim only as many as there are permits for; the rest stay due.
        let mut by_idle: HashMap<Duration, Vec<(EntryId, u32, OwnedSemaphorePermit)>> =
            HashMap::new();
        for (min_idle, id, deliveries) in to_claim {
            let Some(permit) = permits.pop() else {
                break;
            };
            by_idle
                .entry(min_idle)
                .or_default()
                .push((id, deliveries, permit));
        }
        for (min_idle, items) in by_idle {
            let ids: Vec<EntryId> = items.iter().map(|(id, _, _)| *id).collect();
            let claimed = claim::claim(
                &mut conn,
                &self.stream,
                &self.group,
                &self.consumer,
                min_idle,
                &ids,
            )
            .await?;
            let mut items: HashMap<EntryId, (u32, OwnedSemaphorePermit)> =
                items.into_iter().map(|(id, d, p)| (id, (d, p))).collect();
            bump(&self.stats.reclaimed, claimed.len() as u64);
            self.metrics.reclaimed.increment(claimed.len() as u64);
            for entry in claimed {
                if let Some((deliveries, permit)) = items.remove(&entry.id) {
                    lock(&self.retry_not_before).remove(&entry.id);
                    self.dispatch(
                        Delivery {
                            entry,
                            deliveries: deliveries.saturating_add(1),
                        },
                        permit,
                    );
                }
            }
        }
        Ok(if full { last } else { None })
    }
}

/// Where the reclaim scan is in the pending list, and when it runs next.
struct ReclaimCursor {
    next_at: Instant,
    /// Next page starts here; `None`: from the start.
    from: Option<EntryId>,
    /// The first full scan after start: own entries are left over from a previous
    /// run and due at once.
    first_pass: bool,
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
