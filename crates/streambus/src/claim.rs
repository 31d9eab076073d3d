//! Reclaiming pending entries: those delivered and never acknowledged, because
//! their consumer died or their handler failed.
//!
//! The worker scans the group's pending entries list (`XPENDING ... IDLE`), decides
//! per entry from its owner, idle time and delivery count ([`decide`], a pure
//! function), and claims what is due (`XCLAIM` with the same minimum idle time, so
//! an entry another consumer claimed a moment earlier is not taken twice).

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use crate::backoff::Backoff;
use crate::connection::Connection;
use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::id::EntryId;
use crate::reply;

pub use crate::reply::PendingEntry;

/// The rules for reclaiming.
#[derive(Clone, Copy, Debug)]
pub struct ClaimPolicy {
    /// Entries of other consumers are taken after this much idle time: long enough
    /// that a live consumer is surely no longer working on them.
    pub visibility_timeout: Duration,
    /// Own failed entries are retried after `backoff.delay(deliveries)`.
    pub backoff: Backoff,
    /// After this many deliveries an entry is dead-lettered instead.
    pub max_deliveries: u32,
}

/// What to do with one pending entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not due (or being handled right now).
    Skip,
    /// Claim it and handle it again; `min_idle` guards the XCLAIM.
    Claim {
        /// Idle time the entry must still have when claimed.
        min_idle: Duration,
    },
    /// Delivered `max_deliveries` times without success: dead-letter it.
    DeadLetter {
        /// Idle time the entry must still have when moved.
        min_idle: Duration,
    },
}

/// Decides about one pending entry.
///
/// - `mine`: the entry is held by this consumer (a failed attempt, or left by a
///   previous run under the same name);
/// - `in_flight`: this process is handling it right now;
/// - `retry_delay`: a delay the handler asked for, if any;
/// - `first_pass`: the first scan after start, when own entries are left over
///   from a previous run and due at once.
pub fn decide(
    p: &PendingEntry,
    policy: &ClaimPolicy,
    mine: bool,
    in_flight: bool,
    retry_delay: Option<Duration>,
    first_pass: bool,
) -> Decision {
    if in_flight {
        return Decision::Skip;
    }
    let min_idle = if mine {
        if first_pass {
            Duration::ZERO
        } else {
            policy
                .backoff
                .delay(p.deliveries)
                .max(retry_delay.unwrap_or_default())
        }
    } else {
        policy.visibility_timeout
    };
    if p.idle < min_idle {
        Decision::Skip
    } else if p.deliveries >= policy.max_deliveries {
        Decision::DeadLetter { min_idle }
    } else {
        Decision::Claim { min_idle }
    }
}

/// A page of the pending entries list, entries idle at least `min_idle`, from
/// `start` (inclusive) on.
pub async fn pending_page(
    conn: &mut Connection,
    stream: &str,
    group: &str,
    min_idle: Duration,
    start: Option<EntryId>,
    count: usize,
) -> Result<Vec<PendingEntry>> {
    let mut cmd = redis::cmd("XPENDING");
    cmd.arg(stream)
        .arg(group)
        .arg("IDLE")
        .arg(min_idle.as_millis() as u64);
    match start {
        Some(id) => cmd.arg(id),
        None => cmd.arg("-"),
    };
    cmd.arg("+").arg(count.max(1));
    let v: Value = cmd.query_async(conn).await.map_err(|e| {
        Error::redis(
            format!("cannot list pending entries of {stream:?}/{group:?}"),
            e,
        )
    })?;
    reply::pending_entries(v)
}

/// Claims `ids` for `consumer` if they are still idle at least `min_idle`; returns
/// the entries claimed (entries deleted from the stream meanwhile are dropped
/// from the pending list by Redis and not returned).
pub async fn claim(
    conn: &mut Connection,
    stream: &Arc<str>,
    group: &str,
    consumer: &str,
    min_idle: Duration,
    ids: &[EntryId],
) -> Result<Vec<Entry>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = redis::cmd("XCLAIM")
        .arg(&**stream)
        .arg(group)
        .arg(consumer)
        .arg(min_idle.as_millis() as u64)
        .arg(ids)
        .query_async(conn)
        .await
        .map_err(|e| {
            Error::redis(
                format!("cannot claim pending entries of {stream:?}/{group:?}"),
                e,
            )
        })?;
    reply::entries(stream, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ClaimPolicy {
        ClaimPolicy {
            visibility_timeout: Duration::from_secs(30),
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            max_deliveries: 5,
        }
    }

    fn p(idle_ms: u64, deliveries: u32) -> PendingEntry {
        PendingEntry {
            id: EntryId::new(1, 0),
            consumer: "c".into(),
            idle: Duration::from_millis(idle_ms),
            deliveries,
        }
    }

    #[test]
    fn others_entries_wait_for_the_visibility_timeout() {
        let pol = policy();
        assert_eq!(
            decide(&p(29_999, 1), &pol, false, false, None, false),
            Decision::Skip
        );
        assert_eq!(
            decide(&p(30_000, 1), &pol, false, false, None, false),
            Decision::Claim {
                min_idle: Duration::from_secs(30)
            }
        );
        // Even on the first pass: another consumer may be alive.
        assert_eq!(
            decide(&p(10, 1), &pol, false, false, None, true),
            Decision::Skip
        );
    }

    #[test]
    fn own_failures_back_off_by_delivery_count() {
        let pol = policy();
        assert_eq!(
            decide(&p(999, 1), &pol, true, false, None, false),
            Decision::Skip
        );
        assert!(matches!(
            decide(&p(1000, 1), &pol, true, false, None, false),
            Decision::Claim { .. }
        ));
        assert_eq!(
            decide(&p(3999, 3), &pol, true, false, None, false),
            Decision::Skip
        );
        assert!(matches!(
            decide(&p(4000, 3), &pol, true, false, None, false),
            Decision::Claim { .. }
        ));
        // A delay the handler asked for wins when longer.
        let d = Some(Duration::from_secs(10));
        assert_eq!(
            decide(&p(5000, 1), &pol, true, false, d, false),
            Decision::Skip
        );
        // Left over from a previous run under this name: due at once.
        assert!(matches!(
            decide(&p(0, 2), &pol, true, false, None, true),
            Decision::Claim { .. }
        ));
    }

    #[test]
    fn in_flight_entries_are_never_touched() {
        let pol = policy();
        assert_eq!(
            decide(&p(1_000_000, 9), &pol, true, true, None, true),
            Decision::Skip
        );
        assert_eq!(
            decide(&p(1_000_000, 9), &pol, false, true, None, false),
            Decision::Skip
        );
    }

    #[test]
    fn exhausted_entries_are_dead_lettered() {
        let pol = policy();
        assert!(matches!(
            decide(&p(60_000, 5), &pol, false, false, None, false),
            Decision::DeadLetter { .. }
        ));
        assert!(matches!(
            decide(&p(60_000, 4), &pol, false, false, None, false),
            Decision::Claim { .. }
        ));
        assert_eq!(
            decide(&p(10, 5), &pol, false, false, None, false),
            Decision::Skip
        );
    }

    /// Simulates an entry that fails on every delivery, with the worker's reclaim
    /// scan every 10 ms of virtual time: retries come at the backoff's delays and
    /// the entry is dead-lettered after exactly `max_deliveries`.
    #[tokio::test(start_paused = true)]
    async fn retry_schedule_under_virtual_time() {
        use tokio::time::{advance, Instant};
        let pol = ClaimPolicy {
            visibility_timeout: Duration::from_secs(30),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_millis(350)),
            max_deliveries: 5,
        };
        let start = Instant::now();
        let mut delivered_at = start;
        let mut entry = p(0, 1);
        let mut retries = Vec::new();
        let outcome = loop {
            advance(Duration::from_millis(10)).await;
            entry.idle = delivered_at.elapsed();
            match decide(&entry, &pol, true, false, None, false) {
                Decision::Skip => {}
                Decision::Claim { .. } => {
                    retries.push(delivered_at.elapsed().as_millis());
                    entry.deliveries += 1;
                    delivered_at = Instant::now();
                }
                d @ Decision::DeadLetter { .. } => break d,
            }
        };
        // Failed deliveries 1..4 wait 100, 200, 350 (capped), 350 ms.
        assert_eq!(retries, [100, 200, 350, 350]);
        assert_eq!(entry.deliveries, 5);
        assert!(matches!(outcome, Decision::DeadLetter { .. }));
        assert_eq!(start.elapsed().as_millis(), 100 + 200 + 350 + 350 + 350);
    }
}
