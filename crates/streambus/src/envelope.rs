//! The wire format: the envelope of the reference event bus, and raw field maps.
//!
//! An envelope is a flat field map, compatible both ways with the reference
//! publisher (`id` = UUID, `timestamp` = ISO-8601 UTC, `data` = JSON text):
//!
//! | field | meaning |
//! |---|---|
//! | `id` | unique message id (UUID v4 string), for de-duplication |
//! | `timestamp` | ISO-8601 UTC time of publishing, e.g. `2026-11-21T23:53:35.123456+00:00` |
//! | `data` | the payload, a JSON document as text |
//! | `type` | optional event type |
//! | `key` | optional partition / ordering key |
//! | `traceparent` | optional W3C trace context |
//!
//! Entries without `id` and `data` are not envelopes; they are delivered as raw
//! field maps (see [`crate::Entry`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::entry::Fields;
use crate::error::{Error, ErrorKind, Result};

/// Field names of the envelope.
pub mod field {
    /// Unique message id (UUID).
    pub const ID: &str = "id";
    /// ISO-8601 UTC time of publishing.
    pub const TIMESTAMP: &str = "timestamp";
    /// JSON payload as text.
    pub const DATA: &str = "data";
    /// Optional event type.
    pub const TYPE: &str = "type";
    /// Optional partition / ordering key.
    pub const KEY: &str = "key";
    /// Optional W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
}

/// A message to publish: an envelope around a JSON payload, or a raw field map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The fields, in the order they are written.
    pub(crate) fields: Vec<(&'static str, Vec<u8>)>,
    /// Raw fields have caller-chosen names, kept apart so the common envelope path
    /// allocates no names.
    pub(crate) raw: Vec<(String, Vec<u8>)>,
    /// The envelope id, if this is an envelope.
    envelope_id: Option<String>,
    key: Option<String>,
}

impl Message {
    /// An envelope whose `data` is `payload` serialized as JSON.
    pub fn json<T: Serialize + ?Sized>(payload: &T) -> Result<Self> {
        let data = serde_json::to_vec(payload).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("payload cannot be serialized as JSON: {e}"),
            )
        })?;
        Ok(Self::envelope_of(data))
    }

    /// An envelope whose `data` is the given JSON text, which is checked to be valid JSON.
    pub fn json_text(text: impl Into<String>) -> Result<Self> {
        let text = text.into();
        validate_json(&text)?;
        Ok(Self::envelope_of(text.into_bytes()))
    }

    fn envelope_of(data: Vec<u8>) -> Self {
        // Encoded into a buffer, not through `Display` (≈1% of the publishing
        // CPU in a profile went to `fmt` here).
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id: &str = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        let mut fields = Vec::with_capacity(6);
        fields.push((field::ID, id.as_bytes().to_vec()));
        let id = id.to_owned();
        fields.push((
            field::TIMESTAMP,
            format_timestamp(SystemTime::now()).into_bytes(),
        ));
        fields.push((field::DATA, data));
        Message {
            fields,
            raw: Vec::new(),
            envelope_id: Some(id),
            key: None,
        }
    }

    /// A raw entry with exactly these fields and no envelope (like the sensor
    /// readings of other producers).
    pub fn raw<K: Into<String>, V: Into<Vec<u8>>>(
        fields: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Message {
            fields: Vec::new(),
            raw: fields
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            envelope_id: None,
            key: None,
        }
    }

    /// Sets the envelope's `type` field.
    pub fn with_type(mut self, kind: impl Into<String>) -> Self {
        self.fields.push((field::TYPE, kind.into().into_bytes()));
        self
    }

    /// Sets the envelope's `key` field: entries with the same key can be kept in
    /// order by workers and are routed to the same partition.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.fields.push((field::KEY, key.clone().into_bytes()));
        self.key = Some(key);
        self
    }

    /// Sets the W3C `traceparent` field.
    pub fn with_traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.fields
            .push((field::TRACEPARENT, traceparent.into().into_bytes()));
        self
    }

    /// Overrides the envelope id (e.g. to re-publish with the original id).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        let id = id.into();
        if let Some(slot) = self.fields.iter_mut().find(|(k, _)| *k == field::ID) {
            slot.1 = id.clone().into_bytes();
            self.envelope_id = Some(id);
        }
        self
    }

    /// The envelope id (UUID) of this message, `None` for raw messages.
    pub fn envelope_id(&self) -> Option<&str> {
        self.envelope_id.as_deref()
    }

    /// The ordering key, if one was set.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Bytes of field names and values: what the payload size limit counts.
    pub fn byte_len(&self) -> usize {
        self.fields
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .chain(self.raw.iter().map(|(k, v)| k.len() + v.len()))
            .sum()
    }

    /// Whether the message has no fields (Redis refuses an XADD without fields).
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.raw.is_empty()
    }

    /// Number of field/value arguments and their total bytes, to size a command.
    pub(crate) fn arg_size(&self) -> (usize, usize) {
        (2 * (self.fields.len() + self.raw.len()), self.byte_len())
    }

    /// Appends the field/value arguments of an XADD.
    pub(crate) fn write_args(&self, cmd: &mut redis::Cmd) {
        for (k, v) in &self.fields {
            cmd.arg(*k).arg(v.as_slice());
        }
        for (k, v) in &self.raw {
            cmd.arg(k.as_str()).arg(v.as_slice());
        }
    }

    /// The fields as a [`Fields`] map (what a reader will see).
    pub fn to_fields(&self) -> Fields {
        Fields::from_pairs(
            self.fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .chain(self.raw.iter().cloned()),
        )
    }
}

/// A decoded envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Envelope {
    /// Unique message id (a UUID when streambus or the reference wrote it).
    pub id: String,
    /// Time of publishing as written (ISO-8601); `None` when the field is missing.
    pub timestamp: Option<String>,
    /// The payload: JSON text, already checked to be valid JSON.
    pub data: String,
    /// The optional `type` field.
    pub kind: Option<String>,
    /// The optional `key` field.
    pub key: Option<String>,
    /// The optional `traceparent` field.
    pub traceparent: Option<String>,
}

impl Envelope {
    /// Decodes an envelope from a field map; `Ok(None)` if the map is not one
    /// (needs both `id` and `data`).
    pub fn from_fields(fields: &Fields) -> Result<Option<Envelope>> {
        let (Some(id), Some(data)) = (fields.get(field::ID), fields.get(field::DATA)) else {
            return Ok(None);
        };
        let text = |name: &str, v: &[u8]| -> Result<String> {
            String::from_utf8(v.to_vec()).map_err(|_| {
                Error::new(
                    ErrorKind::Decode,
                    format!("envelope field `{name}` is not valid UTF-8"),
                )
            })
        };
        let data = text(field::DATA, data)?;
        validate_json(&data)?;
        let opt = |name: &str| fields.get(name).map(|v| text(name, v)).transpose();
        Ok(Some(Envelope {
            id: text(field::ID, id)?,
            timestamp: opt(field::TIMESTAMP)?,
            data,
            kind: opt(field::TYPE)?,
            key: opt(field::KEY)?,
            traceparent: opt(field::TRACEPARENT)?,
        }))
    }

    /// Deserializes `data` into `T`.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(&self.data).map_err(|e| {
            Error::new(
                ErrorKind::Decode,
                format!(
                    "envelope {}: data does not match the expected type: {e}",
                    self.id
                ),
            )
        })
    }

    /// `data` as a JSON value.
    pub fn data_value(&self) -> Result<serde_json::Value> {
        self.data_as()
    }

    /// The publishing time, if the timestamp is present and parses.
    pub fn published_at(&self) -> Option<SystemTime> {
        self.timestamp.as_deref().and_then(parse_timestamp)
    }
}

fn validate_json(text: &str) -> Result<()> {
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(|_| ())
        .map_err(|e| Error::new(ErrorKind::Decode, format!("`data` is not valid JSON: {e}")))
}

/// Formats a time as ISO-8601 UTC with microseconds and an explicit `+00:00`
/// offset, which every ISO-8601 reader (including Python's
/// `datetime.fromisoformat` before 3.11, which refuses `Z`) accepts.
pub fn format_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    // Written digit by digit: every envelope carries one, and `format!` with
    // six padded fields cost about as much as the rest of building the envelope.
    let mut s = String::with_capacity(32);
    if (0..=9999).contains(&y) {
        push_digits(&mut s, y as u64, 4);
    } else {
        s.push_str(&format!("{y:04}"));
    }
    s.push('-');
    push_digits(&mut s, u64::from(m), 2);
    s.push('-');
    push_digits(&mut s, u64::from(day), 2);
    s.push('T');
    push_digits(&mut s, rem / 3600, 2);
    s.push(':');
    push_digits(&mut s, (rem % 3600) / 60, 2);
    s.push(':');
    push_digits(&mut s, rem % 60, 2);
    s.push('.');
    push_digits(&mut s, u64::from(d.subsec_micros()), 6);
    s.push_str("+00:00");
    s
}

/// Appends the last `width` decimal digits of `n`, zero-padded.
fn push_digits(s: &mut String, n: u64, width: u32) {
    for i in (0..width).rev() {
        let digit = (n / 10u64.pow(i)) % 10;
        s.push(char::from(b'0' + digit as u8));
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction][Z|±HH:MM]`; a time without an offset is
/// taken as UTC, as the reference publisher (`datetime.utcnow().isoformat()`) writes it.
pub fn parse_timestamp(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 19 || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    if b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos: u64 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        for (i, c) in frac[..digits].bytes().take(9).enumerate() {
            nanos += u64::from(c - b'0') * 10u64.pow(8 - i as u32);
        }
        rest = &frac[digits..];
    }
    let offset_secs: i64 = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let o = &rest[1..];
            let (oh, om) = match o.len() {
                5 if o.as_bytes()[2] == b':' => (o.get(0..2)?, o.get(3..5)?),
                4 => (o.get(0..2)?, o.get(2..4)?),
                2 => (o.get(0..2)?, "00"),
                _ => return None,
            };
            let oh: i64 = oh.parse().ok()?;
            let om: i64 = om.parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_secs;
    if secs < 0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_nanos(nanos))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01 (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_reference_fields() {
        let m = Message::json(&serde_json::json!({"severity": "high"})).unwrap();
        let f = m.to_fields();
        let names: Vec<&str> = f.iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["id", "timestamp", "data"]);
        assert_eq!(f.get_str("data"), Some(r#"{"severity":"high"}"#));
        uuid::Uuid::parse_str(f.get_str("id").unwrap()).unwrap();
        let env = Envelope::from_fields(&f).unwrap().unwrap();
        assert_eq!(env.id, m.envelope_id().unwrap());
        let age = SystemTime::now()
            .duration_since(env.published_at().unwrap())
            .unwrap();
        assert!(age < Duration::from_secs(5));
    }

    #[test]
    fn decodes_reference_publisher_output() {
        // What `RedisStreamPublisher.publish` in the reference writes.
        let f = Fields::from_pairs([
            ("id", "3b241101-e2bb-4255-8caf-4136c566a962"),
            ("timestamp", "2024-05-01T12:30:45.123456"),
            ("data", r#"{"alert": "x", "n": 1}"#),
        ]);
        let env = Envelope::from_fields(&f).unwrap().unwrap();
        assert_eq!(env.id, "3b241101-e2bb-4255-8caf-4136c566a962");
        assert_eq!(env.data_value().unwrap()["n"], 1);
        let t = env.published_at().unwrap();
        assert_eq!(format_timestamp(t), "2024-05-01T12:30:45.123456+00:00");
    }

    #[test]
    fn invalid_json_data_is_a_decode_error() {
        let f = Fields::from_pairs([("id", "x"), ("data", "{not json")]);
        let err = Envelope::from_fields(&f).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert!(Message::json_text("{oops").is_err());
    }

    #[test]
    fn timestamps_roundtrip() {
        for secs in [0u64, 951_782_400, 1_700_000_000, 4_102_444_800] {
            let t = UNIX_EPOCH + Duration::from_micros(secs * 1_000_000 + 123_456);
            assert_eq!(parse_timestamp(&format_timestamp(t)), Some(t));
        }
        assert_eq!(
            parse_timestamp("1970-01-01T01:00:00+01:00"),
            Some(UNIX_EPOCH)
        );
        assert_eq!(
            parse_timestamp("1970-01-01T00:00:10Z"),
            Some(UNIX_EPOCH + Duration::from_secs(10))
        );
        for bad in [
            "",
            "2024-13-01T00:00:00",
            "2024-01-01",
            "2024-01-01T00:00:00.",
            "2024-01-01T00:00:00+1",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn optional_fields() {
        let m = Message::json(&1)
            .unwrap()
            .with_type("alert")
            .with_key("host-1")
            .with_traceparent("00-abc-def-01");
        let env = Envelope::from_fields(&m.to_fields()).unwrap().unwrap();
        assert_eq!(env.kind.as_deref(), Some("alert"));
        assert_eq!(env.key.as_deref(), Some("host-1"));
        assert_eq!(env.traceparent.as_deref(), Some("00-abc-def-01"));
        assert_eq!(m.key(), Some("host-1"));
    }
}
