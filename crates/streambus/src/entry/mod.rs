//! What a read returns: a stream entry with its raw field map.
//!
//! Handlers always see the raw fields; decoding the envelope
//! ([`Entry::envelope`]) or a typed payload ([`Entry::decode`]) is a helper on top,
//! so entries written by other programs (no envelope at all) are delivered too.

mod json;

use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind, Result};
use crate::id::EntryId;

/// The field map of one stream entry, in the order Redis returned it.
///
/// Values are bytes: Redis stores binary-safe strings, and hostile or foreign
/// producers may write values that are not UTF-8. Field names that are not UTF-8
/// are converted lossily (U+FFFD).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields(pub(crate) Vec<(String, Vec<u8>)>);

impl Fields {
    /// An empty field map.
    pub fn new() -> Self {
        Fields(Vec::new())
    }

    /// A field map from pairs.
    pub fn from_pairs<K: Into<String>, V: Into<Vec<u8>>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Fields(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// Appends a field.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) {
        self.0.push((name.into(), value.into()));
    }

    /// The value of the first field with this name.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The value of the field as text, if present and valid UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The fields in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Total bytes of names and values (what the size limit counts).
    pub fn byte_len(&self) -> usize {
        self.0.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// The pairs, owned.
    pub fn into_pairs(self) -> Vec<(String, Vec<u8>)> {
        self.0
    }

    /// A JSON object of the fields; values that are not UTF-8 are converted lossily.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.0
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect()
    }
}

impl<'a> IntoIterator for &'a Fields {
    type Item = &'a (String, Vec<u8>);
    type IntoIter = std::slice::Iter<'a, (String, Vec<u8>)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// One entry read from a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The stream it was read from (shared among the entries of one read).
    pub stream: Arc<str>,
    /// Its id in the stream.
    pub id: EntryId,
    /// Its raw field map.
    pub fields: Fields,
}

impl Entry {
    /// Decodes the streambus / reference envelope (`id`, `timestamp`, `data`).
    ///
    /// `Ok(None)` when the entry is not an envelope (it has no `id` and `data`
    /// fields, e.g. a raw sensor reading); `Err` (kind `Decode`) when it claims to be
    /// one but its `data` is not valid JSON text.
    pub fn envelope(&self) -> Result<Option<Envelope>> {
        Envelope::from_fields(&self.fields)
    }

    /// Deserializes the payload into `T`: the envelope's `data` when the entry is an
    /// envelope, otherwise the raw field map as a JSON object of strings.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        match self.envelope()? {
            Some(env) => env.data_as(),
            None => serde_json::from_value(serde_json::Value::Object(self.fields.to_json()))
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Decode,
                        format!(
                            "entry {} of {}: raw fields do not match the expected type: {e}",
                            self.id, self.stream
                        ),
                    )
                }),
        }
    }

    /// The JSON line `streambus tail` prints for this entry:
    /// `{"stream", "entry_id", "fields"}` plus `id`, `timestamp`, `type`, `key` and
    /// `data` (parsed) when the entry is an envelope.
    pub fn to_json(&self) -> serde_json::Value {
        let mut obj = serde_json::Map::new();
        obj.insert("stream".into(), self.stream.as_ref().into());
        obj.insert("entry_id".into(), self.id.to_string().into());
        obj.insert("fields".into(), self.fields.to_json().into());
        if let Ok(Some(env)) = self.envelope() {
            obj.insert("id".into(), env.id.clone().into());
            if let Some(ts) = &env.timestamp {
                obj.insert("timestamp".into(), ts.clone().into());
            }
            if let Some(t) = &env.kind {
                obj.insert("type".into(), t.clone().into());
            }
            if let Some(k) = &env.key {
                obj.insert("key".into(), k.clone().into());
            }
            if let Ok(v) = env.data_value() {
                obj.insert("data".into(), v);
            }
        }
        serde_json::Value::Object(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn bs(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_read_reply() {
        let stream: Arc<str> = "s".into();
        let v = Value::Array(vec![Value::Array(vec![
            bs("s"),
            Value::Array(vec![
                Value::Array(vec![bs("1-1"), Value::Array(vec![bs("a"), bs("1")])]),
                Value::Array(vec![bs("1-2"), Value::Nil]),
            ]),
        ])]);
        let got = crate::reply::read_one(&stream, v).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id, EntryId::new(1, 1));
        assert_eq!(got[0].fields.get_str("a"), Some("1"));
        assert!(got[1].fields.is_empty());
        assert!(crate::reply::read_one(&stream, Value::Nil)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn raw_entry_decodes_as_map() {
        #[derive(serde::Deserialize)]
        struct Reading {
            sensor_id: String,
            temp: String,
        }
        let e = Entry {
            stream: "app:event".into(),
            id: EntryId::new(1, 0),
            fields: Fields::from_pairs([("sensor_id", "s1"), ("temp", "0.5"), ("humidity", "0.1")]),
        };
        assert!(e.envelope().unwrap().is_none());
        let r: Reading = e.decode().unwrap();
        assert_eq!((r.sensor_id.as_str(), r.temp.as_str()), ("s1", "0.5"));
        let j = e.to_json();
        assert_eq!(j["fields"]["sensor_id"], "s1");
        assert!(j.get("data").is_none());
    }
}
