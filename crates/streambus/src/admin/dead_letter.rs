//! The dead-letter stream: where entries go that cannot be processed.
//!
//! Each stream has one, `{<stream>}:dlq` (see [`crate::keys::dead_letter`]), in the
//! stream's hash slot. A dead letter holds the original fields followed by these
//! metadata fields (so if the original had a field of the same name, the last
//! occurrence is the metadata):
//!
//! | field | meaning |
//! |---|---|
//! | `reason` | why it was dead-lettered (handler's reason, panic message, "not decodable", ...) |
//! | `group` | the consumer group that gave up on it |
//! | `consumer` | the consumer that last held it |
//! | `deliveries` | how many times it was delivered |
//! | `source_id` | its entry id in the original stream |
//! | `source_stream` | the original stream |
//!
//! Moving an entry here and acknowledging it in its group is one script, so a
//! crash in between neither loses nor doubles it. So is [`replay`].

use std::sync::LazyLock;

use redis::{Script, Value};
use serde::Serialize;

use crate::connection::Connection;
use crate::entry::{Entry, Fields};
use crate::error::{Error, ErrorKind, Result};
use crate::id::EntryId;
use crate::keys;
use crate::reply;

static MOVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/dead_letter.lua")));
static REPLAY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/replay.lua")));

/// Names of the metadata fields, in the order they are appended.
pub const METADATA_FIELDS: [&str; 6] = [
    "reason",
    "group",
    "consumer",
    "deliveries",
    "source_id",
    "source_stream",
];

/// What `move_entry` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MoveResult {
    /// Moved to the dead-letter stream and acknowledged.
    Moved,
    /// The entry was no longer in the stream (trimmed or deleted); it was
    /// acknowledged, as there is nothing left to keep.
    Gone,
    /// The entry was not pending any more: someone else acknowledged or moved it.
    NotPending,
    /// Another consumer holds it and it has not been idle long enough.
    OwnedByOther,
}

/// The single field that holds the fields of a very wide entry (more than 3,500
/// fields) as a JSON array, because a Lua script cannot pass more arguments to
/// XADD. Listing and replaying decode it back.
pub const WIDE_FIELDS: &str = "fields_json";

/// Who may move an entry: its owner only, or anyone once it has been idle long enough.
#[derive(Clone, Copy, Debug)]
pub(crate) enum MoveGuard {
    /// Only when `consumer` owns the entry.
    Owner,
    /// When `consumer` owns it, or it has been idle at least this long.
    IdleAtLeast(std::time::Duration),
}

/// What to move to the dead-letter stream, and on whose authority.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MoveRequest<'a> {
    pub stream: &'a str,
    pub group: &'a str,
    /// The consumer doing the move (recorded if it owns the entry).
    pub consumer: &'a str,
    pub id: EntryId,
    pub reason: &'a str,
    pub guard: MoveGuard,
    /// Approximate MAXLEN of the dead-letter stream, if bounded.
    pub maxlen: Option<u64>,
}

/// Moves a pending entry to the dead-letter stream with its reason, and
/// acknowledges it, atomically.
pub(crate) async fn move_entry(conn: &mut Connection, r: MoveRequest<'_>) -> Result<MoveResult> {
    let min_idle: i64 = match r.guard {
        MoveGuard::Owner => -1,
        MoveGuard::IdleAtLeast(d) => d.as_millis().min(i64::MAX as u128) as i64,
    };
    let n: i64 = MOVE
        .key(r.stream)
        .key(keys::dead_letter(r.stream))
        .arg(r.group)
        .arg(r.id)
        .arg(r.consumer)
        .arg(min_idle)
        .arg(r.reason)
        .arg(r.maxlen.unwrap_or(0))
        .invoke_async(conn)
        .await
        .map_err(|e| {
            Error::redis(
                format!("cannot dead-letter entry {} of {:?}", r.id, r.stream),
                e,
            )
        })?;
    Ok(match n {
        1 => MoveResult::Moved,
        2 => MoveResult::Gone,
        0 => MoveResult::NotPending,
        _ => MoveResult::OwnedByOther,
    })
}

/// One entry of a dead-letter stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Its id in the dead-letter stream (what [`replay`] and [`delete`] take).
    pub id: EntryId,
    /// Why it was dead-lettered.
    pub reason: Option<String>,
    /// The group that gave up on it.
    pub group: Option<String>,
    /// The consumer that last held it.
    pub consumer: Option<String>,
    /// How many times it had been delivered.
    pub deliveries: Option<u64>,
    /// Its id in the original stream.
    pub source_id: Option<EntryId>,
    /// The original fields, without the metadata.
    #[serde(serialize_with = "serialize_fields")]
    pub fields: Fields,
}

fn serialize_fields<S: serde::Serializer>(
    f: &Fields,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    f.to_json().serialize(s)
}

impl DeadLetter {
    /// Splits a dead-letter entry into original fields and metadata.
    pub fn from_entry(entry: Entry) -> DeadLetter {
        let mut pairs = entry.fields.into_pairs();
        let has_metadata = pairs.len() >= METADATA_FIELDS.len()
            && pairs[pairs.len() - METADATA_FIELDS.len()..]
                .iter()
                .zip(METADATA_FIELDS)
                .all(|((k, _), name)| k == name);
        let mut meta: Vec<Option<String>> = vec![None; METADATA_FIELDS.len()];
        if has_metadata {
            let tail = pairs.split_off(pairs.len() - METADATA_FIELDS.len());
            for (slot, (_, v)) in meta.iter_mut().zip(tail) {
                *slot = Some(String::from_utf8_lossy(&v).into_owned());
            }
        }
        // A very wide entry's fields are kept as one JSON array (see the script).
        if let [(name, json)] = pairs.as_slice() {
            if name == WIDE_FIELDS {
                if let Ok(flat) = serde_json::from_slice::<Vec<String>>(json) {
                    pairs = flat
                        .chunks(2)
                        .map(|kv| {
                            (
                                kv[0].clone(),
                                kv.get(1).cloned().unwrap_or_default().into_bytes(),
                            )
                        })
                        .collect();
                }
            }
        }
        DeadLetter {
            id: entry.id,
            reason: meta[0].take(),
            group: meta[1].take(),
            consumer: meta[2].take(),
            deliveries: meta[3].as_deref().and_then(|d| d.parse().ok()),
            source_id: meta[4].as_deref().and_then(|d| d.parse().ok()),
            fields: Fields::from_pairs(pairs),
        }
    }
}

/// Lists up to `count` dead letters of `stream`, oldest first, starting after `after`.
pub async fn list(
    conn: &mut Connection,
    stream: &str,
    after: Option<EntryId>,
    count: usize,
) -> Result<Vec<DeadLetter>> {
    keys::validate_name("stream", stream)?;
    let letters = crate::read::range_after(conn, &keys::dead_letter(stream), after, count).await?;
    Ok(letters.into_iter().map(DeadLetter::from_entry).collect())
}

/// Number of dead letters of `stream`.
pub async fn count(conn: &mut Connection, stream: &str) -> Result<u64> {
    redis::cmd("XLEN")
        .arg(keys::dead_letter(stream))
        .query_async(conn)
        .await
        .map_err(|e| Error::redis(format!("cannot count dead letters of {stream:?}"), e))
}

/// Puts dead letter `id` back onto `stream` as a new entry (original fields only)
/// and removes it from the dead-letter stream, atomically. Returns the new entry
/// id, or `None` if there is no such dead letter.
pub async fn replay(conn: &mut Connection, stream: &str, id: EntryId) -> Result<Option<EntryId>> {
    keys::validate_name("stream", stream)?;
    let dlq = keys::dead_letter(stream);
    let v: Value = REPLAY
        .key(&dlq)
        .key(stream)
        .arg(id)
        .arg(METADATA_FIELDS.len())
        .arg(WIDE_FIELDS)
        .invoke_async(conn)
        .await
        .map_err(|e| Error::redis(format!("cannot replay dead letter {id} onto {stream:?}"), e))?;
    match v {
        Value::Nil | Value::Boolean(false) | Value::Int(0) => Ok(None),
        Value::Int(_) => replay_wide(conn, stream, &dlq, id).await,
        other => {
            let text = reply::text(&other).ok_or_else(|| {
                Error::new(
                    ErrorKind::Redis,
                    format!("unexpected replay reply {other:?}"),
                )
            })?;
            Ok(Some(text.parse()?))
        }
    }
}

/// Replays a dead letter whose fields are kept as JSON (too many for a script):
/// decoded here, re-added and removed in one MULTI/EXEC. Two replays of the same
/// letter at the same moment could both re-add it (a duplicate, never a loss).
async fn replay_wide(
    conn: &mut Connection,
    stream: &str,
    dlq: &str,
    id: EntryId,
) -> Result<Option<EntryId>> {
    let Some(letter) = crate::read::entry(conn, dlq, id).await? else {
        return Ok(None);
    };
    let letter = DeadLetter::from_entry(letter);
    let mut xadd = redis::cmd("XADD");
    xadd.arg(stream).arg("*");
    for (k, v) in letter.fields.iter() {
        xadd.arg(k).arg(v);
    }
    let (new_id, _): (String, i64) = redis::pipe()
        .atomic()
        .add_command(xadd)
        .cmd("XDEL")
        .arg(dlq)
        .arg(id)
        .query_async(conn)
        .await
        .map_err(|e| Error::redis(format!("cannot replay dead letter {id} onto {stream:?}"), e))?;
    Ok(Some(new_id.parse()?))
}

/// Replays every dead letter of `stream` (see [`replay`]); returns how many.
pub async fn replay_all(conn: &mut Connection, stream: &str) -> Result<u64> {
    let mut n = 0;
    let mut after = None;
    loop {
        let batch = list(conn, stream, after, 500).await?;
        let Some(last) = batch.last() else {
            return Ok(n);
        };
        after = Some(last.id);
        for dl in batch {
            if replay(conn, stream, dl.id).await?.is_some() {
                n += 1;
            }
        }
    }
}

/// Deletes the dead-letter stream of `stream`; returns how many letters it held.
pub async fn purge(conn: &mut Connection, stream: &str) -> Result<u64> {
    keys::validate_name("stream", stream)?;
    let dlq = keys::dead_letter(stream);
    let (n, _): (u64, i64) = redis::pipe()
        .atomic()
        .cmd("XLEN")
        .arg(&dlq)
        .cmd("DEL")
        .arg(&dlq)
        .query_async(conn)
        .await
        .map_err(|e| Error::redis(format!("cannot purge dead letters of {stream:?}"), e))?;
    Ok(n)
}

/// Deletes single dead letters; returns how many existed.
pub async fn delete(conn: &mut Connection, stream: &str, ids: &[EntryId]) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    redis::cmd("XDEL")
        .arg(keys::dead_letter(stream))
        .arg(ids)
        .query_async(conn)
        .await
        .map_err(|e| Error::redis(format!("cannot delete dead letters of {stream:?}"), e))
}
