//! The worker's periodic duties, run between reads every `reclaim_interval`:
//! the reclaim scan of the pending list ([`crate::claim`]), the retry
//! schedules the handlers asked for (pruned on every full scan), and
//! dead-letter moves (each in a task of its own, holding a permit, so that a
//! move that must wait never holds up the reading).
//!
//! Delayed delivery or lease extension would go here too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::{debug, error, warn};

use super::dispatch::Mark;
use super::{bump, lock, Shared};
use crate::admin::dead_letter::{self, MoveGuard, MoveRequest, MoveResult};
use crate::backoff::Jitter;
use crate::claim::{self, ClaimPolicy, Decision};
use crate::error::Result;
use crate::handler::{Delivery, Handler};
use crate::id::EntryId;

/// Where the reclaim scan is in the pending list, and when it runs next.
pub(super) struct ReclaimCursor {
    pub(super) next_at: Instant,
    /// Next page starts here; `None`: from the start.
    pub(super) from: Option<EntryId>,
    /// The first full scan after start: own entries are left over from a previous
    /// run and due at once.
    pub(super) first_pass: bool,
    /// The scan under way found due entries it had no permits for. Under a
    /// lease the first pass then starts over (draining own entries first).
    pub(super) left_over: bool,
}

/// Retry delays asked for by the handler (`Outcome::retry_after`), by entry.
///
/// An entry leaves it when it is claimed again, acknowledged or dead-lettered
/// here, and, for entries that left this consumer's pending list some other
/// way (claimed by another consumer, acknowledged elsewhere, trimmed), after
/// the first full scan that did not find it: the map never holds more than
/// this consumer's pending entries plus those scheduled during one scan.
#[derive(Debug, Default)]
pub(super) struct RetrySchedule {
    entries: HashMap<EntryId, Scheduled>,
    /// Number of the current (or last) scan.
    pass: u64,
    /// When the current scan began, and the idle time below which it does not
    /// list entries (`XPENDING IDLE`).
    pass_started: Option<(Instant, Duration)>,
}

#[derive(Debug)]
struct Scheduled {
    not_before: Instant,
    set_at: Instant,
    /// The last scan that found it pending for this consumer.
    seen_in: u64,
}

impl RetrySchedule {
    /// Retry `id` not before `not_before` (set at `now`).
    pub(super) fn set(&mut self, id: EntryId, not_before: Instant, now: Instant) {
        let seen_in = self.pass;
        self.entries.insert(
            id,
            Scheduled {
                not_before,
                set_at: now,
                seen_in,
            },
        );
    }

    pub(super) fn remove(&mut self, id: EntryId) {
        self.entries.remove(&id);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// How long `id` must still wait, if it has a delay.
    pub(super) fn remaining(&self, id: EntryId, now: Instant) -> Option<Duration> {
        self.entries
            .get(&id)
            .map(|s| s.not_before.saturating_duration_since(now))
    }

    /// A scan of the pending list starts (from its first page) at `now`,
    /// listing entries idle at least `min_idle`.
    pub(super) fn begin_pass(&mut self, now: Instant, min_idle: Duration) {
        self.pass += 1;
        self.pass_started = Some((now, min_idle));
    }

    /// The scan found `id` pending for this consumer.
    pub(super) fn seen(&mut self, id: EntryId) {
        if let Some(s) = self.entries.get_mut(&id) {
            s.seen_in = self.pass;
        }
    }

    /// The scan reached the end of the pending list: drops the entries it did
    /// not find pending for this consumer, except those set too recently for
    /// it to list them (an entry is idle since its delivery, which came before
    /// its schedule was set). Returns how many were dropped.
    pub(super) fn end_pass(&mut self) -> usize {
        let Some((started, min_idle)) = self.pass_started.take() else {
            return 0;
        };
        let before = self.entries.len();
        let pass = self.pass;
        self.entries
            .retain(|_, s| s.seen_in == pass || s.set_at + min_idle > started);
        // A map does not give memory back by itself.
        if self.entries.capacity() > 4 * self.entries.len() + 1024 {
            self.entries.shrink_to_fit();
        }
        before - self.entries.len()
    }
}

impl<H: Handler> Shared<H> {
    /// The idle time below which a scan does not list entries: none are due
    /// sooner (the first pass takes own leftovers at once).
    fn min_scan(&self, first_pass: bool) -> Duration {
        let o = &self.options;
        if first_pass {
            Duration::ZERO
        } else {
            o.retry_backoff.delay(1).min(o.visibility_timeout)
        }
    }

    /// One reclaim page; schedules the next one (at once while the pending list
    /// has more pages, else after `reclaim_interval`).
    pub(super) async fn reclaim_step(
        self: &Arc<Self>,
        policy: &ClaimPolicy,
        cursor: &mut ReclaimCursor,
        permits: &mut Vec<OwnedSemaphorePermit>,
    ) {
        let page_size = (self.options.batch_size * 2).max(64);
        if cursor.from.is_none() {
            let min_scan = self.min_scan(cursor.first_pass);
            lock(&self.retry_schedule).begin_pass(Instant::now(), min_scan);
        }
        let mut again = false;
        match self
            .reclaim_page(
                policy,
                cursor.from,
                page_size,
                cursor.first_pass,
                permits,
                &mut cursor.left_over,
            )
            .await
        {
            Ok(Some(last)) => {
                cursor.from = Some(last.next());
                // Draining under a lease: the next page as soon as there
                // are permits for it.
                again = self.fence.is_some() && cursor.first_pass;
            }
            Ok(None) => {
                cursor.from = None;
                // Under a lease the first pass repeats until it has handed
                // out every own pending entry (see the read loop).
                cursor.first_pass = self.fence.is_some() && std::mem::take(&mut cursor.left_over);
                again = cursor.first_pass;
                let pruned = lock(&self.retry_schedule).end_pass();
                if pruned > 0 {
                    debug!(
                        pruned,
                        "dropped retry delays of entries no longer pending here"
                    );
                }
            }
            Err(e) => {
                // NOGROUP is handled by the read that follows; anything else is
                // retried by the next pass (which starts over: nothing is pruned
                // after an incomplete scan).
                debug!(error = %e, "reclaim scan failed");
                cursor.from = None;
            }
        }
        cursor.next_at = if again || (cursor.from.is_some() && !permits.is_empty()) {
            Instant::now()
        } else {
            Instant::now() + self.options.reclaim_interval
        };
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
        left_over: &mut bool,
    ) -> Result<Option<EntryId>> {
        let o = &self.options;
        let mut conn = self.conn.clone();
        let page = claim::pending_page(
            &mut conn,
            &self.stream,
            &self.group,
            self.min_scan(first_pass),
            cursor,
            page_size,
        )
        .await?;
        let full = page.len() >= page_size;
        let last = page.last().map(|p| p.id);
        let now = Instant::now();
        let mut to_claim: Vec<(Duration, EntryId, u32)> = Vec::new();
        let mut to_move: Vec<(Duration, &claim::PendingEntry)> = Vec::new();
        {
            let in_flight = self.in_flight.lock();
            let mut schedule = lock(&self.retry_schedule);
            for p in &page {
                let mine = p.consumer == self.consumer;
                if mine {
                    schedule.seen(p.id);
                }
                let delay = schedule.remaining(p.id, now).map(|r| r + p.idle);
                let busy = in_flight.contains(&p.id);
                match claim::decide(p, policy, mine, busy, delay, first_pass) {
                    Decision::Skip => {}
                    Decision::Claim { min_idle } => to_claim.push((min_idle, p.id, p.deliveries)),
                    Decision::DeadLetter { min_idle } => to_move.push((min_idle, p)),
                }
            }
        }
        // Dead-letter moves in tasks of their own, each holding a permit (taken
        // from those reserved for this pass; without one, it stays due).
        for (min_idle, p) in to_move {
            let Some(permit) = permits.pop() else {
                *left_over = true;
                break;
            };
            let Some(mark) = self.in_flight.mark(p.id) else {
                permits.push(permit);
                continue;
            };
            let reason = format!(
                "delivered {} times without success (max_deliveries {}); last held by {}",
                p.deliveries, o.max_deliveries, p.consumer
            );
            let this = self.clone();
            self.tasks.spawn(async move {
                this.dead_letter(mark, &reason, MoveGuard::IdleAtLeast(min_idle))
                    .await;
                drop(permit);
            });
        }
        // Claim only as many as there are permits for; the rest stay due.
        let mut by_idle: HashMap<Duration, Vec<(EntryId, u32, OwnedSemaphorePermit)>> =
            HashMap::new();
        for (min_idle, id, deliveries) in to_claim {
            let Some(permit) = permits.pop() else {
                *left_over = true;
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
                    lock(&self.retry_schedule).remove(entry.id);
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

    /// Moves an entry to the dead-letter stream, retrying while Redis is
    /// unreachable; then clears its mark and its retry delay.
    pub(super) async fn dead_letter(&self, mark: Mark, reason: &str, guard: MoveGuard) {
        if self.fenced_out() {
            // Leased and lost: the new owner decides about this entry.
            return;
        }
        let id = mark.id();
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
            match dead_letter::move_entry(&mut conn, request).await {
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
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.hard_stop.cancelled() => break,
                    }
                }
                Err(e) => {
                    // Still pending: the reclaim scan will try again.
                    error!(%id, error = %e, "cannot dead-letter entry; it stays pending");
                    break;
                }
            }
        }
        lock(&self.retry_schedule).remove(id);
        drop(mark);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u64) -> EntryId {
        EntryId::new(i, 0)
    }

    const MIN_SCAN: Duration = Duration::from_millis(10);

    #[test]
    fn a_full_scan_drops_what_it_did_not_find() {
        let t0 = Instant::now();
        let mut s = RetrySchedule::default();
        // 100k retried entries, of which the scan finds 10 still pending here.
        for i in 0..100_000 {
            s.set(id(i), t0 + Duration::from_secs(60), t0);
        }
        let scan = t0 + Duration::from_secs(1);
        s.begin_pass(scan, MIN_SCAN);
        for i in (0..100_000).step_by(10_000) {
            s.seen(id(i));
        }
        // Scheduled during the scan, or just before it: too young to be listed.
        s.set(id(200_000), scan, scan);
        s.set(id(200_001), scan, scan - MIN_SCAN / 2);
        assert_eq!(s.end_pass(), 100_000 - 10);
        assert_eq!(s.len(), 12);
        assert!(s.remaining(id(10_000), scan).is_some());
        assert!(s.remaining(id(10_001), scan).is_none());
        assert!(s.remaining(id(200_000), scan).is_some());
        assert!(s.remaining(id(200_001), scan).is_some());
        assert!(
            s.entries.capacity() < 10_000,
            "memory given back: {}",
            s.entries.capacity()
        );
        // The next scan does not find the young ones either: now they go.
        let next = scan + Duration::from_secs(1);
        s.begin_pass(next, MIN_SCAN);
        s.seen(id(0));
        assert_eq!(s.end_pass(), 11);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn an_incomplete_scan_prunes_nothing() {
        let t0 = Instant::now();
        let mut s = RetrySchedule::default();
        s.set(id(1), t0, t0);
        // A scan that failed midway starts over; only the one that completes
        // decides.
        s.begin_pass(t0 + Duration::from_secs(1), MIN_SCAN);
        s.begin_pass(t0 + Duration::from_secs(2), MIN_SCAN);
        s.seen(id(1));
        assert_eq!(s.end_pass(), 0);
        assert_eq!(s.end_pass(), 0, "no scan under way");
        assert_eq!(s.len(), 1);
    }

    /// A long run: a million retried entries, 1,000 per scan, each taken over
    /// by another consumer before it is due here. Memory stays at about one
    /// scan's worth.
    #[test]
    fn memory_stays_bounded_over_a_million_retries() {
        let t0 = Instant::now();
        let mut s = RetrySchedule::default();
        let mut most = 0;
        for pass in 0..1_000u64 {
            let now = t0 + Duration::from_millis(pass * 100);
            s.begin_pass(now, MIN_SCAN);
            for i in 0..1_000 {
                s.set(id(pass * 1_000 + i), now + Duration::from_secs(5), now);
            }
            s.end_pass();
            most = most.max(s.len());
        }
        assert!(most <= 2_000, "at most two scans' worth: {most}");
        assert!(s.len() <= 1_000);
    }
}
