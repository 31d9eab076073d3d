//! Plain (group-less) stream reads for `tail`: XREVRANGE for the newest entries,
//! XREAD for entries after an id.
//!
//! The library's reply parser is private, so replies are parsed here from
//! `redis::Value` (RESP2 arrays and RESP3 maps). When the library exposes
//! read helpers, this module is what they replace.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use redis::Value;
use streambus::{Connection, Entry, EntryId, Fields};

/// The newest `count` entries of `stream`, newest first (XREVRANGE + - COUNT n).
/// Empty when the stream does not exist.
pub async fn newest(conn: &mut Connection, stream: &Arc<str>, count: u64) -> Result<Vec<Entry>> {
    let v: Value = redis::cmd("XREVRANGE")
        .arg(&**stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await
        .with_context(|| format!("cannot read stream {stream:?}"))?;
    entries(stream, v)
}

/// Up to `count` entries of `stream` with ids greater than `after` (XREAD),
/// waiting up to `block` for one to arrive (no waiting with `None`). Empty when
/// nothing came, including when the stream does not exist.
///
/// A blocking read holds its connection: pass one from `connect_blocking`.
pub async fn after(
    conn: &mut Connection,
    stream: &Arc<str>,
    after: EntryId,
    count: u64,
    block: Option<Duration>,
) -> Result<Vec<Entry>> {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT").arg(count.max(1));
    if let Some(block) = block {
        // BLOCK 0 means forever: never send less than 1 ms.
        cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
    }
    cmd.arg("STREAMS").arg(&**stream).arg(after);
    let v: Value = cmd
        .query_async(conn)
        .await
        .with_context(|| format!("cannot read stream {stream:?}"))?;
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => match streams.into_iter().next() {
            None => Ok(Vec::new()),
            Some(Value::Array(pair)) => {
                let mut pair = pair.into_iter();
                let (_name, list) = (pair.next(), pair.next().unwrap_or(Value::Nil));
                entries(stream, list)
            }
            Some(other) => bail!("unexpected XREAD reply: {other:?}"),
        },
        Value::Map(streams) => match streams.into_iter().next() {
            None => Ok(Vec::new()),
            Some((_name, list)) => entries(stream, list),
        },
        other => bail!("unexpected XREAD reply: {other:?}"),
    }
}

/// A list of `[id, [name, value, ...]]`.
fn entries(stream: &Arc<str>, v: Value) -> Result<Vec<Entry>> {
    let list = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(list) => list,
        other => bail!("unexpected stream entries reply: {other:?}"),
    };
    list.into_iter().map(|e| entry(stream, e)).collect()
}

fn entry(stream: &Arc<str>, v: Value) -> Result<Entry> {
    let Value::Array(parts) = v else {
        bail!("unexpected stream entry: {v:?}");
    };
    let mut parts = parts.into_iter();
    let id = parts
        .next()
        .and_then(bytes)
        .ok_or_else(|| anyhow!("stream entry without an id"))?;
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
        other => bail!("unexpected fields of entry {id}: {other:?}"),
    }
    Ok(Entry {
        stream: stream.clone(),
        id,
        fields,
    })
}

fn push(fields: &mut Fields, k: Value, v: Value) -> Result<()> {
    let (Some(k), Some(v)) = (bytes(k), bytes(v)) else {
        bail!("unexpected field in a stream entry");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bs(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_entries_with_binary_values_and_deleted_ones() {
        let stream: Arc<str> = "s".into();
        let v = Value::Array(vec![
            Value::Array(vec![
                bs("1-2"),
                Value::Array(vec![bs("a"), Value::BulkString(vec![0xff, 0])]),
            ]),
            Value::Array(vec![bs("1-3"), Value::Nil]),
        ]);
        let got = entries(&stream, v).unwrap();
        assert_eq!(got[0].id, EntryId::new(1, 2));
        assert_eq!(got[0].fields.get("a"), Some(&[0xff, 0][..]));
        assert!(got[1].fields.is_empty());
        assert!(entries(&stream, Value::Nil).unwrap().is_empty());
    }
}
