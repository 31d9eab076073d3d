//! The line `publish` prints for each message written, in input order: its
//! entry id; to a partitioned stream `PARTITION_KEY ENTRY_ID`; with `--json`
//! one JSON object.
//!
//! The JSON object names the entry id `entry_id`, as the lines of `tail` and
//! `consume` do, and the envelope id `envelope_id` (null for a raw `--field`
//! entry); to a partitioned stream, `stream` is the logical stream, as in
//! `tail`, with the partition's index (`partition`) and key (`partition_key`).

use std::io;

use serde::Serialize;
use streambus::EntryId;

use crate::output::Lines;

/// How the messages written are reported on stdout.
pub(super) struct Report {
    /// The stream as the user named it (the logical stream if partitioned).
    stream: String,
    /// The partition keys in partition order; `None` for a plain stream.
    partitions: Option<Vec<String>>,
    json: bool,
}

/// One message written (`publish --json`).
#[derive(Debug, Serialize)]
struct Published<'a> {
    stream: &'a str,
    entry_id: EntryId,
    envelope_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition_key: Option<&'a str>,
}

impl Report {
    pub fn new(stream: &str, partitions: Option<&[String]>, json: bool) -> Report {
        Report {
            stream: stream.to_owned(),
            partitions: partitions.map(<[String]>::to_vec),
            json,
        }
    }

    /// Whether the lines need the envelope ids: only JSON shows them, and
    /// keeping them costs an allocation per message.
    pub fn shows_envelope_ids(&self) -> bool {
        self.json
    }

    /// The line of a message written to stream `at` (0 for a plain stream,
    /// else the partition's index) as entry `id`.
    pub fn print(
        &self,
        out: &mut Lines,
        at: usize,
        id: EntryId,
        envelope_id: Option<&str>,
    ) -> io::Result<()> {
        if self.json {
            return out.json(&self.published(at, id, envelope_id));
        }
        match &self.partitions {
            Some(keys) => out.line(format_args!("{} {id}", keys[at])),
            None => out.line(id),
        }
    }

    /// The JSON object of a message written to stream `at` as entry `id`.
    fn published<'a>(
        &'a self,
        at: usize,
        id: EntryId,
        envelope_id: Option<&'a str>,
    ) -> Published<'a> {
        let key = self.partitions.as_ref().map(|keys| keys[at].as_str());
        Published {
            stream: &self.stream,
            entry_id: id,
            envelope_id,
            partition: key.map(|_| at),
            partition_key: key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(report: &Report, at: usize, envelope_id: Option<&str>) -> serde_json::Value {
        serde_json::to_value(report.published(at, EntryId::new(5, 1), envelope_id)).unwrap()
    }

    #[test]
    fn json_names_the_entry_and_the_envelope_and_the_partition_if_any() {
        let plain = Report::new("s", None, true);
        assert_eq!(
            json(&plain, 0, Some("u-1")),
            serde_json::json!({"stream": "s", "entry_id": "5-1", "envelope_id": "u-1"})
        );
        assert_eq!(
            json(&plain, 0, None)["envelope_id"],
            serde_json::Value::Null
        );
        let keys = ["s:p0{a}".to_owned(), "s:p1{b}".to_owned()];
        let partitioned = Report::new("s", Some(&keys), true);
        assert_eq!(
            json(&partitioned, 1, Some("u-2")),
            serde_json::json!({
                "stream": "s", "entry_id": "5-1", "envelope_id": "u-2",
                "partition": 1, "partition_key": "s:p1{b}",
            })
        );
    }
}
