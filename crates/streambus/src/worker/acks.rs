//! Acknowledgements: queued by handlers ([`AckQueue`]), sent in batches with
//! the next read (same round trip) or by the flusher after
//! `ack_flush_interval`, and on shutdown.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::dispatch::Mark;
use super::{bump, lock, Shared};
use crate::backoff::Jitter;
use crate::consumer;
use crate::entry::Entry;
use crate::error::Result;
use crate::handler::Handler;
use crate::id::EntryId;
use crate::partition::lease;

/// Acknowledgements waiting to be sent.
#[derive(Debug, Default)]
pub(super) struct AckQueue {
    ids: Vec<EntryId>,
    /// Set when the flusher has stopped: nothing will send what comes later.
    closed: bool,
}

/// What [`AckQueue::push`] did with the ids.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pushed<I> {
    /// Queued; `wake`: the queue was empty, so the flusher must be woken.
    Queued { wake: bool },
    /// The queue is closed: the ids are handed back, unsent.
    Closed(I),
}

impl AckQueue {
    /// Queues `ids` behind those already queued.
    pub(super) fn push<I: IntoIterator<Item = EntryId>>(&mut self, ids: I) -> Pushed<I> {
        if self.closed {
            return Pushed::Closed(ids);
        }
        let was_empty = self.ids.is_empty();
        self.ids.extend(ids);
        Pushed::Queued {
            wake: was_empty && !self.ids.is_empty(),
        }
    }

    /// Moves the oldest `max` queued ids (all if fewer) into `out`, which must
    /// be empty; the rest stay queued, in order. Swaps buffers, so that the
    /// common case (everything fits) copies nothing.
    pub(super) fn take(&mut self, out: &mut Vec<EntryId>, max: usize) {
        debug_assert!(out.is_empty());
        std::mem::swap(out, &mut self.ids);
        if out.len() > max {
            self.ids.extend(out.drain(max..));
        }
    }

    /// How many ids are queued.
    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Stops accepting ids; later pushes are handed back.
    pub(super) fn close(&mut self) {
        self.closed = true;
    }
}

impl<H: Handler> Shared<H> {
    /// Acknowledges a handled entry: its in-flight mark passes to the queue,
    /// and is cleared once the XACK is done.
    pub(super) fn ack(&self, mark: Mark) {
        self.queue_acks(std::iter::once(mark.hand_to_ack()));
    }

    /// Queues ids for the next XACK (sent with the next read, or by the flusher).
    pub(super) fn queue_acks<I: IntoIterator<Item = EntryId>>(&self, ids: I) {
        let pushed = lock(&self.acks).push(ids);
        match pushed {
            Pushed::Queued { wake } => {
                if wake {
                    self.ack_ready.notify_one();
                }
            }
            // Only after the flusher stopped, which happens after every handler
            // finished (or when `run` was dropped): the entries stay pending and
            // are redelivered.
            Pushed::Closed(ids) => self.in_flight.clear(ids),
        }
    }

    /// Closes the ack queue: what is queued now or later is not sent (the
    /// entries stay pending). For a `run` that was dropped.
    pub(super) fn close_acks(&self) {
        let mut dropped = Vec::new();
        {
            let mut q = lock(&self.acks);
            q.close();
            q.take(&mut dropped, usize::MAX);
        }
        self.in_flight.clear(dropped);
    }

    /// Moves the queued acknowledgements (up to `ack_batch_size`) into `acks`.
    ///
    /// Under a lease, none: the flusher sends every ack, through the fenced
    /// script, instead of a plain XACK alongside a read.
    pub(super) fn take_acks(&self, acks: &mut Vec<EntryId>) {
        if self.fence.is_some() {
            return;
        }
        lock(&self.acks).take(acks, self.options.ack_batch_size);
    }

    /// After a read that carried acknowledgements: on success they are done;
    /// on an error they may or may not have been applied, so the flusher sends
    /// them again (XACK is idempotent) and handles its own errors.
    pub(super) fn carried_acks(
        &self,
        acks: Vec<EntryId>,
        read: Result<Vec<Entry>>,
    ) -> Result<Vec<Entry>> {
        if !acks.is_empty() {
            if read.is_ok() {
                self.acked(acks.into_iter());
            } else {
                self.queue_acks(acks);
            }
        }
        read
    }

    /// Bookkeeping after a successful XACK: one lock per batch.
    pub(super) fn acked(&self, ids: impl ExactSizeIterator<Item = EntryId>) {
        let n = ids.len() as u64;
        bump(&self.stats.acked, n);
        self.metrics.acked.increment(n);
        let mut in_flight = self.in_flight.lock();
        let mut schedule = lock(&self.retry_schedule);
        for id in ids {
            in_flight.remove(&id);
            if !schedule.is_empty() {
                schedule.remove(id);
            }
        }
    }

    /// Sends the acknowledgements that the read loop does not take with its next
    /// read (e.g. those that complete while a read blocks), in batches gathered
    /// for up to `ack_flush_interval`.
    pub(super) async fn ack_flusher(self: Arc<Self>, stop: CancellationToken) {
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
                && lock(&self.acks).len() < o.ack_batch_size
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
                    q.close();
                }
                q.take(&mut batch, usize::MAX);
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
            let sent = match &self.fence {
                None => consumer::ack(&mut conn, &self.stream, &self.group, &ids[..n])
                    .await
                    .map(Some),
                // Lost here already: not even sent.
                Some(fence) if !fence.holds() => Ok(None),
                Some(fence) => {
                    lease::fenced_ack(&mut conn, &self.stream, &self.group, fence, &ids[..n]).await
                }
            };
            match sent {
                Ok(Some(_)) => self.acked(ids.drain(..n)),
                Ok(None) => {
                    // The lease is another member's now: it takes these
                    // entries over (pending) and handles them again.
                    if let Some(fence) = &self.fence {
                        fence.revoke();
                    }
                    warn!(stream = %self.stream, ids = n, "lost the partition's lease; not acknowledging, the new owner handles these entries again");
                    self.in_flight.clear(ids.drain(..n));
                }
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
                    self.in_flight.clear(ids.drain(..n));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(r: std::ops::Range<u64>) -> Vec<EntryId> {
        r.map(|i| EntryId::new(i, 0)).collect()
    }

    #[test]
    fn wakes_only_when_the_queue_was_empty() {
        let mut q = AckQueue::default();
        assert_eq!(q.push(ids(0..0)), Pushed::Queued { wake: false });
        assert_eq!(q.push(ids(0..2)), Pushed::Queued { wake: true });
        assert_eq!(q.push(ids(2..3)), Pushed::Queued { wake: false });
        let mut out = Vec::new();
        q.take(&mut out, usize::MAX);
        assert_eq!(out, ids(0..3));
        assert_eq!(q.push(ids(3..4)), Pushed::Queued { wake: true });
    }

    #[test]
    fn takes_the_oldest_up_to_the_batch_size_and_keeps_the_rest_in_order() {
        let mut q = AckQueue::default();
        let _ = q.push(ids(0..10));
        let mut out = Vec::new();
        q.take(&mut out, 4);
        assert_eq!(out, ids(0..4));
        assert_eq!(q.len(), 6);
        let _ = q.push(ids(10..12));
        let mut rest = Vec::new();
        q.take(&mut rest, 100);
        assert_eq!(rest, ids(4..12));
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_closed_queue_hands_ids_back() {
        let mut q = AckQueue::default();
        let _ = q.push(ids(0..2));
        q.close();
        assert_eq!(q.push(ids(2..4)), Pushed::Closed(ids(2..4)));
        let mut out = Vec::new();
        q.take(&mut out, usize::MAX);
        assert_eq!(out, ids(0..2), "what was queued before can still be taken");
    }
}
