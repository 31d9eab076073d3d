//! The checked values of the topology file: durations, start ids, counts,
//! names, retention and backoff. Every check runs while the value is
//! deserialized, so that the `toml` crate's error carries the value's span
//! (and [`super::error`] can name its line and field).

use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use streambus::config::parse_duration;
use streambus::{Backoff, Retention, StartId};

/// A duration written like `500ms`, `30s`, `5m`, `7d` (or a number of seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Secs(u64),
        }
        match Raw::deserialize(d).map_err(|_| {
            de::Error::custom("expected a duration such as \"500ms\", \"30s\", \"5m\" or \"7d\"")
        })? {
            Raw::Text(s) => parse_duration(&s).map(Dur).map_err(de::Error::custom),
            Raw::Secs(n) => Ok(Dur(Duration::from_secs(n))),
        }
    }
}

/// A group's start: `0`, `$` or an entry id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start(pub StartId);

impl<'de> Deserialize<'de> for Start {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Start).map_err(de::Error::custom)
    }
}

/// An integer of at least 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Positive(pub usize);

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        match usize::try_from(n) {
            Ok(n) if n >= 1 => Ok(Positive(n)),
            _ => Err(de::Error::custom(format!("must be at least 1, got {n}"))),
        }
    }
}

/// `partitions = N`: 1 (a plain stream) to [`streambus::partition::MAX_PARTITIONS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionCount(pub u32);

impl Default for PartitionCount {
    fn default() -> Self {
        PartitionCount(1)
    }
}

impl<'de> Deserialize<'de> for PartitionCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        let max = streambus::partition::MAX_PARTITIONS;
        match u32::try_from(n) {
            Ok(n) if (1..=max).contains(&n) => Ok(PartitionCount(n)),
            _ => Err(de::Error::custom(format!(
                "partitions must be between 1 and {max}, got {n}"
            ))),
        }
    }
}

/// An integer of at least 1 that fits in 32 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PositiveU32(pub u32);

impl<'de> Deserialize<'de> for PositiveU32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        match u32::try_from(n) {
            Ok(n) if n >= 1 => Ok(PositiveU32(n)),
            _ => Err(de::Error::custom(format!(
                "must be between 1 and {}, got {n}",
                u32::MAX
            ))),
        }
    }
}

/// A valid stream name (a table key or a list item).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamName(pub String);

impl<'de> Deserialize<'de> for StreamName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        streambus::keys::validate_name("stream", &s).map_err(de::Error::custom)?;
        if s.ends_with(":dlq") {
            return Err(de::Error::custom(format!(
                "stream {s:?} looks like a dead-letter stream; name the stream itself (its dead letters are configured with dead_letter)"
            )));
        }
        Ok(StreamName(s))
    }
}

/// A valid group name (a table key).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupName(pub String);

impl<'de> Deserialize<'de> for GroupName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        streambus::keys::validate_name("group", &s).map_err(de::Error::custom)?;
        Ok(GroupName(s))
    }
}

/// `retention = { max_len = N, approximate = true }` or `{ max_age = "7d" }`,
/// each with `keep_unacked = true` to never trim what a group still needs;
/// absent: unbounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionSpec {
    pub retention: Retention,
    /// [`streambus::ProducerOptions::keep_unacked`].
    pub keep_unacked: bool,
}

impl<'de> Deserialize<'de> for RetentionSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            max_len: Option<u64>,
            approximate: Option<bool>,
            max_age: Option<Dur>,
            keep_unacked: Option<bool>,
        }
        let raw = Raw::deserialize(d)?;
        let keep_unacked = raw.keep_unacked.unwrap_or(false);
        if keep_unacked && raw.approximate == Some(false) {
            return Err(de::Error::custom(
                "keep_unacked trims approximately (whole nodes, never past what a group still needs): leave out approximate = false",
            ));
        }
        let retention = match (raw.max_len, raw.max_age) {
            (Some(_), Some(_)) => Err(de::Error::custom("give max_len or max_age, not both")),
            (Some(0), None) => Err(de::Error::custom(
                "max_len must be at least 1 (leave retention out for an unbounded stream)",
            )),
            (Some(len), None) => Ok(Retention::MaxLen {
                len,
                exact: !raw.approximate.unwrap_or(true),
            }),
            (None, Some(age)) if raw.approximate.is_some() => {
                let _ = age;
                Err(de::Error::custom(
                    "approximate applies to max_len only (max_age always trims approximately)",
                ))
            }
            (None, Some(Dur(age))) if age.is_zero() => {
                Err(de::Error::custom("max_age must be above zero"))
            }
            (None, Some(Dur(age))) => Ok(Retention::MaxAge(age)),
            (None, None) => Err(de::Error::custom(
                "retention needs max_len or max_age (leave it out for an unbounded stream)",
            )),
        }?;
        Ok(RetentionSpec {
            retention,
            keep_unacked,
        })
    }
}

/// `backoff = { base = "1s", max = "5m" }`: doubling from `base` up to `max`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackoffSpec(pub Backoff);

impl<'de> Deserialize<'de> for BackoffSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            base: Dur,
            max: Option<Dur>,
        }
        let raw = Raw::deserialize(d)?;
        let base = raw.base.0;
        let max = raw
            .max
            .map_or_else(|| Duration::from_secs(300).max(base), |m| m.0);
        if max < base {
            return Err(de::Error::custom("the backoff's max is below its base"));
        }
        Ok(BackoffSpec(Backoff::new(base, max)))
    }
}
