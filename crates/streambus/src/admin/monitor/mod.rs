//! The monitor: a snapshot of a stream, its groups and their consumers, and a
//! safe cleanup of dead consumers.
//!
//! # Snapshot
//!
//! [`snapshot`] costs O(groups + consumers) commands and never reads the backlog:
//! `TYPE`, `TIME`, `XINFO STREAM`, `XINFO GROUPS`, then one pipeline per group of
//! `XINFO CONSUMERS`, `XPENDING key group` (summary) and `XPENDING key group - + N`
//! (the N oldest pending entries, N = [`MonitorOptions::delivery_sample`]).
//!
//! - **Lag** comes from `XINFO GROUPS` (Redis 7.0+). Redis cannot always tell it
//!   (after an `XDEL` between the group's position and the end of the stream, or
//!   for a group created at an arbitrary id); then [`GroupSnapshot::lag`] is `None`
//!   and streambus does not guess. The reference package counted the backlog with
//!   `XRANGE`, which costs O(backlog).
//! - **Oldest pending age** is the age of the smallest pending id (from the id's
//!   millisecond part, against the server clock from `TIME`): how long ago the
//!   oldest unacknowledged entry was *added*. Its *idle* time (since its last
//!   delivery) is in [`GroupSnapshot::oldest_pending_idle`].
//! - **Delivery-count spread** is taken over the N oldest pending entries only:
//!   those are the ones that get redelivered, and looking at all of them would be
//!   O(pending).
//!
//! # Consumer status
//!
//! Redis reports, per consumer, `idle`. What resets it depends on the version:
//! on Redis 7.2+ every `XREADGROUP` attempt (even one that returns nothing) and
//! every claim; on Redis 7.0 (measured on 7.0.15) only a read or claim that got
//! entries — an empty read leaves it growing. Redis 7.2 also adds `inactive`: the
//! time since the last *successful* interaction. See [`Status`] for how each is
//! used.
//!
//! So on 7.0 a healthy consumer polling a quiet stream shows as `IDLE` once the
//! stream has been quiet for longer than the threshold; cleanup may then delete
//! it if it holds nothing (harmless: Redis recreates it at its next read that
//! gets entries), and hands its pending entries over if it holds some. Set the
//! idle threshold above both the longest quiet period you expect and the longest
//! handler run.
//!
//! # Cleanup
//!
//! [`cleanup`] hands the pending entries of dead consumers to the least-loaded
//! live consumer and deletes a dead consumer only when its pending list is empty,
//! checked and deleted atomically by a script. See [`cleanup`] for the details and
//! for what it does differently from the reference package (which could lose
//! entries).

mod cleanup;
mod snapshot;
mod status;

use std::time::Duration;

use serde::Serializer;

use crate::connection::{Client, Connection};
use crate::error::Result;

pub use cleanup::{cleanup, CleanupOptions, CleanupReport, Move, SkipReason, Skipped};
pub use snapshot::{snapshot, ConsumerSnapshot, DeliverySpread, GroupSnapshot, StreamSnapshot};
pub use status::Status;

/// What the monitor looks at and where it draws its lines.
///
/// Not `#[non_exhaustive]`, so that callers can write
/// `MonitorOptions { idle_threshold, ..Default::default() }`.
#[derive(Clone, Debug)]
pub struct MonitorOptions {
    /// A consumer whose idle time is above this is [`Status::Idle`], or
    /// [`Status::Stalled`] if it holds pending entries.
    pub idle_threshold: Duration,
    /// A consumer holding more pending entries than this is
    /// [`Status::TooManyPending`] (a warning only). The reference package warns
    /// above its batch size; a worker with concurrency holds up to batch size
    /// times concurrency, so set it to that.
    pub pending_warning: u64,
    /// How many of the oldest pending entries of each group are examined for the
    /// delivery-count spread (one `XPENDING - + N`); 0 skips it.
    pub delivery_sample: usize,
    /// Only this group (the others are not examined); `None` for all groups.
    pub group: Option<String>,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        MonitorOptions {
            idle_threshold: Duration::from_secs(60),
            pending_warning: 100,
            delivery_sample: 10,
            group: None,
        }
    }
}

/// A monitor bound to a connection and options, for callers that look at the
/// same streams again and again (`streambus monitor --watch`, the dashboard).
/// Every call asks Redis afresh: nothing is cached between calls.
#[derive(Clone, Debug)]
pub struct Monitor {
    /// The shared connection (XINFO, XPENDING, XCLAIM are all non-blocking).
    conn: Connection,
    /// Thresholds used for statuses and cleanup.
    options: MonitorOptions,
}

impl Monitor {
    /// A monitor for `client` with `options`, on a connection of its own
    /// (checked with `PING`).
    pub async fn new(client: &Client, options: MonitorOptions) -> Result<Self> {
        Ok(Monitor {
            conn: client.connect().await?,
            options,
        })
    }

    /// The options in use.
    pub fn options(&self) -> &MonitorOptions {
        &self.options
    }

    /// A fresh [`snapshot`] of `stream`.
    pub async fn snapshot(&mut self, stream: &str) -> Result<StreamSnapshot> {
        snapshot(&mut self.conn, stream, &self.options).await
    }

    /// A fresh snapshot of `stream`, with the monitor gauges recorded from it.
    pub async fn snapshot_and_record(&mut self, stream: &str) -> Result<StreamSnapshot> {
        let snap = self.snapshot(stream).await?;
        snap.record_metrics();
        Ok(snap)
    }

    /// [`cleanup`] of `group`, with the monitor's idle threshold.
    pub async fn cleanup(
        &mut self,
        stream: &str,
        group: &str,
        dry_run: bool,
    ) -> Result<CleanupReport> {
        let options = CleanupOptions {
            idle_threshold: self.options.idle_threshold,
            dry_run,
            ..CleanupOptions::default()
        };
        cleanup(&mut self.conn, stream, group, &options).await
    }
}

// ---------------------------------------------------------------------------
// Serialization of durations as milliseconds
// ---------------------------------------------------------------------------

pub(crate) fn ms<S: Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis().min(u64::MAX as u128) as u64)
}

pub(crate) fn opt_ms<S: Serializer>(
    d: &Option<Duration>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_millis().min(u64::MAX as u128) as u64)),
        None => s.serialize_none(),
    }
}
