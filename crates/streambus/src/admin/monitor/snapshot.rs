//! [`snapshot`]: a point-in-time view of a stream, its groups and their
//! consumers, in O(groups + consumers) commands (see the module docs of
//! [`crate::admin::monitor`]).

use std::time::Duration;

use redis::Value;
use serde::Serialize;

use super::{ms, opt_ms, MonitorOptions, Status};
use crate::admin::group;
use crate::connection::Connection;
use crate::error::{Error, ErrorKind, Result};
use crate::id::EntryId;
use crate::metrics;
use crate::reply;

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

    let (info, groups) = reply::xinfo_stream_and_groups(conn, stream).await?;
    let age = |id: Option<EntryId>| id.map(|id| age_at(now_ms, id));

    let mut out = StreamSnapshot {
        stream: stream.to_owned(),
        server_time_ms: now_ms,
        length: info.length,
        first_entry_id: info.first_entry_id,
        first_entry_age: age(info.first_entry_id),
        last_entry_id: info.last_entry_id,
        last_entry_age: age(info.last_entry_id),
        last_generated_id: info.last_generated_id,
        entries_added: info.entries_added,
        max_deleted_entry_id: info.max_deleted_entry_id,
        groups: Vec::new(),
    };

    for g in groups {
        if options.group.as_deref().is_some_and(|want| want != g.name) {
            continue;
        }
        let mut snap = GroupSnapshot {
            pending: g.pending,
            lag: g.lag,
            entries_read: g.entries_read,
            last_delivered_id: g.last_delivered_id,
            oldest_pending_id: None,
            oldest_pending_age: None,
            oldest_pending_idle: None,
            delivery_counts: None,
            consumers: Vec::new(),
            name: g.name,
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

    let consumers = reply::consumers(replies.next().unwrap_or(Value::Nil))?;
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

    if let Some(id) = reply::pending_min_id(replies.next().unwrap_or(Value::Nil))? {
        snap.oldest_pending_id = Some(id);
        snap.oldest_pending_age = Some(age_at(now_ms, id));
    }

    if let Some(extended) = replies.next() {
        let entries = reply::pending_entries(extended)?;
        if !entries.is_empty() {
            let counts = entries.iter().map(|e| u64::from(e.deliveries));
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

#[cfg(test)]
mod tests {
    use super::*;

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
