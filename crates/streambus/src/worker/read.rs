//! The read loop: permits first, then a read of at most that many entries;
//! with a backlog, the next read is sent before the last one's reply is taken
//! (read-ahead). The periodic duties (`maintenance`) run between reads.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::warn;

use super::maintenance::ReclaimCursor;
use super::{bump, lock, Shared};
use crate::admin::group;
use crate::backoff::Jitter;
use crate::claim::ClaimPolicy;
use crate::consumer::Consumer;
use crate::entry::Entry;
use crate::error::{Error, ErrorKind, Result};
use crate::handler::Handler;
use crate::id::{EntryId, StartId};

/// A read sent by the worker's read loop whose reply is not taken yet.
struct Ahead {
    /// Aborted if dropped untaken (`run` dropped): its entries stay pending.
    read: AbortOnDropHandle<Result<Vec<Entry>>>,
    /// The acknowledgements sent with it.
    acks: Vec<EntryId>,
    permits: Vec<OwnedSemaphorePermit>,
    requested: usize,
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
    pub(super) async fn read_loop(
        self: &Arc<Self>,
        consumer: &mut Consumer,
        shutdown: &CancellationToken,
    ) {
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
            left_over: false,
        };
        let mut failures: u32 = 0;
        let mut jitter = Jitter::new();
        let mut acks: Vec<EntryId> = Vec::with_capacity(o.ack_batch_size);
        // A read sent and not yet taken, with its permits and the acks it carries.
        let mut ahead: Option<Ahead> = None;
        // The last read came back full: the stream most likely has more.
        let mut backlog = false;
        let half_batch = (o.batch_size.min(self.permit_total) / 2).max(1);
        // Reads sent ahead alternate between two connections, unless entries
        // must reach the handler in stream order (`ordered_by_key`): the
        // replies of two connections may be served in either order.
        let ordered = o.ordered_by_key || self.sequential;
        let two_connections = !ordered;
        let mut on_shared = false;
        let flip = |on_shared: &mut bool| {
            *on_shared = two_connections && !*on_shared;
            *on_shared
        };
        loop {
            if self.fenced_out() {
                // The partition's lease is lost: a new owner may read it now.
                // A read still under way is aborted (`ahead` is dropped); what
                // it took stays pending for the new owner.
                warn!(stream = %self.stream, group = %self.group, "lost the partition's lease; stopping");
                return;
            }
            let (read, mut permits, requested) = if let Some(sent) = ahead.take() {
                // In stream order, one read at a time: two reads sent by two
                // tasks may reach Redis in either order.
                if backlog
                    && !ordered
                    && !shutdown.is_cancelled()
                    && Instant::now() < reclaim.next_at
                {
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
                if self.fenced_out() {
                    continue;
                }
                if Instant::now() >= reclaim.next_at {
                    self.reclaim_step(&policy, &mut reclaim, &mut permits).await;
                }
                // A leased partition's new owner hands out its pending entries
                // (the old owner's, taken over in id order) before any new
                // one, so that first deliveries keep per-key order across the
                // handover. The unused permits go back; after a failed scan
                // the next one is due only after `reclaim_interval`.
                if self.fence.is_some() && reclaim.first_pass {
                    drop(permits);
                    let wait = reclaim.next_at.saturating_duration_since(Instant::now());
                    if !wait.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = shutdown.cancelled() => return,
                        }
                    }
                    continue;
                }
                // None left (the read-ahead allowance shrank, or the reclaim
                // pass used them): no read. A read is never sent for more
                // entries than it holds permits for; an entry without one
                // would stay pending until reclaimed, out of stream order.
                if permits.is_empty() {
                    continue;
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
                let mut block = o.block.min(until_reclaim);
                if let Some(fence) = &self.fence {
                    // Redis must serve the read while the lease is held: a
                    // read served later could take entries a new owner reads
                    // after (they would wait for the visibility timeout).
                    block = block.min(fence.remaining());
                }
                let block = block.max(Duration::from_millis(1));
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
        let read = AbortOnDropHandle::new(tokio::spawn(async move {
            reader.ack_then_read(&carried, requested).await
        }));
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
        self.shed(permits);
    }

    /// With `sequential`: gives up permits beyond the read-ahead allowance
    /// (forgotten, so that the semaphore shrinks to it).
    fn shed(&self, permits: &mut Vec<OwnedSemaphorePermit>) {
        if !self.sequential {
            return;
        }
        let mut ahead = lock(&self.read_ahead);
        while ahead.capacity > ahead.target {
            let Some(p) = permits.pop() else { break };
            p.forget();
            ahead.capacity -= 1;
        }
    }

    /// With `sequential`: folds one handler run into the pace (an average
    /// weighing the last run 1/8) and sets the read-ahead allowance from it:
    /// as many entries as the handler, at that pace, finishes within half the
    /// visibility timeout (so that no other consumer takes them over while
    /// they wait), from 1 to `batch_size`. It starts at 1, before the first
    /// entry is handled.
    pub(super) fn note_pace(&self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
        let mut ahead = lock(&self.read_ahead);
        ahead.pace_ns = if ahead.pace_ns == 0 {
            took
        } else {
            ahead.pace_ns - ahead.pace_ns / 8 + took / 8
        }
        .max(1);
        let budget = self.options.visibility_timeout.as_nanos() / 2;
        ahead.target = usize::try_from(budget / u128::from(ahead.pace_ns))
            .unwrap_or(usize::MAX)
            .clamp(1, self.permit_total);
        if ahead.target > ahead.capacity {
            self.permits.add_permits(ahead.target - ahead.capacity);
            ahead.capacity = ahead.target;
        }
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
}
