//! The JSON line of an entry ([`Entry::to_json`]), written straight to a
//! writer: the same object, without building a `serde_json::Value` first.
//!
//! `streambus consume` prints one per entry, and `--exec` / `--pipe` hand one
//! to their command: on those paths building the value (a map per entry, every
//! field copied, `data` parsed into a tree and printed again) cost more than
//! reading the entries from Redis.
//!
//! One difference, on purpose: `data` is written as the publisher wrote it
//! (after checking that it is JSON), not parsed and printed again, unless it
//! spans lines. So `{"a": 1}` stays `{"a": 1}` (`to_json` gives `{"a":1}`), and
//! a number beyond what a float holds keeps its digits.

use std::io::{self, Write};

use super::Entry;
use crate::envelope::field;

/// The envelope's fields of an entry, borrowed; `None` unless the entry is an
/// envelope whose fields are text and whose `data` is JSON (what
/// [`Envelope::from_fields`](crate::Envelope::from_fields) accepts).
struct Parts<'a> {
    id: &'a str,
    data: &'a [u8],
    timestamp: Option<&'a str>,
    kind: Option<&'a str>,
    key: Option<&'a str>,
}

impl<'a> Parts<'a> {
    fn of(entry: &'a Entry) -> Option<Parts<'a>> {
        let f = &entry.fields;
        let text = |name: &str| -> Result<Option<&'a str>, ()> {
            f.get(name)
                .map(|v| std::str::from_utf8(v).map_err(|_| ()))
                .transpose()
        };
        let id = text(field::ID).ok()??;
        let data = f.get(field::DATA)?;
        let data = std::str::from_utf8(data).ok()?.as_bytes();
        serde_json::from_slice::<serde::de::IgnoredAny>(data).ok()?;
        let (timestamp, kind, key) = (
            text(field::TIMESTAMP).ok()?,
            text(field::TYPE).ok()?,
            text(field::KEY).ok()?,
        );
        // Not printed, but an envelope only if it is text.
        text(field::TRACEPARENT).ok()?;
        Some(Parts {
            id,
            data,
            timestamp,
            kind,
            key,
        })
    }
}

impl Entry {
    /// Writes [`Entry::to_json`] as compact JSON (no newline) to `w`, except
    /// that `data` keeps the publisher's own text (see the module docs).
    /// With `partition`, `stream` names the logical stream and a `partition`
    /// field gives the index: the line of an entry read from a partition.
    #[doc(hidden)]
    pub fn write_json<W: Write>(
        &self,
        w: &mut W,
        partition: Option<(&str, usize)>,
    ) -> io::Result<()> {
        let env = Parts::of(self);
        // The keys in the order `to_json`'s map has them (sorted).
        w.write_all(b"{")?;
        if let Some(env) = &env {
            w.write_all(b"\"data\":")?;
            write_data(w, env.data)?;
            w.write_all(b",")?;
        }
        w.write_all(b"\"entry_id\":\"")?;
        write!(w, "{}", self.id)?;
        w.write_all(b"\",\"fields\":")?;
        self.write_fields(w)?;
        if let Some(env) = &env {
            w.write_all(b",\"id\":")?;
            string(w, env.id)?;
            if let Some(key) = env.key {
                w.write_all(b",\"key\":")?;
                string(w, key)?;
            }
        }
        let stream = match partition {
            Some((stream, index)) => {
                write!(w, ",\"partition\":{index}")?;
                stream
            }
            None => &self.stream,
        };
        w.write_all(b",\"stream\":")?;
        string(w, stream)?;
        if let Some(env) = &env {
            if let Some(ts) = env.timestamp {
                w.write_all(b",\"timestamp\":")?;
                string(w, ts)?;
            }
            if let Some(kind) = env.kind {
                w.write_all(b",\"type\":")?;
                string(w, kind)?;
            }
        }
        w.write_all(b"}")
    }

    /// The fields as a JSON object of strings, keys sorted, the last value of
    /// a repeated field winning (as `to_json`'s map has them).
    fn write_fields<W: Write>(&self, w: &mut W) -> io::Result<()> {
        let mut pairs: Vec<&(String, Vec<u8>)> = (&self.fields).into_iter().collect();
        // Stable: among equal keys the last one in the entry comes last.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        w.write_all(b"{")?;
        let mut first = true;
        for (i, (k, v)) in pairs.iter().map(|p| (&p.0, &p.1)).enumerate() {
            if pairs.get(i + 1).is_some_and(|next| next.0 == *k) {
                continue;
            }
            if !first {
                w.write_all(b",")?;
            }
            first = false;
            string(w, k)?;
            w.write_all(b":")?;
            string(w, &String::from_utf8_lossy(v))?;
        }
        w.write_all(b"}")
    }
}

/// `data`, already checked to be JSON: as it is, unless it spans lines (JSON
/// allows line breaks between tokens, and the output is one line per entry).
fn write_data<W: Write>(w: &mut W, data: &[u8]) -> io::Result<()> {
    let data = data.trim_ascii();
    if !data.contains(&b'\n') && !data.contains(&b'\r') {
        return w.write_all(data);
    }
    let value: serde_json::Value = serde_json::from_slice(data).map_err(io::Error::other)?;
    serde_json::to_writer(w, &value).map_err(io::Error::from)
}

/// A JSON string, escaped.
fn string<W: Write>(w: &mut W, s: &str) -> io::Result<()> {
    serde_json::to_writer(w, s).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::entry::Fields;
    use crate::id::EntryId;

    fn entry(pairs: &[(&str, &[u8])]) -> Entry {
        Entry {
            stream: Arc::from("s:1"),
            id: EntryId { ms: 12, seq: 3 },
            fields: Fields::from_pairs(pairs.iter().map(|(k, v)| (*k, v.to_vec()))),
        }
    }

    fn line(e: &Entry, partition: Option<(&str, usize)>) -> String {
        let mut out = Vec::new();
        e.write_json(&mut out, partition).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Byte for byte what `to_json` prints, for compact data: envelopes with
    /// and without the optional fields, raw entries, repeated fields,
    /// escapes, invalid UTF-8, and the cases that are not envelopes.
    #[test]
    fn the_same_line_as_to_json() {
        let cases: Vec<Vec<(&str, &[u8])>> = vec![
            vec![
                ("id", b"e1"),
                ("timestamp", b"t"),
                ("data", br#"{"a":[1,2.5,"x\"y"]}"#),
            ],
            vec![
                ("id", b"e2"),
                ("data", b"7"),
                ("type", b"alert"),
                ("key", b"host \"1\"\n"),
                ("traceparent", b"00-ab"),
            ],
            vec![("temp", b"21.5"), ("zone", b"b"), ("a", b"\xff\xfe")],
            vec![("x", b"1"), ("x", b"2"), ("b", b"")],
            vec![],
            // Not envelopes: data that is not JSON, fields that are not text.
            vec![("id", b"e3"), ("data", b"{nope")],
            vec![("id", b"\xff"), ("data", b"1")],
            vec![("id", b"e4"), ("data", b"1"), ("traceparent", b"\xff")],
            vec![("data", b"1")],
        ];
        for pairs in cases {
            let e = entry(&pairs);
            assert_eq!(line(&e, None), e.to_json().to_string(), "{pairs:?}");
        }
    }

    #[test]
    fn data_keeps_its_text_unless_it_spans_lines() {
        let big = "123456789012345678901234567890";
        let e = entry(&[
            ("id", b"e"),
            ("data", format!(" {{\"a\": {big}}} ").as_bytes()),
        ]);
        let printed = line(&e, None);
        assert!(
            printed.starts_with(&format!("{{\"data\":{{\"a\": {big}}},")),
            "{printed}"
        );
        let e = entry(&[("id", b"e"), ("data", b"{\n  \"a\": 1\n}")]);
        let printed = line(&e, None);
        assert!(printed.starts_with(r#"{"data":{"a":1},"#), "{printed}");
        assert!(!printed.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&printed).unwrap();
        assert_eq!(v, e.to_json());
    }

    #[test]
    fn a_partition_line_names_the_logical_stream_and_the_index() {
        let e = entry(&[("id", b"e"), ("data", b"1"), ("key", b"k")]);
        let mut expected = e.to_json();
        expected["stream"] = "s".into();
        expected["partition"] = 4.into();
        assert_eq!(line(&e, Some(("s", 4))), expected.to_string());
    }
}
