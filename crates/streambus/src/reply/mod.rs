//! Parsing of Redis replies from `redis::Value`, by hand: the generic
//! `StreamReadReply` builds a `HashMap<String, Value>` per entry, which costs more
//! than the rest of the read path together. RESP2 (flat arrays) and RESP3 (maps)
//! are both accepted.
//!
//! One parser per reply shape, one type per reply, and a malformed reply is an
//! error, never a default: reads here, `XPENDING` in [`pending`], `XINFO` in
//! [`info`].

mod info;
mod pending;

use std::sync::Arc;

use redis::Value;

use crate::entry::{Entry, Fields};
use crate::error::{Error, ErrorKind, Result};
use crate::id::EntryId;

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn bad(what: &str) -> Error {
    Error::new(
        ErrorKind::Redis,
        format!("unexpected reply from Redis: {what}"),
    )
}

/// `[id, [k, v, ...]]`. A `nil` field list (an entry deleted while pending) gives
/// an entry with no fields; callers decide what that means.
pub(crate) fn entry(stream: &Arc<str>, v: Value) -> Result<Entry> {
    let Value::Array(mut parts) = v else {
        return Err(bad("stream entry is not an array"));
    };
    if parts.len() != 2 {
        return Err(bad("stream entry is not [id, fields]"));
    }
    let raw_fields = parts.pop().unwrap_or(Value::Nil);
    let id = bytes(parts.pop().unwrap_or(Value::Nil)).ok_or_else(|| bad("entry id"))?;
    let id = EntryId::from_bytes(&id)?;
    let mut fields = Vec::new();
    match raw_fields {
        Value::Array(items) => {
            fields.reserve(items.len() / 2);
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                let k = bytes(k).ok_or_else(|| bad("field name"))?;
                let k = String::from_utf8(k)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                fields.push((k, bytes(v).ok_or_else(|| bad("field value"))?));
            }
        }
        Value::Map(items) => {
            for (k, v) in items {
                let k = bytes(k).ok_or_else(|| bad("field name"))?;
                let k = String::from_utf8_lossy(&k).into_owned();
                fields.push((k, bytes(v).ok_or_else(|| bad("field value"))?));
            }
        }
        Value::Nil => {}
        _ => return Err(bad("entry fields")),
    }
    Ok(Entry {
        stream: stream.clone(),
        id,
        fields: Fields(fields),
    })
}

/// A list of entries (`XRANGE`, the entry list of one stream in `XREAD`).
pub(crate) fn entries(stream: &Arc<str>, v: Value) -> Result<Vec<Entry>> {
    match v {
        // XCLAIM may answer `nil` in place of an entry deleted meanwhile.
        Value::Array(items) => items
            .into_iter()
            .filter(|e| !matches!(e, Value::Nil))
            .map(|e| entry(stream, e))
            .collect(),
        Value::Nil => Ok(Vec::new()),
        _ => Err(bad("entry list is not an array")),
    }
}

/// The reply of `XREAD`/`XREADGROUP` for one stream: `nil` (timed out) or
/// `[[name, [entries...]]]` (RESP2) / `{name: [entries...]}` (RESP3).
pub(crate) fn read_one(stream: &Arc<str>, v: Value) -> Result<Vec<Entry>> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => {
            let mut out = Vec::new();
            for s in streams {
                let Value::Array(mut pair) = s else {
                    return Err(bad("stream reply is not [name, entries]"));
                };
                let list = pair.pop().unwrap_or(Value::Nil);
                out.extend(entries(stream, list)?);
            }
            Ok(out)
        }
        Value::Map(streams) => {
            let mut out = Vec::new();
            for (_, list) in streams {
                out.extend(entries(stream, list)?);
            }
            Ok(out)
        }
        _ => Err(bad("read reply")),
    }
}

/// A list reply.
pub(crate) fn list(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        _ => Err(bad("expected a list")),
    }
}

/// Text of a simple reply value.
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Double(d) => Some(d.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

/// A map-shaped reply (`XINFO ...`): `[k1, v1, k2, v2]` or a RESP3 map.
pub(crate) struct Reply(Vec<(String, Value)>);

impl Reply {
    pub(crate) fn map(v: Value) -> Result<Reply> {
        let pairs = match v {
            Value::Map(m) => m
                .into_iter()
                .map(|(k, v)| (text(&k).unwrap_or_default(), v))
                .collect(),
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len() / 2);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    out.push((text(&k).unwrap_or_default(), v));
                }
                out
            }
            _ => return Err(bad("expected a map")),
        };
        Ok(Reply(pairs))
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub(crate) fn string(&self, key: &str) -> Result<String> {
        self.get(key)
            .and_then(text)
            .ok_or_else(|| bad(&format!("missing field {key}")))
    }

    pub(crate) fn opt_u64(&self, key: &str) -> Option<u64> {
        match self.get(key)? {
            Value::Int(i) => u64::try_from(*i).ok(),
            v => text(v)?.parse().ok(),
        }
    }

    pub(crate) fn u64(&self, key: &str) -> Result<u64> {
        self.opt_u64(key)
            .ok_or_else(|| bad(&format!("missing or non-numeric field {key}")))
    }

    pub(crate) fn id(&self, key: &str) -> Result<EntryId> {
        self.string(key)?.parse()
    }
}

impl Reply {
    /// An optional count: absent or `nil` (Redis cannot tell) is `None`; anything
    /// else must be a non-negative integer, or the reply is malformed.
    pub(crate) fn opt_count(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None | Some(Value::Nil) => Ok(None),
            Some(v) => uint(v)
                .map(Some)
                .ok_or_else(|| bad(&format!("non-numeric field {key}"))),
        }
    }
}

/// A non-negative integer reply (`Int`, or its text in a bulk string).
fn uint(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        v => text(v)?.parse().ok(),
    }
}

pub(crate) use info::{consumers, groups, xinfo_consumers, xinfo_stream_and_groups};
pub use pending::PendingEntry;
pub(crate) use pending::{pending_entries, pending_min_id};
