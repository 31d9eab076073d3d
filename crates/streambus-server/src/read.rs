//! Plain (group-less) stream reads: `XREVRANGE` for a stream's last id, `XREAD`
//! for the relay readers, `XRANGE` for replays.
//!
//! The library's reply parser is private, so replies are parsed here from
//! `redis::Value` (RESP2 arrays and RESP3 maps), as the CLI's `tail` does. When
//! the library exposes plain read helpers, this module is what they replace.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use streambus::{Connection, Entry, EntryId, Error, ErrorKind, Fields, Result};

/// Classifies a Redis error as the library does for its own commands
/// (`streambus::Error::redis` is crate-private): lost connections and timeouts
/// are retryable, the rest is a Redis error.
fn redis_err(what: String, e: redis::RedisError) -> Error {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        ErrorKind::Connection
    } else if e.code() == Some("WRONGTYPE") {
        ErrorKind::WrongType
    } else {
        ErrorKind::Redis
    };
    Error::new(kind, format!("{what}: {e}")).with_source(e)
}

fn bad(what: &str) -> Error {
    Error::new(
        ErrorKind::Redis,
        format!("unexpected reply from Redis: {what}"),
    )
}

/// The id of the newest entry of `stream`, `0-0` when it is empty or absent:
/// a reader starting there misses nothing added later.
pub(crate) async fn last_id(conn: &mut Connection, stream: &str) -> Result<EntryId> {
    let v: Value = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await
        .map_err(|e| redis_err(format!("cannot read stream {stream:?}"), e))?;
    let name: Arc<str> = stream.into();
    Ok(entries(&name, v)?.first().map_or(EntryId::ZERO, |e| e.id))
}

/// Up to `count` entries of `stream` after `after`, in order (`XRANGE (after + COUNT n`).
pub(crate) async fn range_after(
    conn: &mut Connection,
    stream: &Arc<str>,
    after: EntryId,
    count: usize,
) -> Result<Vec<Entry>> {
    let v: Value = redis::cmd("XRANGE")
        .arg(&**stream)
        .arg(format!("({after}"))
        .arg("+")
        .arg("COUNT")
        .arg(count.max(1))
        .query_async(conn)
        .await
        .map_err(|e| redis_err(format!("cannot read stream {stream:?}"), e))?;
    entries(stream, v)
}

/// Up to `count` entries of `stream` after `after`, waiting up to `block` for
/// one (`XREAD COUNT n BLOCK ms STREAMS s id`). A blocking read holds its
/// connection: pass one from `Client::connect_blocking`.
pub(crate) async fn after(
    conn: &mut Connection,
    stream: &Arc<str>,
    after: EntryId,
    count: usize,
    block: Duration,
) -> Result<Vec<Entry>> {
    let v: Value = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(count.max(1))
        // BLOCK 0 means forever: never send less than 1 ms.
        .arg("BLOCK")
        .arg(block.as_millis().max(1) as u64)
        .arg("STREAMS")
        .arg(&**stream)
        .arg(after.to_string())
        .query_async(conn)
        .await
        .map_err(|e| redis_err(format!("cannot read stream {stream:?}"), e))?;
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => match streams.into_iter().next() {
            None => Ok(Vec::new()),
            Some(Value::Array(pair)) => {
                let list = pair.into_iter().nth(1).unwrap_or(Value::Nil);
                entries(stream, list)
            }
            Some(_) => Err(bad("XREAD stream is not [name, entries]")),
        },
        Value::Map(streams) => match streams.into_iter().next() {
            None => Ok(Vec::new()),
            Some((_name, list)) => entries(stream, list),
        },
        _ => Err(bad("XREAD reply")),
    }
}

/// A list of `[id, [name, value, ...]]`.
fn entries(stream: &Arc<str>, v: Value) -> Result<Vec<Entry>> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(list) => list
            .into_iter()
            .filter(|e| !matches!(e, Value::Nil))
            .map(|e| entry(stream, e))
            .collect(),
        _ => Err(bad("stream entries")),
    }
}

fn entry(stream: &Arc<str>, v: Value) -> Result<Entry> {
    let Value::Array(parts) = v else {
        return Err(bad("stream entry"));
    };
    let mut parts = parts.into_iter();
    let id = parts
        .next()
        .and_then(bytes)
        .ok_or_else(|| bad("entry without an id"))?;
    let id = EntryId::from_bytes(&id)?;
    let mut fields = Fields::new();
    match parts.next().unwrap_or(Value::Nil) {
        Value::Nil => {}
        Value::Array(flat) => {
            let mut flat = flat.into_iter();
            while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                push(&mut fields, k, v)?;
            }
        }
        Value::Map(pairs) => {
            for (k, v) in pairs {
                push(&mut fields, k, v)?;
            }
        }
        _ => return Err(bad("entry fields")),
    }
    Ok(Entry {
        stream: stream.clone(),
        id,
        fields,
    })
}

fn push(fields: &mut Fields, k: Value, v: Value) -> Result<()> {
    let (Some(k), Some(v)) = (bytes(k), bytes(v)) else {
        return Err(bad("field of a stream entry"));
    };
    fields.push(String::from_utf8_lossy(&k).into_owned(), v);
    Ok(())
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// Up to `max` stream keys found by `SCAN ... TYPE stream` (dead-letter streams
/// left out), for a service with no configured streams. `SCAN` walks the whole
/// keyspace in steps, so the number of steps is bounded too. Not on a cluster
/// (each node has its own keyspace).
pub(crate) async fn discover_streams(conn: &mut Connection, max: usize) -> Result<Vec<String>> {
    /// Keys looked at per step.
    const SCAN_COUNT: usize = 1000;
    /// Steps at most (a million keys at `SCAN_COUNT`).
    const MAX_STEPS: usize = 1000;
    let mut cursor: u64 = 0;
    let mut found = Vec::new();
    for _ in 0..MAX_STEPS {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .arg("TYPE")
            .arg("stream")
            .query_async(conn)
            .await
            .map_err(|e| redis_err("cannot list streams".into(), e))?;
        for k in keys {
            let Ok(k) = String::from_utf8(k) else {
                continue;
            };
            if !k.ends_with(":dlq") && !found.contains(&k) {
                found.push(k);
            }
        }
        cursor = next;
        if cursor == 0 || found.len() >= max {
            break;
        }
    }
    found.sort();
    found.truncate(max);
    Ok(found)
}
