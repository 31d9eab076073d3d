//! The scaler's inputs: a [`Sample`] of a group's counters, and [`sample`], the
//! thin async part that takes one (two O(1) commands).

use std::time::Instant;

use crate::admin::group;
use crate::admin::monitor::StreamSnapshot;
use crate::connection::Connection;
use crate::error::{Error, ErrorKind, Result};
use crate::keys;
use crate::reply;

/// The counters of one stream and group at one moment, as Redis gives them.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Sample {
    /// When it was taken (the caller's clock; only differences matter).
    pub at: Instant,
    /// Entries ever added to the stream (`XINFO STREAM` `entries-added`, Redis
    /// 7.0+): arrivals are its growth.
    pub entries_added: Option<u64>,
    /// Entries the group has read (`XINFO GROUPS` `entries-read`, 7.0+).
    /// Acknowledged so far = `entries_read - pending`, so the ack rate is the
    /// growth of that.
    pub entries_read: Option<u64>,
    /// Entries not yet delivered to the group; `None` when Redis cannot tell.
    pub lag: Option<u64>,
    /// Entries delivered and not acknowledged.
    pub pending: u64,
    /// Consumers the group has (dead ones included until cleanup deletes them).
    pub consumers: u64,
}

impl Sample {
    /// A sample from counters (for tests and for callers with their own source).
    pub fn new(
        at: Instant,
        entries_added: Option<u64>,
        entries_read: Option<u64>,
        lag: Option<u64>,
        pending: u64,
        consumers: u64,
    ) -> Self {
        Sample {
            at,
            entries_added,
            entries_read,
            lag,
            pending,
            consumers,
        }
    }

    /// The sample of `group` in a monitor snapshot taken at `at`.
    pub fn from_snapshot(snapshot: &StreamSnapshot, group: &str, at: Instant) -> Option<Self> {
        let g = snapshot.group(group)?;
        Some(Sample {
            at,
            entries_added: snapshot.entries_added,
            entries_read: g.entries_read,
            lag: g.lag,
            pending: g.pending,
            consumers: g.consumers.len() as u64,
        })
    }

    /// Entries acknowledged (or otherwise gone from the pending list) so far.
    /// Falls back to `entries_added - lag` for the read count when Redis does not
    /// report `entries-read`.
    pub(super) fn acked(&self) -> Option<u64> {
        let read = self.entries_read.or_else(|| {
            self.entries_added
                .zip(self.lag)
                .map(|(a, l)| a.saturating_sub(l))
        })?;
        Some(read.saturating_sub(self.pending))
    }
}

/// Takes a [`Sample`] of `group` on `stream`: `XINFO STREAM` and `XINFO GROUPS`,
/// fresh every call.
pub async fn sample(conn: &mut Connection, stream: &str, group: &str) -> Result<Sample> {
    keys::validate_name("group", group)?;
    group::require_stream(conn, stream).await?;
    let (info, groups) = reply::xinfo_stream_and_groups(conn, stream).await?;
    let at = Instant::now();
    for g in groups {
        if g.name == group {
            return Ok(Sample {
                at,
                entries_added: info.entries_added,
                entries_read: g.entries_read,
                lag: g.lag,
                pending: g.pending,
                consumers: g.consumers,
            });
        }
    }
    Err(Error::new(
        ErrorKind::NoGroup,
        format!("stream {stream:?} has no group {group:?}"),
    ))
}
