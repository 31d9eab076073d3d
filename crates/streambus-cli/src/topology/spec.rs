//! The sections of the topology file: `[service]`, `[streams."NAME"]`, its
//! `dead_letter` policy and its `groups.GROUP` worker settings, as they are
//! deserialized (each value already checked, see [`super::values`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;
use streambus::partition::LeaseOptions;
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
    /// Leased membership (`consume --exec/--pipe` on a partitioned stream,
    /// without `--member`): how long a partition's owner lease lasts unless
    /// renewed (`--lease-time` overrides it). A crashed member's partitions
    /// wait this long for a new owner. Ignored for a plain stream.
    pub lease_time: Option<Dur>,
    /// How often the leases are renewed (`--lease-renew` overrides it); at
    /// most half the lease time, checked by [`GroupSpec::check_lease`].
    pub lease_renew: Option<Dur>,
}

/// A lease setting of a group that cannot work, and the key to blame.
#[derive(Debug, PartialEq, Eq)]
pub struct LeaseProblem {
    /// `lease_time` or `lease_renew`.
    pub key: &'static str,
    pub message: String,
}

impl GroupSpec {
    /// Checks the lease settings against each other (each alone is checked
    /// while it is read): both above zero, and renewed at least twice per
    /// lease time, so that one failed renewal does not lose the lease. A
    /// renewal interval given alone is held against the default lease time.
    pub fn check_lease(&self) -> Result<(), LeaseProblem> {
        let problem = |key, message: String| Err(LeaseProblem { key, message });
        if self.lease_time.is_some_and(|d| d.0.is_zero()) {
            return problem("lease_time", "lease_time must be above zero".to_owned());
        }
        if self.lease_renew.is_some_and(|d| d.0.is_zero()) {
            return problem("lease_renew", "lease_renew must be above zero".to_owned());
        }
        let Some(Dur(renew)) = self.lease_renew else {
            // Renewed at a third of the lease time: always often enough.
            return Ok(());
        };
        let (lease, whose) = match self.lease_time {
            Some(Dur(t)) => (t, "lease_time"),
            None => (LeaseOptions::default().lease_time, "the default lease time"),
        };
        if renew * 2 > lease {
            return problem(
                "lease_renew",
                format!(
                    "lease_renew ({renew:?}) must be at most half of {whose} ({lease:?}), so that one failed renewal does not lose the lease"
                ),
            );
        }
        Ok(())
    }

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
    use super::{GroupSpec, LeaseProblem};

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

    #[test]
    fn lease_settings_are_read_and_checked_against_each_other() {
        let t = Topology::parse(
            "[streams.s]\npartitions = 4\n[streams.s.groups.g]\nlease_time = \"6s\"\nlease_renew = \"2s\"\n[streams.s.groups.h]\n",
        )
        .unwrap();
        let g = t.group("s", "g").unwrap();
        assert_eq!(g.lease_time.unwrap().0, Duration::from_secs(6));
        assert_eq!(g.lease_renew.unwrap().0, Duration::from_secs(2));
        let h = t.group("s", "h").unwrap();
        assert_eq!((h.lease_time, h.lease_renew), (None, None));

        // The group's table alone: `Topology::parse` runs the check itself.
        let spec = |text: &str| toml::from_str::<GroupSpec>(text).unwrap().check_lease();
        assert_eq!(spec("lease_time = \"4s\"\nlease_renew = \"2s\"\n"), Ok(()));
        assert_eq!(spec("lease_time = \"1s\"\n"), Ok(()));
        assert_eq!(
            spec("lease_renew = \"5s\"\n"),
            Ok(()),
            "half the default 10s"
        );
        let key = |r: Result<(), LeaseProblem>| r.unwrap_err().key;
        assert_eq!(
            key(spec("lease_time = \"4s\"\nlease_renew = \"3s\"\n")),
            "lease_renew"
        );
        assert_eq!(key(spec("lease_renew = \"6s\"\n")), "lease_renew");
        assert_eq!(key(spec("lease_time = \"0s\"\n")), "lease_time");
        assert_eq!(
            key(spec("lease_time = \"4s\"\nlease_renew = 0\n")),
            "lease_renew"
        );
        let e = spec("lease_renew = \"6s\"\n").unwrap_err();
        assert!(
            e.message.contains("the default lease time (10s)"),
            "{}",
            e.message
        );
    }
}
