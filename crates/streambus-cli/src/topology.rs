//! The topology file (`streambus.toml`): Redis, the service, and per stream its
//! retention, dead-letter policy and consumer groups with their worker settings.
//!
//! Every command takes its defaults from it and flags override them. The file
//! is found by `--config FILE`, else `STREAMBUS_CONFIG`, else `./streambus.toml`
//! when it exists ([`locate`]).
//!
//! Errors name the line and the field, e.g.
//! `line 12: streams."aurora:alerts".groups.alert-processor.visibility_timeout: invalid duration "5x": ...`:
//! every semantic check (durations, start ids, names, retention) runs while the
//! value is deserialized, so the `toml` crate's error carries the value's span;
//! the span is turned into a line and, through the spanned document, into the
//! path of the field.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use streambus::config::parse_duration;
use streambus::{Backoff, Retention, StartId, WorkerOptions};

/// The example topology shipped with streambus: the reference's SOC pipeline.
/// The demo runs on it when no file is given (one source of truth).
pub const EXAMPLE: &str = include_str!("../../../streambus.example.toml");

/// The default file name looked for in the current directory.
pub const DEFAULT_FILE: &str = "streambus.toml";

/// A parsed, checked topology.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    /// The Redis URL (`--redis` and `REDIS_URL` override it).
    pub redis: Option<String>,
    pub service: ServiceSpec,
    /// By stream name.
    pub streams: BTreeMap<String, StreamSpec>,
}

/// `[service]`: what `streambus serve` (and the demo's dashboard) use.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub listen: Option<SocketAddr>,
    #[serde(default)]
    pub streams: Vec<StreamName>,
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

/// `[streams."NAME"]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// How many partitions the logical stream has (1: a plain stream, the
    /// default). See `streambus::partition`.
    #[serde(default)]
    pub partitions: PartitionCount,
    /// Trimming done by every publish (of each partition); absent: unbounded.
    #[serde(default)]
    pub retention: RetentionSpec,
    /// The dead-letter stream's policy.
    pub dead_letter: Option<DeadLetterSpec>,
    /// By group name.
    #[serde(default)]
    pub groups: BTreeMap<GroupName, GroupSpec>,
}

/// `dead_letter = { max_len = N }`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterSpec {
    /// Keep about this many dead letters (approximate trimming).
    pub max_len: Option<u64>,
}

/// `[streams."NAME".groups.GROUP]`: worker settings. Absent fields keep the
/// defaults of the command that runs the worker.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// Where the group starts when it is created: `0`, `$` or an entry id.
    pub start: Option<Start>,
    pub batch_size: Option<Positive>,
    pub concurrency: Option<Positive>,
    /// How long one read waits for new entries.
    pub max_wait: Option<Dur>,
    pub visibility_timeout: Option<Dur>,
    pub max_deliveries: Option<PositiveU32>,
    pub backoff: Option<BackoffSpec>,
    pub ordered_by_key: Option<bool>,
    /// On shutdown, how long in-flight handlers may still run.
    pub shutdown_grace: Option<Dur>,
}

impl GroupSpec {
    /// `base` with every setting this group sets.
    pub fn apply(&self, mut base: WorkerOptions) -> WorkerOptions {
        if let Some(s) = &self.start {
            base.start = s.0;
        }
        if let Some(n) = self.batch_size {
            base.batch_size = n.0;
        }
        if let Some(n) = self.concurrency {
            base.concurrency = n.0;
        }
        if let Some(d) = self.max_wait {
            base.block = d.0;
        }
        if let Some(d) = self.visibility_timeout {
            base.visibility_timeout = d.0;
        }
        if let Some(n) = self.max_deliveries {
            base.max_deliveries = n.0;
        }
        if let Some(b) = &self.backoff {
            base.retry_backoff = b.0;
        }
        if let Some(o) = self.ordered_by_key {
            base.ordered_by_key = o;
        }
        if let Some(d) = self.shutdown_grace {
            base.shutdown_grace = d.0;
        }
        base
    }
}

impl Topology {
    /// Parses and checks a topology file's text. Errors read
    /// `line N: PATH: what is wrong`.
    pub fn parse(text: &str) -> Result<Topology, TopologyError> {
        let raw: RawTopology = toml::from_str(text).map_err(|e| TopologyError::new(text, &e))?;
        Ok(Topology {
            redis: raw.redis,
            service: raw.service.unwrap_or_default(),
            streams: raw.streams.into_iter().map(|(k, v)| (k.0, v)).collect(),
        })
    }

    /// Reads and parses `path`; the error names the file.
    pub fn load(path: &Path) -> anyhow::Result<Topology> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read topology file {}: {e}", path.display()))?;
        Topology::parse(&text).map_err(|e| anyhow::anyhow!("topology file {}: {e}", path.display()))
    }

    /// The built-in topology (the example file).
    pub fn example() -> Topology {
        Topology::parse(EXAMPLE).expect("the shipped example topology is valid")
    }

    /// A stream's spec, if the file has it.
    pub fn stream(&self, name: &str) -> Option<&StreamSpec> {
        self.streams.get(name)
    }

    /// A group's spec, if the file has it.
    pub fn group(&self, stream: &str, group: &str) -> Option<&GroupSpec> {
        self.stream(stream)?
            .groups
            .iter()
            .find(|(g, _)| g.0 == group)
            .map(|(_, spec)| spec)
    }

    /// How many partitions `stream` has according to the file (1 when the
    /// file does not say).
    pub fn partitions(&self, stream: &str) -> u32 {
        self.stream(stream).map_or(1, |s| s.partitions.0)
    }

    /// The number of groups over all streams.
    pub fn group_count(&self) -> usize {
        self.streams.values().map(|s| s.groups.len()).sum()
    }
}

/// Which topology file applies: `--config` / `STREAMBUS_CONFIG` (given here as
/// `explicit`), else `./streambus.toml` when it exists, else none.
pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(p) => Some(p.to_owned()),
        None => {
            let p = PathBuf::from(DEFAULT_FILE);
            p.is_file().then_some(p)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    redis: Option<String>,
    service: Option<ServiceSpec>,
    #[serde(default)]
    streams: BTreeMap<StreamName, StreamSpec>,
}

/// A topology error: the line (1-based), the field's path, the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologyError {
    pub line: Option<usize>,
    pub path: String,
    pub message: String,
}

impl TopologyError {
    fn new(text: &str, e: &toml::de::Error) -> TopologyError {
        let offset = e.span().map(|s| s.start);
        TopologyError {
            line: offset.map(|o| line_of(text, o)),
            path: offset.map(|o| path_at(text, o)).unwrap_or_default(),
            message: e.message().trim().replace('\n', "; "),
        }
    }
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for TopologyError {}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The dotted path (`streams."aurora:alerts".retention.max_len`) of the
/// innermost key whose key or value contains `offset`; empty when the document
/// cannot be parsed or the offset is at the top level.
fn path_at(text: &str, offset: usize) -> String {
    let Ok(doc) = toml::de::DeTable::parse(text) else {
        return String::new();
    };
    let mut path = Vec::new();
    walk_table(doc.get_ref(), offset, &mut path);
    path.iter()
        .map(|k| quote_key(k))
        .collect::<Vec<_>>()
        .join(".")
}

fn walk_table(table: &toml::de::DeTable<'_>, offset: usize, path: &mut Vec<String>) {
    for (key, value) in table.iter() {
        let in_key = key.span().contains(&offset);
        let vspan = value.span();
        // An error at the end of a value (e.g. a missing field in an inline
        // table) points just past it.
        let in_value = vspan.start <= offset && offset <= vspan.end;
        if in_key || in_value {
            path.push(key.get_ref().to_string());
            if !in_key {
                walk_value(value.get_ref(), offset, path);
            }
            return;
        }
    }
    // A table written with `[a.b]` headers: the value spans only the header;
    // look for the key deeper down anyway.
    for (key, value) in table.iter() {
        if let toml::de::DeValue::Table(t) = value.get_ref() {
            let mut sub = vec![key.get_ref().to_string()];
            walk_table(t, offset, &mut sub);
            if sub.len() > 1 {
                path.extend(sub);
                return;
            }
        }
    }
}

fn walk_value(value: &toml::de::DeValue<'_>, offset: usize, path: &mut Vec<String>) {
    match value {
        toml::de::DeValue::Table(t) => walk_table(t, offset, path),
        toml::de::DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if item.span().contains(&offset) {
                    path.push(format!("[{i}]"));
                    walk_value(item.get_ref(), offset, path);
                    return;
                }
            }
        }
        _ => {}
    }
}

/// A key as TOML writes it: bare when it can be, else quoted.
fn quote_key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare || k.starts_with('[') {
        k.to_owned()
    } else {
        format!("{k:?}")
    }
}

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

/// `retention = { max_len = N, approximate = true }` or `{ max_age = "7d" }`;
/// absent: unbounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionSpec(pub Retention);

impl<'de> Deserialize<'de> for RetentionSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            max_len: Option<u64>,
            approximate: Option<bool>,
            max_age: Option<Dur>,
        }
        let raw = Raw::deserialize(d)?;
        match (raw.max_len, raw.max_age) {
            (Some(_), Some(_)) => Err(de::Error::custom("give max_len or max_age, not both")),
            (Some(0), None) => Err(de::Error::custom(
                "max_len must be at least 1 (leave retention out for an unbounded stream)",
            )),
            (Some(len), None) => Ok(RetentionSpec(Retention::MaxLen {
                len,
                exact: !raw.approximate.unwrap_or(true),
            })),
            (None, Some(age)) if raw.approximate.is_some() => {
                let _ = age;
                Err(de::Error::custom(
                    "approximate applies to max_len only (max_age always trims approximately)",
                ))
            }
            (None, Some(Dur(age))) if age.is_zero() => {
                Err(de::Error::custom("max_age must be above zero"))
            }
            (None, Some(Dur(age))) => Ok(RetentionSpec(Retention::MaxAge(age))),
            (None, None) => Err(de::Error::custom(
                "retention needs max_len or max_age (leave it out for an unbounded stream)",
            )),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_is_valid_and_complete() {
        let t = Topology::example();
        assert_eq!(t.streams.len(), 5);
        assert_eq!(t.group_count(), 5);
        for (stream, group) in [
            ("aurora:alerts", "alert-processor"),
            ("aurora:cps:alerts", "cps-alert-handler"),
            ("aurora:agent:tasks", "orchestrator"),
            ("aurora:agent:results", "api-persistence"),
            ("aurora:audit", "audit-logger"),
        ] {
            assert!(t.group(stream, group).is_some(), "{stream} {group}");
        }
    }

    fn err(text: &str) -> TopologyError {
        Topology::parse(text).unwrap_err()
    }

    #[test]
    fn errors_name_line_and_path() {
        let e = err("[streams.\"a:b\".groups.g]\nbatch_size = 10\nvisibility_timeout = \"5x\"\n");
        assert_eq!(e.line, Some(3), "{e}");
        assert_eq!(e.path, "streams.\"a:b\".groups.g.visibility_timeout", "{e}");
        assert!(e.message.contains("invalid duration \"5x\""), "{e}");

        let e = err("[streams.s]\nretention = { max_len = 10, max_age = \"1d\" }\n");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.path.starts_with("streams.s.retention"), "{e}");

        let e = err("[streams.s.groups.g]\nconcurency = 3\n");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("concurency"), "{e}");

        let e = err("[streams.s.groups.g]\nstart = \"yesterday\"\n");
        assert_eq!(e.path, "streams.s.groups.g.start", "{e}");
        assert!(e.message.contains("invalid start"), "{e}");
    }

    #[test]
    fn partitions_default_to_one_and_are_checked() {
        let t = Topology::parse("[streams.a]\npartitions = 6\n[streams.b]\n").unwrap();
        assert_eq!(t.partitions("a"), 6);
        assert_eq!(t.partitions("b"), 1);
        assert_eq!(t.partitions("unknown"), 1);
        assert_eq!(Topology::example().partitions("aurora:alerts"), 1);
        for bad in ["0", "1025", "-1", "\"six\""] {
            let e = err(&format!(
                "[streams.a]\nretention = {{ max_len = 5 }}\npartitions = {bad}\n"
            ));
            assert_eq!(e.line, Some(3), "{bad}: {e}");
            assert_eq!(e.path, "streams.a.partitions", "{bad}: {e}");
        }
        let e = err("[streams.a]\npartitions = 0\n");
        assert!(e.message.contains("between 1 and 1024"), "{e}");
    }

    #[test]
    fn group_settings_override_defaults_only_where_set() {
        let t = Topology::parse(
            "[streams.s.groups.g]\nconcurrency = 4\nbackoff = { base = \"10ms\", max = \"1s\" }\n",
        )
        .unwrap();
        let o = t.group("s", "g").unwrap().apply(WorkerOptions::default());
        assert_eq!(o.concurrency, 4);
        assert_eq!(o.batch_size, WorkerOptions::default().batch_size);
        assert_eq!(
            o.retry_backoff,
            Backoff::new(Duration::from_millis(10), Duration::from_secs(1))
        );
    }

    mod fuzz {
        //! The topology parser takes files users edit by hand: no input may panic,
        //! and every error names a line.
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_text_never_panics(text in ".{0,200}") {
                let _ = Topology::parse(&text);
            }

            #[test]
            fn damaged_example_files_give_line_numbered_errors(
                cut in 0usize..EXAMPLE.len(),
                at in 0usize..EXAMPLE.len(),
                junk in "[ -~\n]{0,6}",
            ) {
                // Truncated, and with a few characters replaced.
                let mut text = EXAMPLE[..EXAMPLE.floor_char_boundary(cut)].to_owned();
                let at = text.floor_char_boundary(at.min(text.len()));
                text.replace_range(at..text.ceil_char_boundary((at + junk.len()).min(text.len())), &junk);
                if let Err(e) = Topology::parse(&text) {
                    let shown = e.to_string();
                    prop_assert!(shown.contains("line "), "{}", shown);
                }
            }
        }
    }
}
