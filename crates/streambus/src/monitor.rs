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

//! # Cleanup
//!
//! [`cleanup`] hands the pending entries of dead consumers to the least-loaded
//! live consumer and deletes a dead consumer only when its pending list is empty,
//! checked and deleted atomically by a script. See [`cleanup`] for the details and
//! for what it does differently from the reference package (which could lose
//! entries).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use redis::Value;
use serde::{Serialize, Serializer};

use crate::connection::Connection;
use crate::error::{Error, ErrorKind, Result};
use crate::group;
use crate::id::EntryId;
use crate::keys;
use crate::metrics;
use crate::reply::{self, Reply};

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

/// The health of one consumer, from its idle time and pending count.
///
/// Serialized as `"OK"`, `"IDLE"`, `"STALLED"`, `"TOO_MANY_PENDING"`. Checked in
/// this order, first match wins:
///
/// 1. [`Status::Stalled`]: holds pending entries and made no progress for longer
///    than the threshold. "Progress" is `inactive` (last successful read or claim)
///    where the server reports it (Redis 7.2+), else `idle` (last attempt).
/// 2. [`Status::Idle`]: `idle` above the threshold: it has not even tried to read.
/// 3. [`Status::TooManyPending`]: holds more than
///    [`MonitorOptions::pending_warning`] entries while active. A warning only: a
///    busy consumer is never deleted or robbed by [`cleanup`].
/// 4. [`Status::Ok`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[non_exhaustive]
pub enum Status {
    /// Active and not holding too much.
    #[serde(rename = "OK")]
    Ok,
    /// Has not tried to read for longer than the threshold (and holds nothing).
    #[serde(rename = "IDLE")]
    Idle,
    /// Holds pending entries and made no progress for longer than the threshold.
    #[serde(rename = "STALLED")]
    Stalled,
    /// Active, but holds more pending entries than the warning level.
    #[serde(rename = "TOO_MANY_PENDING")]
    TooManyPending,
}

impl Status {
    /// Every status, in the order they are listed in tables and metrics.
    pub const ALL: [Status; 4] = [
        Status::Ok,
        Status::Idle,
        Status::Stalled,
        Status::TooManyPending,
    ];

    /// The name used in JSON, tables and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Idle => "IDLE",
            Status::Stalled => "STALLED",
            Status::TooManyPending => "TOO_MANY_PENDING",
        }
    }

    /// The words the reference package prints in its monitor table (it has no
    /// stalled state; streambus adds one in the same style).
    pub fn reference_text(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Idle => "WARNING - idle for long time",
            Status::Stalled => "WARNING - stalled with pending items",
            Status::TooManyPending => "WARNING - too many pending items",
        }
    }

    /// Classifies a consumer (see the type docs for the rules).
    pub fn classify(
        pending: u64,
        idle: Duration,
        inactive: Option<Duration>,
        options: &MonitorOptions,
    ) -> Status {
        let no_progress_for = inactive.unwrap_or(idle).max(idle);
        if pending > 0 && no_progress_for > options.idle_threshold {
            Status::Stalled
        } else if idle > options.idle_threshold {
            Status::Idle
        } else if pending > options.pending_warning {
            Status::TooManyPending
        } else {
            Status::Ok
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A point-in-time view of one stream and its groups.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct StreamSnapshot {
    /// The stream's key.
    pub stream: String,
    /// Server time (ms since the epoch) the ages are measured against, from
    /// `TIME`, so that a client with a skewed clock still reports true ages.
    pub server_time_ms: u64,
    /// Entries in the stream (`XLEN`).
    pub length: u64,
    /// Id of the first entry, `None` when the stream is empty.
    pub first_entry_id: Option<EntryId>,
    /// How long ago the first entry was added: the reach of the retention.
    #[serde(rename = "first_entry_age_ms", serialize_with = "opt_ms")]
    pub first_entry_age: Option<Duration>,
    /// Id of the last entry, `None` when the stream is empty.
    pub last_entry_id: Option<EntryId>,
    /// How long ago the last entry was added: is anyone still publishing?
    #[serde(rename = "last_entry_age_ms", serialize_with = "opt_ms")]
    pub last_entry_age: Option<Duration>,
    /// The last id Redis generated (it survives deletion of that entry).
    pub last_generated_id: EntryId,
    /// Entries ever added (`entries-added`, Redis 7.0+): the arrival counter the
    /// scaler differentiates. `None` on older servers.
    pub entries_added: Option<u64>,
    /// The largest id deleted with `XDEL` (Redis 7.0+); explains a `None` lag.
    pub max_deleted_entry_id: Option<EntryId>,
    /// The groups examined (all, or the one asked for).
    pub groups: Vec<GroupSnapshot>,
}

impl StreamSnapshot {
    /// The snapshot of `group`, if it was examined.
    pub fn group(&self, group: &str) -> Option<&GroupSnapshot> {
        self.groups.iter().find(|g| g.name == group)
    }

    /// Sets the monitor gauges of [`crate::metrics`] from this snapshot: stream
    /// length; per group lag (NaN when Redis cannot tell it, rather than a stale
    /// or guessed value), pending, oldest pending age (0 when nothing is pending)
    /// and consumers by status (every status, zeros included).
    pub fn record_metrics(&self) {
        let stream = self.stream.clone();
        ::metrics::gauge!(metrics::STREAM_LENGTH, "stream" => stream.clone())
            .set(self.length as f64);
        for g in &self.groups {
            let labels = [("stream", stream.clone()), ("group", g.name.clone())];
            ::metrics::gauge!(metrics::GROUP_LAG, &labels)
                .set(g.lag.map_or(f64::NAN, |l| l as f64));
            ::metrics::gauge!(metrics::GROUP_PENDING, &labels).set(g.pending as f64);
            ::metrics::gauge!(metrics::GROUP_OLDEST_PENDING_SECONDS, &labels)
                .set(g.oldest_pending_age.map_or(0.0, |d| d.as_secs_f64()));
            for status in Status::ALL {
                ::metrics::gauge!(
                    metrics::GROUP_CONSUMERS,
                    "stream" => stream.clone(),
                    "group" => g.name.clone(),
                    "status" => status.as_str()
                )
                .set(g.count(status) as f64);
            }
        }
    }
}

/// One consumer group of a [`StreamSnapshot`].
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct GroupSnapshot {
    /// Group name.
    pub name: String,
    /// Entries delivered to the group and not yet acknowledged (its PEL size).
    pub pending: u64,
    /// Entries not yet delivered to the group (`XINFO GROUPS` `lag`). `None` when
    /// Redis cannot tell (see the module docs): never guessed.
    pub lag: Option<u64>,
    /// Entries the group has read (`entries-read`, Redis 7.0+), `None` when Redis
    /// does not know it. With `pending`, the scaler derives the ack rate from it.
    pub entries_read: Option<u64>,
    /// The last id delivered to the group.
    pub last_delivered_id: EntryId,
    /// The smallest pending id, `None` when nothing is pending.
    pub oldest_pending_id: Option<EntryId>,
    /// How long ago the oldest pending entry was added to the stream: how late
    /// the slowest unfinished work is.
    #[serde(rename = "oldest_pending_age_ms", serialize_with = "opt_ms")]
    pub oldest_pending_age: Option<Duration>,
    /// The longest idle time (since last delivery) among the sampled oldest
    /// pending entries: how long the reclaim loop has left one alone.
    #[serde(rename = "oldest_pending_idle_ms", serialize_with = "opt_ms")]
    pub oldest_pending_idle: Option<Duration>,
    /// Delivery counts over the oldest pending entries, `None` when nothing is
    /// pending or sampling is off: retries building up show here first.
    pub delivery_counts: Option<DeliverySpread>,
    /// The group's consumers, by name.
    pub consumers: Vec<ConsumerSnapshot>,
}

impl GroupSnapshot {
    /// How many consumers have `status`.
    pub fn count(&self, status: Status) -> usize {
        self.consumers.iter().filter(|c| c.status == status).count()
    }

    /// The consumer called `name`, if the group has it.
    pub fn consumer(&self, name: &str) -> Option<&ConsumerSnapshot> {
        self.consumers.iter().find(|c| c.name == name)
    }
}

/// Minimum and maximum delivery count over a sample of the oldest pending entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DeliverySpread {
    /// How many entries were looked at (at most [`MonitorOptions::delivery_sample`]).
    pub sampled: u64,
    /// The smallest delivery count among them.
    pub min: u64,
    /// The largest delivery count among them: close to `max_deliveries` means
    /// entries are about to be dead-lettered.
    pub max: u64,
}

/// One consumer of a [`GroupSnapshot`].
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct ConsumerSnapshot {
    /// Consumer name.
    pub name: String,
    /// Entries delivered to it and not acknowledged.
    pub pending: u64,
    /// Time since its last attempted read or claim (`idle`).
    #[serde(rename = "idle_ms", serialize_with = "ms")]
    pub idle: Duration,
    /// Time since its last successful read or claim (`inactive`, Redis 7.2+);
    /// `None` when the server does not report it, or reports that there was none.
    #[serde(rename = "inactive_ms", serialize_with = "opt_ms")]
    pub inactive: Option<Duration>,
    /// Its health, from the above and the options.
    pub status: Status,
}

/// Takes a [`StreamSnapshot`] of `stream` (see the module docs for its cost).
///
/// Fails with `NoStream` if the stream does not exist, and with `NoGroup` if
/// [`MonitorOptions::group`] names a group it does not have.
pub async fn snapshot(
    conn: &mut Connection,
    stream: &str,
    options: &MonitorOptions,
) -> Result<StreamSnapshot> {
    group::require_stream(conn, stream).await?;
    let now_ms = server_time_ms(conn).await?;
    let ctx = || format!("cannot inspect stream {stream:?}");

    let (info, groups): (Value, Value) = redis::pipe()
        .cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
        .map_err(|e| Error::redis(ctx(), e))?;
    let info = Reply::map(info)?;
    let first_entry_id = entry_id_of(info.get("first-entry"))?;
    let last_entry_id = entry_id_of(info.get("last-entry"))?;
    let age = |id: Option<EntryId>| id.map(|id| age_at(now_ms, id));

    let mut out = StreamSnapshot {
        stream: stream.to_owned(),
        server_time_ms: now_ms,
        length: info.u64("length")?,
        first_entry_id,
        first_entry_age: age(first_entry_id),
        last_entry_id,
        last_entry_age: age(last_entry_id),
        last_generated_id: info.id("last-generated-id")?,
        entries_added: info.opt_u64("entries-added"),
        max_deleted_entry_id: info
            .get("max-deleted-entry-id")
            .and_then(reply::text)
            .and_then(|s| s.parse().ok())
            .filter(|id| *id != EntryId::ZERO),
        groups: Vec::new(),
    };

    for g in reply::list(groups)? {
        let g = Reply::map(g)?;
        let name = g.string("name")?;
        if options.group.as_deref().is_some_and(|want| want != name) {
            continue;
        }
        let pending = g.u64("pending")?;
        let mut snap = GroupSnapshot {
            pending,
            lag: g.opt_u64("lag"),
            entries_read: g.opt_u64("entries-read"),
            last_delivered_id: g.id("last-delivered-id")?,
            oldest_pending_id: None,
            oldest_pending_age: None,
            oldest_pending_idle: None,
            delivery_counts: None,
            consumers: Vec::new(),
            name,
        };
        inspect_group(conn, stream, now_ms, options, &mut snap).await?;
        out.groups.push(snap);
    }
    if let Some(want) = &options.group {
        if out.groups.is_empty() {
            return Err(no_group(stream, want));
        }
    }
    Ok(out)
}

/// Fills in the consumers and the pending details of one group: one pipeline.
async fn inspect_group(
    conn: &mut Connection,
    stream: &str,
    now_ms: u64,
    options: &MonitorOptions,
    snap: &mut GroupSnapshot,
) -> Result<()> {
    let mut pipe = redis::pipe();
    pipe.cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(&snap.name);
    pipe.cmd("XPENDING").arg(stream).arg(&snap.name);
    let sample = options.delivery_sample;
    if sample > 0 && snap.pending > 0 {
        pipe.cmd("XPENDING")
            .arg(stream)
            .arg(&snap.name)
            .arg("-")
            .arg("+")
            .arg(sample);
    }
    let replies: Vec<Value> = pipe.query_async(conn).await.map_err(|e| {
        Error::redis(
            format!("cannot inspect group {:?} of stream {stream:?}", snap.name),
            e,
        )
    })?;
    let mut replies = replies.into_iter();

    let consumers = parse_consumers(replies.next().unwrap_or(Value::Nil))?;
    snap.consumers = consumers
        .into_iter()
        .map(|c| ConsumerSnapshot {
            status: Status::classify(c.pending, c.idle, c.inactive, options),
            name: c.name,
            pending: c.pending,
            idle: c.idle,
            inactive: c.inactive,
        })
        .collect();
    snap.consumers.sort_by(|a, b| a.name.cmp(&b.name));

    // Summary form: [count, min-id, max-id, [[consumer, count], ...]].
    let summary = reply::list(replies.next().unwrap_or(Value::Nil))?;
    if let Some(min) = summary.get(1).and_then(reply::text) {
        let id: EntryId = min.parse()?;
        snap.oldest_pending_id = Some(id);
        snap.oldest_pending_age = Some(age_at(now_ms, id));
    }

    if let Some(extended) = replies.next() {
        let entries = parse_pending(extended)?;
        if !entries.is_empty() {
            let counts = entries.iter().map(|e| e.deliveries);
            snap.delivery_counts = Some(DeliverySpread {
                sampled: entries.len() as u64,
                min: counts.clone().min().unwrap_or(0),
                max: counts.max().unwrap_or(0),
            });
            snap.oldest_pending_idle = entries.iter().map(|e| e.idle).max();
        }
    }
    Ok(())
}

/// What `XINFO CONSUMERS` says about one consumer.
#[derive(Clone, Debug)]
struct ConsumerInfo {
    name: String,
    pending: u64,
    idle: Duration,
    inactive: Option<Duration>,
}

fn parse_consumers(v: Value) -> Result<Vec<ConsumerInfo>> {
    reply::list(v)?
        .into_iter()
        .map(|c| {
            let c = Reply::map(c)?;
            // `inactive` is -1 for a consumer that never read anything; opt_u64
            // turns that (and a missing field, before 7.2) into None.
            Ok(ConsumerInfo {
                name: c.string("name")?,
                pending: c.u64("pending")?,
                idle: Duration::from_millis(c.u64("idle")?),
                inactive: c.opt_u64("inactive").map(Duration::from_millis),
            })
        })
        .collect()
}

/// One entry of the extended form of `XPENDING`.
struct PendingEntry {
    id: EntryId,
    idle: Duration,
    deliveries: u64,
}

/// `[[id, consumer, idle-ms, deliveries], ...]`.
fn parse_pending(v: Value) -> Result<Vec<PendingEntry>> {
    let bad = || {
        Error::new(
            ErrorKind::Redis,
            "unexpected reply from Redis: XPENDING entry",
        )
    };
    reply::list(v)?
        .into_iter()
        .map(|e| {
            let e = reply::list(e)?;
            let field = |i: usize| e.get(i).and_then(reply::text).ok_or_else(bad);
            Ok(PendingEntry {
                id: field(0)?.parse()?,
                idle: Duration::from_millis(field(2)?.parse().map_err(|_| bad())?),
                deliveries: field(3)?.parse().map_err(|_| bad())?,
            })
        })
        .collect()
}

/// The id of an `XINFO STREAM` `first-entry`/`last-entry` (`[id, fields]` or nil).
fn entry_id_of(v: Option<&Value>) -> Result<Option<EntryId>> {
    match v {
        Some(Value::Array(parts)) => match parts.first().and_then(reply::text) {
            Some(id) => Ok(Some(id.parse()?)),
            None => Ok(None),
        },
        _ => Ok(None),
    }
}

/// The server's clock, in ms since the epoch (`TIME`).
async fn server_time_ms(conn: &mut Connection) -> Result<u64> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(conn)
        .await
        .map_err(|e| Error::redis("cannot read the Redis server time", e))?;
    Ok(secs * 1000 + micros / 1000)
}

/// Age of an entry at server time `now_ms`; zero for ids in the future.
fn age_at(now_ms: u64, id: EntryId) -> Duration {
    Duration::from_millis(now_ms.saturating_sub(id.ms))
}

fn no_group(stream: &str, group: &str) -> Error {
    Error::new(
        ErrorKind::NoGroup,
        format!("stream {stream:?} has no group {group:?}"),
    )
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
    /// A monitor on `conn` with `options`.
    pub fn new(conn: Connection, options: MonitorOptions) -> Self {
        Monitor { conn, options }
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
// Cleanup
// ---------------------------------------------------------------------------

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
    LazyLock::new(|| redis::Script::new(include_str!("scripts/delete_consumer_if_idle.lua")));

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
    let v: Value = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .map_err(|e| {
            Error::redis(
                format!("cannot list the consumers of group {group:?} of {stream:?}"),
                e,
            )
        })?;
    let mut consumers = parse_consumers(v)?;
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
        let entries = parse_pending(v)?;
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
    let v: Value = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .map_err(|e| Error::redis(format!("cannot list the consumers of {group:?}"), e))?;
    Ok(parse_consumers(v)?
        .into_iter()
        .find(|c| c.name == consumer)
        .map_or(0, |c| c.pending))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> MonitorOptions {
        MonitorOptions {
            idle_threshold: Duration::from_secs(10),
            pending_warning: 5,
            ..MonitorOptions::default()
        }
    }

    #[test]
    fn statuses() {
        let s = |p, idle: u64, inactive: Option<u64>| {
            Status::classify(
                p,
                Duration::from_secs(idle),
                inactive.map(Duration::from_secs),
                &opts(),
            )
        };
        assert_eq!(s(0, 1, None), Status::Ok);
        assert_eq!(s(3, 1, None), Status::Ok);
        assert_eq!(s(0, 11, None), Status::Idle);
        assert_eq!(s(3, 11, None), Status::Stalled);
        assert_eq!(s(6, 1, None), Status::TooManyPending);
        assert_eq!(s(6, 11, None), Status::Stalled);
        // 7.2: polling (idle small) but no successful read for long, with pending.
        assert_eq!(s(3, 1, Some(11)), Status::Stalled);
        // ... without pending it is just a quiet stream.
        assert_eq!(s(0, 1, Some(11)), Status::Ok);
    }

    #[test]
    fn status_names() {
        assert_eq!(
            serde_json::to_string(&Status::TooManyPending).unwrap(),
            "\"TOO_MANY_PENDING\""
        );
        assert_eq!(
            Status::Idle.reference_text(),
            "WARNING - idle for long time"
        );
        assert_eq!(
            Status::TooManyPending.reference_text(),
            "WARNING - too many pending items"
        );
        assert_eq!(Status::Ok.reference_text(), "OK");
    }

    #[test]
    fn least_loaded_pick_balances() {
        let mut l = Loads(vec![("a".into(), 5), ("b".into(), 0), ("c".into(), 2)]);
        let picks: Vec<usize> = (0..7).map(|_| l.take_one()).collect();
        assert_eq!(picks, [1, 1, 1, 2, 1, 2, 1]);
        assert_eq!(l.0.iter().map(|x| x.1).collect::<Vec<_>>(), [5, 5, 4]);
    }

    #[test]
    fn durations_serialize_as_ms() {
        let c = ConsumerSnapshot {
            name: "c".into(),
            pending: 1,
            idle: Duration::from_millis(1500),
            inactive: None,
            status: Status::Ok,
        };
        let j = serde_json::to_value(&c).unwrap();
        assert_eq!(j["idle_ms"], 1500);
        assert!(j["inactive_ms"].is_null());
        assert_eq!(j["status"], "OK");
    }
}
