//! Handling: concurrency (a permit per entry), keyed order, panics, and the
//! in-flight marks, each held by a drop guard so that nothing (a panic, a
//! dropped task) can leave an entry marked or a key's slot taken for good.

use std::collections::{HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::{debug, error, warn};

use super::idempotency::{self, Acquired};
use super::{bump, lock, Shared};
use crate::admin::dead_letter::MoveGuard;
use crate::entry::Entry;
use crate::envelope::field;
use crate::handler::{Delivery, Handler, Outcome};
use crate::id::EntryId;

/// The entries this process handles right now (see `Shared::in_flight`).
#[derive(Debug, Default)]
pub(super) struct InFlight(Mutex<HashSet<EntryId>>);

impl InFlight {
    pub(super) fn lock(&self) -> MutexGuard<'_, HashSet<EntryId>> {
        lock(&self.0)
    }

    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Marks `id` as in flight; `None` if it already is.
    pub(super) fn mark(self: &Arc<Self>, id: EntryId) -> Option<Mark> {
        self.lock().insert(id).then(|| Mark::taken(self, id))
    }

    /// Clears the marks of `ids` (whose guards were handed on).
    pub(super) fn clear(&self, ids: impl IntoIterator<Item = EntryId>) {
        let mut set = self.lock();
        for id in ids {
            set.remove(&id);
        }
    }
}

/// The guard of one in-flight mark: dropping it clears the mark, unless it was
/// handed on to the acknowledgement ([`Mark::hand_to_ack`]), which clears it
/// once the XACK is done.
#[derive(Debug)]
pub(super) struct Mark {
    set: Arc<InFlight>,
    id: EntryId,
    armed: bool,
}

impl Mark {
    /// The guard of a mark the caller has just inserted (under a lock it holds).
    pub(super) fn taken(set: &Arc<InFlight>, id: EntryId) -> Mark {
        Mark {
            set: set.clone(),
            id,
            armed: true,
        }
    }

    pub(super) fn id(&self) -> EntryId {
        self.id
    }

    /// Passes the mark to the ack queue; returns the id to acknowledge.
    pub(super) fn hand_to_ack(mut self) -> EntryId {
        self.armed = false;
        self.id
    }
}

impl Drop for Mark {
    fn drop(&mut self) {
        if self.armed {
            self.set.lock().remove(&self.id);
        }
    }
}

/// One delivery on its way through the handler, with what it holds.
#[derive(Debug)]
pub(super) struct Job {
    pub(super) delivery: Delivery,
    /// Released when the job is done (or dropped).
    pub(super) permit: OwnedSemaphorePermit,
    pub(super) mark: Mark,
}

/// Entries of one key waiting for the one before them to finish.
pub(super) type KeyQueue = VecDeque<Job>;

/// The slot of one key in `Shared::keyed`, held by the task that runs the
/// key's entries. Dropped before the queue is empty (a panic, an aborted
/// task), it frees the slot and drops what waits: their marks clear, and they
/// stay pending for a redelivery.
struct KeySlot<'a> {
    keyed: &'a Mutex<std::collections::HashMap<String, KeyQueue>>,
    /// `None` once the slot was given up normally.
    key: Option<String>,
}

impl KeySlot<'_> {
    /// The next job of this key, or `None` (and the slot freed) if none waits.
    fn next(&mut self) -> Option<Job> {
        let key = self.key.as_ref()?;
        let mut keyed = lock(self.keyed);
        let next = keyed.get_mut(key).and_then(VecDeque::pop_front);
        if next.is_none() {
            keyed.remove(key);
            self.key = None;
        }
        next
    }
}

impl Drop for KeySlot<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let waiting = lock(self.keyed).remove(&key);
            // Dropped outside the lock: each job's mark takes the in-flight lock.
            drop(waiting);
        }
    }
}

impl<H: Handler> Shared<H> {
    /// Starts handling a delivery, unless it is already being handled here.
    pub(super) fn dispatch(self: &Arc<Self>, delivery: Delivery, permit: OwnedSemaphorePermit) {
        let Some(mark) = self.in_flight.mark(delivery.entry.id) else {
            return;
        };
        bump(&self.stats.delivered, 1);
        self.metrics.delivered.increment(1);
        let job = Job {
            delivery,
            permit,
            mark,
        };
        // Sequential: one queue for all (the empty key); by key: one per key.
        let key = if self.sequential {
            Some(String::new())
        } else if self.options.ordered_by_key {
            job.delivery
                .entry
                .fields
                .get_str(field::KEY)
                .map(str::to_owned)
        } else {
            None
        };
        if let Some(key) = key {
            {
                let mut keyed = lock(&self.keyed);
                if let Some(queue) = keyed.get_mut(&key) {
                    queue.push_back(job);
                    return;
                }
                keyed.insert(key.clone(), VecDeque::new());
            }
            let this = self.clone();
            self.tasks
                .spawn(async move { this.run_key(key, job).await });
            return;
        }
        let this = self.clone();
        self.tasks.spawn(async move { this.process(job).await });
    }

    /// Starts handling the new entries of one read: one `in_flight` lock for the
    /// whole read, and the entries spread over at most `handler_tasks` tasks,
    /// each running its entries concurrently (`FuturesUnordered`), instead of a
    /// task per entry. Part of the combined +25–40% of the read loop's
    /// pipelining (see `read`); one task per read vs one per CPU (2 here)
    /// measured the same within noise, so CPU-bound handlers keep using every
    /// core.
    pub(super) fn dispatch_read(
        self: &Arc<Self>,
        entries: Vec<Entry>,
        permits: &mut Vec<OwnedSemaphorePermit>,
    ) {
        debug_assert!(
            entries.len() <= permits.len(),
            "a read brought {} entries for {} permits",
            entries.len(),
            permits.len()
        );
        if self.options.ordered_by_key || self.sequential {
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
            let mut in_flight = self.in_flight.lock();
            for entry in entries {
                let Some(permit) = permits.pop() else { break };
                if in_flight.insert(entry.id) {
                    let mark = Mark::taken(&self.in_flight, entry.id);
                    batch.push(Job {
                        delivery: Delivery {
                            entry,
                            deliveries: 1,
                        },
                        permit,
                        mark,
                    });
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
            let chunk: Vec<Job> = rest.by_ref().take(per_task).collect();
            if chunk.is_empty() {
                break;
            }
            let this = self.clone();
            self.tasks.spawn(async move { this.run_chunk(chunk).await });
        }
    }

    /// Runs the handler on several deliveries at once, in this one task; each
    /// permit is released as soon as its entry is done.
    async fn run_chunk(self: Arc<Self>, chunk: Vec<Job>) {
        let this = &self;
        let mut running: FuturesUnordered<_> =
            chunk.into_iter().map(|job| this.process(job)).collect();
        while running.next().await.is_some() {}
    }

    /// Handles the entries of one key one after another.
    async fn run_key(self: Arc<Self>, key: String, mut job: Job) {
        let mut slot = KeySlot {
            keyed: &self.keyed,
            key: Some(key),
        };
        loop {
            self.process(job).await;
            match slot.next() {
                Some(next) => job = next,
                None => return,
            }
        }
    }

    /// Runs the handler on one delivery and carries out its outcome. The
    /// permit is released, and the mark cleared or handed on, when it returns.
    async fn process(&self, job: Job) {
        let Job {
            delivery: d,
            permit: _permit,
            mark,
        } = job;
        if self.hard_stop.is_cancelled() || self.fenced_out() {
            // `run` was dropped, or the grace ran out, or (leased) the
            // partition's lease is lost: left pending, for a later run or the
            // new owner. Checked right before the handler, locally.
            return;
        }
        let id = d.entry.id;
        let deliveries = d.deliveries;
        if d.entry.fields.is_empty() {
            // The entry was deleted from the stream (trimmed) while pending: its
            // data is gone, nothing can process it. Acknowledge so it stops
            // counting as pending; the README's retention section says when this
            // can happen.
            warn!(stream = %self.stream, %id, "pending entry no longer exists in the stream (trimmed?); acknowledging it");
            bump(&self.stats.gone, 1);
            self.ack(mark);
            return;
        }
        let lease = match self.idempotency_key(&d.entry) {
            None => None,
            Some(key) => {
                let token = idempotency::token(&self.consumer, id);
                let lease_for = self.options.visibility_timeout;
                match idempotency::acquire(&self.conn, key, token, lease_for).await {
                    Ok(Acquired::Held(lease)) => Some(lease),
                    Ok(Acquired::Done) => {
                        debug!(%id, "already handled by this group; skipping");
                        bump(&self.stats.duplicates_skipped, 1);
                        self.ack(mark);
                        return;
                    }
                    Ok(Acquired::Busy) => {
                        // Another delivery of this envelope runs now: leave this
                        // copy pending; the reclaim scan retries it after the
                        // backoff, and acknowledges it then if that one succeeded.
                        debug!(%id, "a copy of this envelope is being handled; retrying later");
                        bump(&self.stats.duplicates_deferred, 1);
                        return;
                    }
                    Err(e) => {
                        // Not handled without the guard that was asked for: two
                        // copies could then run at once. Left pending, it is
                        // retried after the backoff like a failure (and, if the
                        // guard stays refused, e.g. NOPERM, dead-lettered after
                        // max_deliveries with this reason in the log).
                        warn!(%id, error = %e, "cannot take the idempotency lease; leaving the entry pending to retry it");
                        bump(&self.stats.retried, 1);
                        return;
                    }
                }
            }
        };
        if self.fenced_out() {
            // Lost while taking the idempotency lease: not handled here.
            self.release(lease, id).await;
            return;
        }
        let started = Instant::now();
        // The handler is called *inside* the guarded future: a closure may
        // panic before it returns its future.
        let handler = &self.handler;
        let mut run =
            std::pin::pin!(AssertUnwindSafe(async move { handler.handle(d).await }).catch_unwind());
        // A handler that finishes without waiting (most do: parse, filter,
        // count) is done at its first poll, without registering with the hard
        // stop (a lock and a waiter per entry; ≈3% of the worker's CPU).
        let first = futures_util::poll!(run.as_mut());
        let result = match first {
            // Stopped meanwhile: no handler result is used after the hard stop.
            std::task::Poll::Ready(_) if self.hard_stop.is_cancelled() => return,
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => tokio::select! {
                // The hard stop first: after it, no handler result is used.
                biased;
                _ = self.hard_stop.cancelled() => {
                    // Left pending: a later run or another consumer takes it.
                    // The lease (if any) expires with the visibility timeout,
                    // when the entry can be reclaimed; a restart under this
                    // name takes both back at once.
                    return;
                }
                r = run => r,
            },
        };
        let took = started.elapsed();
        self.metrics.handler_seconds.record(took.as_secs_f64());
        if self.sequential {
            self.note_pace(took);
        }
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
                if let (Some(lease), Some(ttl)) = (lease, self.options.idempotency_ttl) {
                    if let Err(e) = lease.done(&self.conn, ttl).await {
                        // The ack still happens; at worst a later duplicate is handled.
                        warn!(%id, error = %e, "cannot record the idempotency marker");
                    }
                }
                self.ack(mark);
            }
            Outcome::Retry { delay, reason } => {
                bump(&self.stats.retried, 1);
                self.metrics.retried.increment(1);
                self.release(lease, id).await;
                if deliveries >= self.options.max_deliveries {
                    let reason =
                        format!("failed {deliveries} times (max_deliveries); last error: {reason}");
                    self.dead_letter(mark, &reason, MoveGuard::Owner).await;
                } else {
                    debug!(%id, deliveries, %reason, "handler failed; will retry");
                    if let Some(delay) = delay {
                        let now = Instant::now();
                        lock(&self.retry_schedule).set(id, now + delay, now);
                    }
                    // Cleared after the schedule is set: the reclaim scan must
                    // not see it unmarked and without its delay.
                    drop(mark);
                }
            }
            Outcome::DeadLetter { reason } => {
                self.release(lease, id).await;
                self.dead_letter(mark, &reason, MoveGuard::Owner).await;
            }
        }
    }

    /// Gives the idempotency lease back after a failure, so that a copy (or a
    /// retry) may run.
    async fn release(&self, lease: Option<idempotency::Lease>, id: EntryId) {
        if let Some(lease) = lease {
            if let Err(e) = lease.release(&self.conn).await {
                // The lease expires by itself after the visibility timeout.
                warn!(%id, error = %e, "cannot release the idempotency lease");
            }
        }
    }

    fn idempotency_key(&self, entry: &Entry) -> Option<String> {
        self.options.idempotency_ttl?;
        let envelope_id = entry.fields.get_str(field::ID)?;
        entry.fields.get(field::DATA)?;
        Some(crate::keys::idempotency(
            &self.stream,
            &self.group,
            envelope_id,
        ))
    }
}

pub(super) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
