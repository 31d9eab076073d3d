//! Stream entry ids (`<ms>-<seq>`) as a typed, ordered value.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, ErrorKind};

/// The id Redis gives a stream entry: milliseconds since the epoch and a sequence
/// number within that millisecond. Ordered like Redis orders entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EntryId {
    /// Milliseconds since the Unix epoch at which Redis added the entry.
    pub ms: u64,
    /// Sequence number among entries added in the same millisecond.
    pub seq: u64,
}

impl EntryId {
    /// The smallest id, `0-0`.
    pub const ZERO: EntryId = EntryId { ms: 0, seq: 0 };
    /// The largest id Redis accepts.
    pub const MAX: EntryId = EntryId {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    /// An id from its two parts.
    pub const fn new(ms: u64, seq: u64) -> Self {
        EntryId { ms, seq }
    }

    /// The first id at or after a point in time (`<ms>-0`), for age-based ranges.
    pub fn at_time(t: SystemTime) -> Self {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
            .min(u64::MAX as u128) as u64;
        EntryId { ms, seq: 0 }
    }

    /// When Redis added this entry (from the id's millisecond part).
    pub fn time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.ms)
    }

    /// How long ago the entry was added; zero for ids in the future.
    pub fn age(self) -> Duration {
        SystemTime::now()
            .duration_since(self.time())
            .unwrap_or_default()
    }

    /// The id right after this one (for exclusive ranges).
    pub fn next(self) -> Self {
        if self.seq == u64::MAX {
            EntryId {
                ms: self.ms.saturating_add(1),
                seq: 0,
            }
        } else {
            EntryId {
                ms: self.ms,
                seq: self.seq + 1,
            }
        }
    }

    /// Parses the bytes Redis sends for an id.
    pub fn from_bytes(b: &[u8]) -> Result<Self, Error> {
        parse(b).ok_or_else(|| invalid(&String::from_utf8_lossy(b)))
    }
}

fn invalid(s: &str) -> Error {
    let shown: String = s.chars().take(64).collect();
    Error::new(
        ErrorKind::InvalidInput,
        format!("invalid entry id {shown:?}: expected <milliseconds>-<sequence> such as 1700000000000-0, or <milliseconds>"),
    )
}

/// Hot path: ids arrive with every entry, so parse bytes without allocating.
fn parse(b: &[u8]) -> Option<EntryId> {
    fn num(b: &[u8]) -> Option<u64> {
        if b.is_empty() || b.len() > 20 {
            return None;
        }
        let mut n: u64 = 0;
        for &c in b {
            if !c.is_ascii_digit() {
                return None;
            }
            n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        }
        Some(n)
    }
    match b.iter().position(|&c| c == b'-') {
        Some(dash) => Some(EntryId {
            ms: num(&b[..dash])?,
            seq: num(&b[dash + 1..])?,
        }),
        None => Some(EntryId {
            ms: num(b)?,
            seq: 0,
        }),
    }
}

impl FromStr for EntryId {
    type Err = Error;

    /// Accepts `<ms>-<seq>` and a bare `<ms>` (meaning `<ms>-0`), as Redis does.
    fn from_str(s: &str) -> Result<Self, Error> {
        parse(s.trim().as_bytes()).ok_or_else(|| invalid(s))
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl serde::Serialize for EntryId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for EntryId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl redis::ToRedisArgs for EntryId {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg_fmt(self)
    }
}

/// Where a consumer group starts, or where a plain read starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StartId {
    /// From the first entry in the stream (`0`): nothing already in it is skipped.
    #[default]
    Beginning,
    /// Only entries added from now on (`$`).
    End,
    /// After the given id (entries with a greater id are delivered).
    After(EntryId),
}

impl StartId {
    /// The argument Redis expects.
    pub fn as_arg(&self) -> String {
        match self {
            StartId::Beginning => "0".to_owned(),
            StartId::End => "$".to_owned(),
            StartId::After(id) => id.to_string(),
        }
    }
}

impl FromStr for StartId {
    type Err = Error;

    /// `0` (or `beginning`), `$` (or `end`, `new`), or an entry id.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim() {
            "0" | "0-0" | "beginning" | "begin" | "start" => Ok(StartId::Beginning),
            "$" | "end" | "new" | "latest" => Ok(StartId::End),
            other => other.parse().map(StartId::After).map_err(|_| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("invalid start {other:?}: use 0 (from the beginning), $ (only new entries) or an entry id such as 1700000000000-0"),
                )
            }),
        }
    }
}

impl fmt::Display for StartId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_arg())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let id: EntryId = "1700000000000-7".parse().unwrap();
        assert_eq!(id, EntryId::new(1_700_000_000_000, 7));
        assert_eq!(id.to_string(), "1700000000000-7");
        assert_eq!("15".parse::<EntryId>().unwrap(), EntryId::new(15, 0));
        assert_eq!(
            EntryId::from_bytes(b"18446744073709551615-18446744073709551615").unwrap(),
            EntryId::MAX
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "a-1",
            "1-2-3",
            "1.5",
            "18446744073709551616-0",
            " 1 -2",
            "+",
        ] {
            let err = bad.parse::<EntryId>().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
            assert!(err
                .to_string()
                .contains("expected <milliseconds>-<sequence>"));
        }
    }

    #[test]
    fn orders_like_redis() {
        let a = EntryId::new(1, 9);
        let b = EntryId::new(2, 0);
        assert!(a < b);
        assert!(a.next() > a);
        assert_eq!(EntryId::new(1, u64::MAX).next(), EntryId::new(2, 0));
    }

    #[test]
    fn start_ids() {
        assert_eq!("0".parse::<StartId>().unwrap(), StartId::Beginning);
        assert_eq!("$".parse::<StartId>().unwrap(), StartId::End);
        assert_eq!(
            "5-1".parse::<StartId>().unwrap(),
            StartId::After(EntryId::new(5, 1))
        );
        assert!("x".parse::<StartId>().is_err());
        assert_eq!(StartId::After(EntryId::new(5, 1)).as_arg(), "5-1");
    }

    #[test]
    fn serde_roundtrip() {
        let id = EntryId::new(3, 4);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"3-4\"");
        assert_eq!(serde_json::from_str::<EntryId>(&json).unwrap(), id);
    }
}
