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
//! path of the field. Checks across fields (a group's `lease_renew` against
//! its `lease_time`) run once the file is read, and name the key they blame
//! the same way.
//!
//! # Layout
//!
//! - [`spec`]: the sections (`[service]`, streams, dead letters, groups).
//! - [`values`]: the checked values (durations, start ids, names, retention).
//! - [`error`]: a [`TopologyError`] and the line and field it names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod error;
mod spec;
mod values;

pub use self::error::TopologyError;
pub use self::spec::{GroupSpec, ServiceSpec, StreamSpec};
use self::values::StreamName;
pub use self::values::{BackoffSpec, Dur, Positive, PositiveU32, Start};

/// The example topology shipped with streambus: the reference's SOC pipeline.
/// The demo runs on it when no file is given (one source of truth).
pub const EXAMPLE: &str = include_str!("../../../../streambus.example.toml");

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

impl Topology {
    /// Parses and checks a topology file's text. Errors read
    /// `line N: PATH: what is wrong`.
    pub fn parse(text: &str) -> Result<Topology, TopologyError> {
        let raw: RawTopology = toml::from_str(text).map_err(|e| TopologyError::new(text, &e))?;
        for (stream, spec) in &raw.streams {
            for (group, g) in &spec.groups {
                if let Err(p) = g.check_lease() {
                    let keys = ["streams", &stream.0, "groups", &group.0, p.key];
                    return Err(TopologyError::at_key(text, &keys, p.message));
                }
            }
        }
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

        let e = err(
            "[streams.s]\nretention = { max_len = 10, approximate = false, keep_unacked = true }\n",
        );
        assert!(
            e.message.contains("keep_unacked trims approximately"),
            "{e}"
        );
        let t = Topology::parse("[streams.s]\nretention = { max_len = 10, keep_unacked = true }\n")
            .unwrap();
        let r = t.stream("s").unwrap().retention;
        assert!(r.keep_unacked);
        assert_eq!(r.retention, streambus::Retention::max_len(10));

        let e = err("[streams.s.groups.g]\nconcurency = 3\n");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("concurency"), "{e}");

        let e = err(
            "[streams.\"a:b\"]\npartitions = 4\n[streams.\"a:b\".groups.g]\nlease_time = \"4s\"\n\nlease_renew = \"3s\"\n",
        );
        assert_eq!(e.line, Some(6), "{e}");
        assert_eq!(e.path, "streams.\"a:b\".groups.g.lease_renew", "{e}");
        assert!(e.message.contains("at most half of lease_time (4s)"), "{e}");
        let e = err("[streams.s.groups.g]\nlease_time = \"0ms\"\n");
        assert_eq!(
            e.to_string(),
            "line 2: streams.s.groups.g.lease_time: lease_time must be above zero"
        );
        let e = err("[streams.s.groups.g]\nlease_renew = \"soon\"\n");
        assert_eq!(e.path, "streams.s.groups.g.lease_renew", "{e}");
        assert!(e.message.contains("invalid duration"), "{e}");

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
