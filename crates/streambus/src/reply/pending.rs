//! `XPENDING`: the extended form (one [`PendingEntry`] per row) and the summary.

use std::time::Duration;

use redis::Value;

use super::{bad, list, text, uint};
use crate::error::Result;
use crate::id::EntryId;

/// One entry of the pending entries list (the extended form of `XPENDING`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingEntry {
    /// Its id.
    pub id: EntryId,
    /// The consumer that holds it.
    pub consumer: String,
    /// Time since it was last delivered.
    pub idle: Duration,
    /// How many times it was delivered.
    pub deliveries: u32,
}

/// The extended form of `XPENDING`: `[[id, consumer, idle-ms, deliveries], ...]`.
/// A row that is short or holds a non-numeric count is an error, never a default.
pub(crate) fn pending_entries(v: Value) -> Result<Vec<PendingEntry>> {
    list(v)?.into_iter().map(pending_entry).collect()
}

fn pending_entry(row: Value) -> Result<PendingEntry> {
    let row = list(row)?;
    if row.len() < 4 {
        return Err(bad(
            "XPENDING entry is not [id, consumer, idle, deliveries]",
        ));
    }
    let id = text(&row[0])
        .ok_or_else(|| bad("XPENDING entry id"))?
        .parse()?;
    let consumer = text(&row[1]).ok_or_else(|| bad("XPENDING consumer"))?;
    let idle = uint(&row[2]).ok_or_else(|| bad("XPENDING idle time"))?;
    let deliveries = uint(&row[3]).ok_or_else(|| bad("XPENDING delivery count"))?;
    Ok(PendingEntry {
        id,
        consumer,
        idle: Duration::from_millis(idle),
        // Redis counts in 64 bits; a count past u32::MAX is above any
        // `max_deliveries`, so saturating keeps every decision the same.
        deliveries: u32::try_from(deliveries).unwrap_or(u32::MAX),
    })
}

/// The smallest pending id from the summary form of `XPENDING`
/// (`[count, min-id, max-id, [[consumer, count], ...]]`); `None` when nothing is
/// pending (Redis answers `[0, nil, nil, nil]`).
pub(crate) fn pending_min_id(v: Value) -> Result<Option<EntryId>> {
    let summary = list(v)?;
    match summary.get(1) {
        None => Err(bad("XPENDING summary is not [count, min, max, consumers]")),
        Some(Value::Nil) => Ok(None),
        Some(min) => Ok(Some(
            text(min).ok_or_else(|| bad("XPENDING min id"))?.parse()?,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn row(items: Vec<Value>) -> Value {
        Value::Array(vec![Value::Array(items)])
    }

    #[test]
    fn pending_entries_parse() {
        let v = row(vec![b("5-1"), b("c1"), Value::Int(1500), Value::Int(3)]);
        assert_eq!(
            pending_entries(v).unwrap(),
            [PendingEntry {
                id: EntryId::new(5, 1),
                consumer: "c1".into(),
                idle: Duration::from_millis(1500),
                deliveries: 3,
            }]
        );
        assert!(pending_entries(Value::Nil).unwrap().is_empty());
        let huge = row(vec![b("5-1"), b("c"), Value::Int(0), Value::Int(i64::MAX)]);
        assert_eq!(pending_entries(huge).unwrap()[0].deliveries, u32::MAX);
    }

    #[test]
    fn malformed_pending_entries_are_errors() {
        let cases = [
            // Short row.
            row(vec![b("5-1"), b("c1"), Value::Int(1)]),
            // Non-numeric idle, non-numeric or negative delivery count.
            row(vec![b("5-1"), b("c1"), b("soon"), Value::Int(1)]),
            row(vec![b("5-1"), b("c1"), Value::Int(1), b("many")]),
            row(vec![b("5-1"), b("c1"), Value::Int(1), Value::Int(-1)]),
            // Bad id, missing consumer.
            row(vec![b("x"), b("c1"), Value::Int(1), Value::Int(1)]),
            row(vec![b("5-1"), Value::Nil, Value::Int(1), Value::Int(1)]),
            // Not a list of rows.
            Value::Int(3),
            Value::Array(vec![Value::Int(3)]),
        ];
        for v in cases {
            assert!(pending_entries(v.clone()).is_err(), "{v:?}");
        }
    }

    #[test]
    fn pending_summary() {
        let v = Value::Array(vec![Value::Int(2), b("7-0"), b("9-0"), Value::Nil]);
        assert_eq!(pending_min_id(v).unwrap(), Some(EntryId::new(7, 0)));
        let none = Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil]);
        assert_eq!(pending_min_id(none).unwrap(), None);
        assert!(pending_min_id(Value::Array(vec![Value::Int(0)])).is_err());
        assert!(pending_min_id(Value::Array(vec![Value::Int(1), b("zz")])).is_err());
        assert!(pending_min_id(Value::Int(1)).is_err());
    }
}
