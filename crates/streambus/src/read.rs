//! Reading a stream without a consumer group (`XRANGE`, `XREVRANGE`, `XREAD`):
//! for tailing, replay and relays. Nothing here changes any group's state.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use crate::connection::Connection;
use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::id::EntryId;
use crate::keys;
use crate::reply;

/// Up to `count` (at least 1) entries with ids after `after` (exclusive), oldest first.
pub async fn range_after(
    conn: &mut Connection,
    stream: &str,
    after: Option<EntryId>,
    count: usize,
) -> Result<Vec<Entry>> {
    keys::validate_name("stream", stream)?;
    let start = match after {
        Some(id) => format!("({id}"),
        None => "-".to_owned(),
    };
    let v: Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(count.max(1))
        .query_async(conn)
        .await
        .map_err(|e| Error::redis(format!("cannot read stream {stream:?}"), e))?;
    reply::entries(&Arc::from(stream), v)
}

/// The entry with exactly this id, if it exists.
pub async fn entry(conn: &mut Connection, stream: &str, id: EntryId) -> Result<Option<Entry>> {
    keys::validate_name("stream", stream)?;
    let v: Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg(id)
        .arg(id)
        .query_async(conn)
        .await
        .map_err(|e| Error::redis(format!("cannot read stream {stream:?}"), e))?;
    Ok(reply::entries(&Arc::from(stream), v)?.pop())
}

/// The last `count` (at least 1) entries, oldest first (like `tail`).
pub async fn last(conn: &mut Connection, stream: &str, count: usize) -> Result<Vec<Entry>> {
    keys::validate_name("stream", stream)?;
    let v: Value = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(count.max(1))
        .query_async(conn)
        .await
        .map_err(|e| Error::redis(format!("cannot read stream {stream:?}"), e))?;
    let mut entries = reply::entries(&Arc::from(stream), v)?;
    entries.reverse();
    Ok(entries)
}

/// Up to `count` (at least 1) entries added after `after`, waiting up to `block` for the first
/// (`XREAD`); an empty result when nothing came. Use a connection from
/// [`crate::Client::connect_blocking`] when blocking.
pub async fn read_after(
    conn: &mut Connection,
    stream: &str,
    after: EntryId,
    count: usize,
    block: Option<Duration>,
) -> Result<Vec<Entry>> {
    keys::validate_name("stream", stream)?;
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT").arg(count.max(1));
    if let Some(block) = block {
        cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
    }
    cmd.arg("STREAMS").arg(stream).arg(after);
    let v: Value = cmd
        .query_async(conn)
        .await
        .map_err(|e| Error::redis(format!("cannot read stream {stream:?}"), e))?;
    reply::read_one(&Arc::from(stream), v)
}

/// The id of the newest entry, or `None` for an empty or missing stream.
pub async fn last_id(conn: &mut Connection, stream: &str) -> Result<Option<EntryId>> {
    Ok(last(conn, stream, 1).await?.last().map(|e| e.id))
}

/// Up to `max` stream keys, found with `SCAN … TYPE stream`, sorted; dead-letter
/// streams (`…:dlq`) left out. `SCAN` walks the keyspace in steps, so the number
/// of steps is bounded too (a million keys). On a cluster it sees one node only.
pub async fn list_streams(conn: &mut Connection, max: usize) -> Result<Vec<String>> {
    /// Keys looked at per step.
    const SCAN_COUNT: usize = 1000;
    /// Steps at most.
    const MAX_STEPS: usize = 1000;
    let mut cursor: u64 = 0;
    let mut found = std::collections::BTreeSet::new();
    for _ in 0..MAX_STEPS {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .arg("TYPE")
            .arg("stream")
            .query_async(conn)
            .await
            .map_err(|e| Error::redis("cannot list streams", e))?;
        for k in keys {
            if let Ok(k) = String::from_utf8(k) {
                if !k.ends_with(":dlq") {
                    found.insert(k);
                }
            }
        }
        cursor = next;
        if cursor == 0 || found.len() >= max {
            break;
        }
    }
    Ok(found.into_iter().take(max).collect())
}
