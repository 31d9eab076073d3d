//! The sections of the topology file: `[service]`, `[streams."NAME"]`, its
//! `dead_letter` policy and its `groups.GROUP` worker settings, as they are
//! deserialized (each value already checked, see [`super::values`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;
use streambus::WorkerOptions;

use super::values::{
    BackoffSpec, Dur, GroupName, PartitionCount, Positive, PositiveU32, RetentionSpec, Start,
    StreamName,
};

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
    /// Publishes succeed only once this many replicas hold them
    /// (`streambus::ProducerOptions::min_replicas`).
    pub min_replicas: Option<u32>,
    /// How long a publish waits for `min_replicas` (default 1 s).
    pub replica_timeout: Option<Dur>,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use streambus::{Backoff, WorkerOptions};

    use super::super::Topology;

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
}
