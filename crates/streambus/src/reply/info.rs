//! `XINFO STREAM`, `XINFO GROUPS` and `XINFO CONSUMERS`.

use std::time::Duration;

use redis::Value;

use super::{bad, list, text, uint, Reply};
use crate::error::{Error, Result};
use crate::id::EntryId;

/// What `XINFO STREAM key` says (the fields streambus uses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StreamInfo {
    /// Entries in the stream.
    pub(crate) length: u64,
    /// Id of the first entry, `None` when the stream is empty.
    pub(crate) first_entry_id: Option<EntryId>,
    /// Id of the last entry, `None` when the stream is empty.
    pub(crate) last_entry_id: Option<EntryId>,
    /// The last id Redis generated.
    pub(crate) last_generated_id: EntryId,
    /// Entries ever added (Redis 7.0+).
    pub(crate) entries_added: Option<u64>,
    /// The largest id deleted with `XDEL` (Redis 7.0+); `None` when there was
    /// none (Redis says `0-0`).
    pub(crate) max_deleted_entry_id: Option<EntryId>,
}

/// The reply of `XINFO STREAM key`.
pub(crate) fn stream_info(v: Value) -> Result<StreamInfo> {
    let info = Reply::map(v)?;
    let max_deleted = match info.get("max-deleted-entry-id") {
        None | Some(Value::Nil) => None,
        Some(v) => Some(
            text(v)
                .ok_or_else(|| bad("field max-deleted-entry-id"))?
                .parse::<EntryId>()?,
        ),
    };
    Ok(StreamInfo {
        length: info.u64("length")?,
        first_entry_id: entry_id_of(info.get("first-entry"))?,
        last_entry_id: entry_id_of(info.get("last-entry"))?,
        last_generated_id: info.id("last-generated-id")?,
        entries_added: info.opt_count("entries-added")?,
        max_deleted_entry_id: max_deleted.filter(|id| *id != EntryId::ZERO),
    })
}

/// The id of an `XINFO STREAM` `first-entry`/`last-entry`: `[id, fields]`, or
/// `nil` for an empty stream.
fn entry_id_of(v: Option<&Value>) -> Result<Option<EntryId>> {
    match v {
        None | Some(Value::Nil) => Ok(None),
        Some(Value::Array(parts)) => {
            let id = parts
                .first()
                .and_then(text)
                .ok_or_else(|| bad("entry id"))?;
            Ok(Some(id.parse()?))
        }
        Some(_) => Err(bad("stream entry is not [id, fields]")),
    }
}

/// The reply of `XINFO GROUPS key`.
pub(crate) fn groups(v: Value) -> Result<Vec<crate::admin::group::GroupInfo>> {
    list(v)?
        .into_iter()
        .map(|g| {
            let g = Reply::map(g)?;
            Ok(crate::admin::group::GroupInfo {
                name: g.string("name")?,
                consumers: g.u64("consumers")?,
                pending: g.u64("pending")?,
                last_delivered_id: g.id("last-delivered-id")?,
                entries_read: g.opt_count("entries-read")?,
                lag: g.opt_count("lag")?,
            })
        })
        .collect()
}

/// What `XINFO CONSUMERS` says about one consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ConsumerInfo {
    /// Its name.
    pub(crate) name: String,
    /// Entries delivered to it and not acknowledged.
    pub(crate) pending: u64,
    /// Time since its last attempted read or claim.
    pub(crate) idle: Duration,
    /// Time since its last successful read or claim (Redis 7.2+); `None` before
    /// 7.2 (no field) and for a consumer that never read anything (`-1`).
    pub(crate) inactive: Option<Duration>,
}

/// The reply of `XINFO CONSUMERS key group`.
pub(crate) fn consumers(v: Value) -> Result<Vec<ConsumerInfo>> {
    list(v)?
        .into_iter()
        .map(|c| {
            let c = Reply::map(c)?;
            let inactive = match c.get("inactive") {
                None | Some(Value::Nil) => None,
                Some(Value::Int(i)) if *i < 0 => None,
                Some(v) => Some(Duration::from_millis(
                    uint(v).ok_or_else(|| bad("non-numeric field inactive"))?,
                )),
            };
            Ok(ConsumerInfo {
                name: c.string("name")?,
                pending: c.u64("pending")?,
                idle: Duration::from_millis(c.u64("idle")?),
                inactive,
            })
        })
        .collect()
}

/// `XINFO STREAM key` and `XINFO GROUPS key` in one round trip, parsed.
pub(crate) async fn xinfo_stream_and_groups(
    conn: &mut crate::connection::Connection,
    stream: &str,
) -> Result<(StreamInfo, Vec<crate::admin::group::GroupInfo>)> {
    let (info, list): (Value, Value) = redis::pipe()
        .cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
        .map_err(|e| Error::redis(format!("cannot inspect stream {stream:?}"), e))?;
    Ok((stream_info(info)?, groups(list)?))
}

/// `XINFO CONSUMERS key group`, parsed.
pub(crate) async fn xinfo_consumers(
    conn: &mut crate::connection::Connection,
    stream: &str,
    group: &str,
) -> Result<Vec<ConsumerInfo>> {
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
    consumers(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn consumer(fields: &[(&str, Value)]) -> Value {
        let mut flat = Vec::new();
        for (k, v) in fields {
            flat.push(b(k));
            flat.push(v.clone());
        }
        Value::Array(vec![Value::Array(flat)])
    }

    #[test]
    fn consumers_parse_resp2_and_resp3() {
        let v = consumer(&[
            ("name", b("c1")),
            ("pending", Value::Int(2)),
            ("idle", Value::Int(10)),
            ("inactive", Value::Int(-1)),
        ]);
        let want = ConsumerInfo {
            name: "c1".into(),
            pending: 2,
            idle: Duration::from_millis(10),
            inactive: None,
        };
        assert_eq!(consumers(v).unwrap(), std::slice::from_ref(&want));
        let map = Value::Array(vec![Value::Map(vec![
            (b("name"), b("c1")),
            (b("pending"), Value::Int(2)),
            (b("idle"), Value::Int(10)),
            (b("inactive"), Value::Int(7)),
        ])]);
        let got = consumers(map).unwrap();
        assert_eq!(got[0].inactive, Some(Duration::from_millis(7)));
        // Before 7.2: no `inactive` field.
        let old = consumer(&[
            ("name", b("c1")),
            ("pending", Value::Int(2)),
            ("idle", Value::Int(10)),
        ]);
        assert_eq!(consumers(old).unwrap(), [want]);
    }

    #[test]
    fn malformed_consumers_are_errors() {
        let cases = [
            consumer(&[("pending", Value::Int(2)), ("idle", Value::Int(10))]),
            consumer(&[("name", b("c")), ("idle", Value::Int(10))]),
            consumer(&[
                ("name", b("c")),
                ("pending", b("x")),
                ("idle", Value::Int(1)),
            ]),
            consumer(&[
                ("name", b("c")),
                ("pending", Value::Int(1)),
                ("idle", Value::Int(-5)),
            ]),
            consumer(&[
                ("name", b("c")),
                ("pending", Value::Int(1)),
                ("idle", Value::Int(1)),
                ("inactive", b("later")),
            ]),
            Value::Array(vec![Value::Int(1)]),
            Value::Int(1),
        ];
        for v in cases {
            assert!(consumers(v.clone()).is_err(), "{v:?}");
        }
    }

    fn map(fields: &[(&str, Value)]) -> Value {
        let mut flat = Vec::new();
        for (k, v) in fields {
            flat.push(b(k));
            flat.push(v.clone());
        }
        Value::Array(flat)
    }

    fn group_fields(lag: Value) -> Value {
        map(&[
            ("name", b("g")),
            ("consumers", Value::Int(2)),
            ("pending", Value::Int(3)),
            ("last-delivered-id", b("9-0")),
            ("entries-read", Value::Int(12)),
            ("lag", lag),
        ])
    }

    #[test]
    fn groups_parse_and_reject_malformed_counts() {
        let g = groups(Value::Array(vec![group_fields(Value::Int(4))])).unwrap();
        assert_eq!(
            (g[0].name.as_str(), g[0].consumers, g[0].pending, g[0].lag),
            ("g", 2, 3, Some(4))
        );
        assert_eq!(g[0].entries_read, Some(12));
        assert_eq!(g[0].last_delivered_id, EntryId::new(9, 0));
        // Redis cannot tell the lag: nil, never a guess.
        let g = groups(Value::Array(vec![group_fields(Value::Nil)])).unwrap();
        assert_eq!(g[0].lag, None);
        for bad in [b("lots"), Value::Int(-1)] {
            assert!(groups(Value::Array(vec![group_fields(bad)])).is_err());
        }
        assert!(groups(Value::Array(vec![map(&[("name", b("g"))])])).is_err());
        assert!(groups(Value::Int(1)).is_err());
    }

    fn stream_fields(first: Value, max_deleted: Value) -> Value {
        map(&[
            ("length", Value::Int(2)),
            ("last-generated-id", b("8-0")),
            ("max-deleted-entry-id", max_deleted),
            ("entries-added", Value::Int(5)),
            ("first-entry", first),
            ("last-entry", Value::Nil),
        ])
    }

    #[test]
    fn stream_info_parses_and_rejects_malformed_fields() {
        let first = Value::Array(vec![b("7-1"), Value::Array(vec![b("k"), b("v")])]);
        let info = stream_info(stream_fields(first.clone(), b("0-0"))).unwrap();
        assert_eq!(info.length, 2);
        assert_eq!(info.first_entry_id, Some(EntryId::new(7, 1)));
        assert_eq!(info.last_entry_id, None);
        assert_eq!(info.last_generated_id, EntryId::new(8, 0));
        assert_eq!(info.entries_added, Some(5));
        assert_eq!(info.max_deleted_entry_id, None);
        let info = stream_info(stream_fields(first.clone(), b("6-0"))).unwrap();
        assert_eq!(info.max_deleted_entry_id, Some(EntryId::new(6, 0)));
        assert!(stream_info(stream_fields(first, b("six"))).is_err());
        assert!(stream_info(stream_fields(b("7-1"), b("0-0"))).is_err());
        let no_id = Value::Array(vec![Value::Nil, Value::Nil]);
        assert!(stream_info(stream_fields(no_id, b("0-0"))).is_err());
        assert!(stream_info(map(&[("length", Value::Int(1))])).is_err());
    }
}
