//! [`cleanup`]: hands the pending entries of dead consumers to live ones and
//! deletes the dead consumers whose pending list is empty, never losing an entry.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use redis::Value;
use serde::Serialize;

use super::MonitorOptions;
use crate::admin::group;
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::id::EntryId;
use crate::keys;
use crate::reply;

/// How [`cleanup`] decides and acts.
///
/// Not `#[non_exhaustive]`, so that callers can write
/// `CleanupOptions { dry_run: true, ..Default::default() }`.
#[derive(Clone, Debug)]
pub struct CleanupOptions {
    /// A consumer whose idle time (since its last read or claim attempt) is above
    /// this is dead; at or below it, alive.
    pub idle_threshold: Duration,
    /// Say what would be done, change nothing.
    pub dry_run: bool,
    /// Pending entries fetched (`XPENDING ... COUNT`) and moved per step.
    pub page_size: usize,
}

impl Default for CleanupOptions {
    fn default() -> Self {
        CleanupOptions {
            idle_threshold: MonitorOptions::default().idle_threshold,
            dry_run: false,
            page_size: 100,
        }
    }
}

/// What [`cleanup`] did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct CleanupReport {
    /// True if nothing was changed: the report says what would have been done.
    pub dry_run: bool,
    /// Pending entries handed from a dead consumer to a live one, per pair.
    pub moved: Vec<Move>,
    /// Dead consumers deleted (each had an empty pending list at that moment).
    pub deleted: Vec<String>,
    /// Dead consumers left in place, with the reason.
    pub skipped: Vec<Skipped>,
    /// Pending entries that left the pending list by themselves before they could
    /// be moved: acknowledged meanwhile, or deleted from the stream (Redis drops a
    /// deleted entry from the pending list when it is claimed).
    pub vanished: u64,
}

impl CleanupReport {
    /// Entries moved in total.
    pub fn moved_total(&self) -> u64 {
        self.moved.iter().map(|m| m.count).sum()
    }
}

/// Entries moved from one consumer to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Move {
    /// The dead consumer they belonged to.
    pub from: String,
    /// The live consumer that owns them now.
    pub to: String,
    /// How many.
    pub count: u64,
}

/// A dead consumer that [`cleanup`] left in place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Skipped {
    /// The consumer.
    pub consumer: String,
    /// Its pending entries when it was skipped.
    pub pending: u64,
    /// Why it was left.
    pub reason: SkipReason,
}

/// Why [`cleanup`] left a dead consumer in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SkipReason {
    /// It holds pending entries and no consumer is alive to take them: they are
    /// left for the worker's reclaim loop (XAUTOCLAIM), which any consumer that
    /// starts will run.
    NoLiveConsumer,
    /// It received entries while cleanup ran: deleting it would drop them.
    HasPending,
    /// It read again while cleanup ran: it is not dead.
    Active,
    /// Someone else deleted it meanwhile.
    Gone,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::NoLiveConsumer => {
                "no live consumer to take its pending entries; left for the reclaim loop"
            }
            SkipReason::HasPending => "it received entries during cleanup",
            SkipReason::Active => "it became active again during cleanup",
            SkipReason::Gone => "it was deleted by someone else",
        })
    }
}

/// The script that deletes a consumer only if it is idle and owns nothing.
static DELETE_CONSUMER_IF_IDLE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../../scripts/delete_consumer_if_idle.lua")));

/// Hands the pending entries of dead consumers of `group` to live ones and
/// deletes the dead consumers whose pending list is empty.
///
/// - **Dead** means `idle` above [`CleanupOptions::idle_threshold`] (see the
///   module docs for what resets `idle` on 7.0 and on 7.2+). `idle` rather than
///   Redis 7.2's `inactive`: on 7.2 a consumer that keeps polling is alive even if
///   the stream is quiet; deleting one only makes Redis recreate it at its next
///   read.
///   A consumer that is busy (many pending entries, recently active) is alive and
///   never touched.
/// - **Moving**: the dead consumer's pending entries are listed page by page
///   (`XPENDING key group (cursor + N consumer`) and each is given to the live
///   consumer with the fewest pending entries at that moment (counts updated as
///   entries are handed out, ties broken by name), with
///   `XCLAIM key group target 0 id... IDLE <ms> JUSTID`:
///   - min-idle-time 0: every entry moves, however recently it was delivered (the
///     reference package claimed with a 1 s minimum and then deleted the consumer,
///     dropping the younger entries);
///   - `JUSTID`: a move is not a delivery, so the delivery count (which decides
///     dead-lettering) is not incremented;
///   - `IDLE` keeps the entries' idle time (the smallest in the batch), so the
///     reclaim loop picks them up as soon as it would have anyway: a running
///     consumer does not re-read entries handed to it.
/// - **No live consumer**: the entries stay where they are, for the reclaim loop
///   (XAUTOCLAIM) of whichever worker starts next; the consumer is not deleted.
/// - **Deleting**: only by a script that, atomically, finds the consumer still
///   idle above the threshold and its pending list empty, then runs
///   `XGROUP DELCONSUMER`. A consumer that read or received an entry meanwhile
///   is skipped; `XGROUP DELCONSUMER` on a consumer with pending entries would
///   drop them, which is data loss.
/// - **Dry run** ([`CleanupOptions::dry_run`]): reads only (`XINFO CONSUMERS`),
///   and reports the moves and deletions it would make from the current counts.
pub async fn cleanup(
    conn: &mut Connection,
    stream: &str,
    group: &str,
    options: &CleanupOptions,
) -> Result<CleanupReport> {
    keys::validate_name("group", group)?;
    group::require_stream(conn, stream).await?;
    let mut consumers = reply::xinfo_consumers(conn, stream, group).await?;
    consumers.sort_by(|a, b| a.name.cmp(&b.name));
    let (dead, live): (Vec<_>, Vec<_>) = consumers
        .into_iter()
        .partition(|c| c.idle > options.idle_threshold);
    let mut loads = Loads(live.into_iter().map(|c| (c.name, c.pending)).collect());

    let mut report = CleanupReport {
        dry_run: options.dry_run,
        ..CleanupReport::default()
    };
    let threshold_ms = options.idle_threshold.as_millis().min(u64::MAX as u128) as u64;
    for d in dead {
        if d.pending > 0 && loads.0.is_empty() {
            report.skipped.push(Skipped {
                consumer: d.name,
                pending: d.pending,
                reason: SkipReason::NoLiveConsumer,
            });
            continue;
        }
        if options.dry_run {
            let mut moves = BTreeMap::new();
            for _ in 0..d.pending {
                *moves.entry(loads.take_one()).or_insert(0u64) += 1;
            }
            push_moves(&mut report, &d.name, &loads, moves);
            report.deleted.push(d.name);
            continue;
        }
        if d.pending > 0 {
            move_pending(
                conn,
                stream,
                group,
                &d.name,
                options,
                &mut loads,
                &mut report,
            )
            .await?;
        }
        let outcome: i64 = DELETE_CONSUMER_IF_IDLE
            .key(stream)
            .arg(group)
            .arg(&d.name)
            .arg(threshold_ms)
            .invoke_async(conn)
            .await
            .map_err(|e| {
                Error::redis(
                    format!("cannot delete consumer {:?} of group {group:?}", d.name),
                    e,
                )
            })?;
        let reason = match outcome {
            1 => {
                report.deleted.push(d.name);
                continue;
            }
            0 => SkipReason::Gone,
            -1 => SkipReason::HasPending,
            _ => SkipReason::Active,
        };
        let pending = consumer_pending(conn, stream, group, &d.name).await?;
        report.skipped.push(Skipped {
            consumer: d.name,
            pending,
            reason,
        });
    }
    Ok(report)
}

/// Pending counts of the live consumers, by name: who gets the next entry.
struct Loads(Vec<(String, u64)>);

impl Loads {
    /// Index of the least-loaded consumer (first by name on ties); its count is
    /// incremented, as it is about to receive an entry. Only called when
    /// non-empty.
    fn take_one(&mut self) -> usize {
        let mut best = 0;
        for (i, (_, n)) in self.0.iter().enumerate() {
            if *n < self.0[best].1 {
                best = i;
            }
        }
        self.0[best].1 += 1;
        best
    }
}

fn push_moves(report: &mut CleanupReport, from: &str, loads: &Loads, moves: BTreeMap<usize, u64>) {
    for (to, count) in moves {
        if count == 0 {
            continue;
        }
        let to = &loads.0[to].0;
        match report
            .moved
            .iter_mut()
            .find(|m| m.from == from && m.to == *to)
        {
            Some(m) => m.count += count,
            None => report.moved.push(Move {
                from: from.to_owned(),
                to: to.clone(),
                count,
            }),
        }
    }
}

/// Moves every pending entry of `from` to the live consumers, page by page.
async fn move_pending(
    conn: &mut Connection,
    stream: &str,
    group: &str,
    from: &str,
    options: &CleanupOptions,
    loads: &mut Loads,
    report: &mut CleanupReport,
) -> Result<()> {
    let page = options.page_size.max(1);
    let ctx = || format!("cannot move the pending entries of consumer {from:?} of group {group:?}");
    let mut cursor = "-".to_owned();
    loop {
        let v: Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .arg(&cursor)
            .arg("+")
            .arg(page)
            .arg(from)
            .query_async(conn)
            .await
            .map_err(|e| Error::redis(ctx(), e))?;
        let entries = reply::pending_entries(v)?;
        let Some(last) = entries.last() else { break };
        // Exclusive start (Redis 6.2+): the next page begins after this one.
        cursor = format!("({}", last.id);
        let full = entries.len() == page;

        let mut buckets: BTreeMap<usize, (Vec<EntryId>, Duration)> = BTreeMap::new();
        for e in &entries {
            let b = buckets
                .entry(loads.take_one())
                .or_insert_with(|| (Vec::new(), e.idle));
            b.0.push(e.id);
            b.1 = b.1.min(e.idle);
        }
        let mut pipe = redis::pipe();
        for (to, (ids, idle)) in &buckets {
            pipe.cmd("XCLAIM")
                .arg(stream)
                .arg(group)
                .arg(&loads.0[*to].0)
                .arg(0)
                .arg(ids)
                .arg("IDLE")
                .arg(idle.as_millis() as u64)
                .arg("JUSTID");
        }
        let claimed: Vec<Value> = pipe
            .query_async(conn)
            .await
            .map_err(|e| Error::redis(ctx(), e))?;
        let mut moves = BTreeMap::new();
        for ((to, (ids, _)), got) in buckets.iter().zip(claimed) {
            let got = reply::list(got)?.len() as u64;
            let asked = ids.len() as u64;
            // Entries acked or deleted meanwhile were not moved: give the count back.
            loads.0[*to].1 -= asked.saturating_sub(got);
            report.vanished += asked.saturating_sub(got);
            moves.insert(*to, got);
        }
        push_moves(report, from, loads, moves);
        if !full {
            break;
        }
    }
    Ok(())
}

/// Pending count of one consumer (XPENDING summary with a consumer filter is not
/// a thing; the extended form with COUNT 1 only says "some").
async fn consumer_pending(
    conn: &mut Connection,
    stream: &str,
    group: &str,
    consumer: &str,
) -> Result<u64> {
    Ok(reply::xinfo_consumers(conn, stream, group)
        .await?
        .into_iter()
        .find(|c| c.name == consumer)
        .map_or(0, |c| c.pending))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_loaded_pick_balances() {
        let mut l = Loads(vec![("a".into(), 5), ("b".into(), 0), ("c".into(), 2)]);
        let picks: Vec<usize> = (0..7).map(|_| l.take_one()).collect();
        assert_eq!(picks, [1, 1, 1, 2, 1, 2, 1]);
        assert_eq!(l.0.iter().map(|x| x.1).collect::<Vec<_>>(), [5, 5, 4]);
    }
}
