//! Where a command's settings come from. One rule for every command: a flag
//! given on the command line, else the topology file, else the command's
//! built-in default.
//!
//! [`layered`] is that rule for one value. [`lease_options`] applies it to
//! the lease settings of leased membership. [`worker_options`] applies it to a
//! consumer group's settings (`consume`, `consume --exec`): the flags are
//! turned into a [`GroupSpec`] and laid over the file's with the same
//! [`GroupSpec::apply`], so that a setting added to the file and to the flags
//! is merged in one place.

use std::time::Duration;

use streambus::partition::LeaseOptions;
use streambus::WorkerOptions;

use crate::cli::ConsumeArgs;
use crate::topology::{BackoffSpec, Dur, GroupSpec, Positive, PositiveU32, Start, Topology};

/// Default of `--batch-size` (its help text states it).
pub const BATCH_SIZE: usize = 10;
/// Default of `--max-wait`.
pub const MAX_WAIT: Duration = Duration::from_secs(2);

/// The flag if given, else the file's value, else the default.
pub fn layered<T>(flag: Option<T>, file: Option<T>, default: T) -> T {
    flag.or(file).unwrap_or(default)
}

/// What the topology file says about the stream and group being consumed.
#[derive(Clone, Copy, Default)]
pub struct FileGroup<'a> {
    pub group: Option<&'a GroupSpec>,
    pub dead_letter_maxlen: Option<u64>,
}

impl<'a> FileGroup<'a> {
    pub fn of(topology: Option<&'a Topology>, stream: &str, group: &str) -> Self {
        let Some(t) = topology else {
            return FileGroup::default();
        };
        FileGroup {
            group: t.group(stream, group),
            dead_letter_maxlen: t
                .stream(stream)
                .and_then(|s| s.dead_letter.as_ref())
                .and_then(|d| d.max_len),
        }
    }
}

/// The group settings given as flags, in the file's shape.
fn flags(args: &ConsumeArgs) -> GroupSpec {
    GroupSpec {
        start: args.from.map(Start),
        batch_size: args.batch_size.map(Positive),
        concurrency: args.concurrency.map(Positive),
        max_wait: args.max_wait.map(Dur),
        visibility_timeout: args.visibility_timeout.map(Dur),
        max_deliveries: args.max_deliveries.map(PositiveU32),
        backoff: args.backoff.map(BackoffSpec),
        // A switch: given turns it on; absent leaves the file's choice.
        ordered_by_key: args.ordered_by_key.then_some(true),
        shutdown_grace: args.grace.map(Dur),
        lease_time: args.lease_time.map(Dur),
        lease_renew: args.lease_renew.map(Dur),
    }
}

/// Leased membership's settings: the flags (`--lease-time`, `--lease-renew`)
/// over the file's group (`lease_time`, `lease_renew`) over the library's
/// defaults (10 s, 3 s). At each level a lease time given without a renewal
/// interval is renewed at a third of it (the defaults' ratio), rather than at
/// a lower level's interval, which was chosen for another lease time; a
/// renewal interval given alone keeps the lease time below it.
pub fn lease_options(args: &ConsumeArgs, file: Option<&GroupSpec>) -> LeaseOptions {
    fn over(t: Option<Duration>, r: Option<Duration>, below: LeaseOptions) -> LeaseOptions {
        match (t, r) {
            (Some(lease_time), Some(renew_interval)) => LeaseOptions {
                lease_time,
                renew_interval,
            },
            (Some(lease_time), None) => LeaseOptions {
                lease_time,
                renew_interval: lease_time / 3,
            },
            (None, Some(renew_interval)) => LeaseOptions {
                renew_interval,
                ..below
            },
            (None, None) => below,
        }
    }
    let from_file = over(
        file.and_then(|g| g.lease_time).map(|d| d.0),
        file.and_then(|g| g.lease_renew).map(|d| d.0),
        LeaseOptions::default(),
    );
    over(args.lease_time, args.lease_renew, from_file)
}

/// `defaults` (the command's own), then the file's settings for the group,
/// then the flags.
pub fn worker_options(
    args: &ConsumeArgs,
    file: FileGroup<'_>,
    defaults: WorkerOptions,
) -> WorkerOptions {
    let base = WorkerOptions {
        dead_letter_maxlen: file.dead_letter_maxlen.or(defaults.dead_letter_maxlen),
        ..defaults
    };
    let from_file = match file.group {
        Some(spec) => spec.apply(base),
        None => base,
    };
    flags(args).apply(from_file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn consume_args(argv: &[&str]) -> ConsumeArgs {
        let mut full = vec!["streambus", "consume", "s", "--group", "g"];
        full.extend_from_slice(argv);
        match crate::cli::Cli::try_parse_from(full).unwrap().command {
            crate::cli::Command::Consume(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn one_value_flag_over_file_over_default() {
        assert_eq!(layered(Some(1), Some(2), 3), 1);
        assert_eq!(layered(None, Some(2), 3), 2);
        assert_eq!(layered(None, None, 3), 3);
    }

    #[test]
    fn group_settings_flags_over_file_over_defaults() {
        let t = Topology::parse(
            r#"
[streams.s]
dead_letter = { max_len = 77 }
[streams.s.groups.g]
batch_size = 20
max_wait = "5s"
concurrency = 3
"#,
        )
        .unwrap();
        let file = FileGroup::of(Some(&t), "s", "g");
        let defaults = WorkerOptions {
            batch_size: BATCH_SIZE,
            block: MAX_WAIT,
            ..Default::default()
        };
        let o = worker_options(
            &consume_args(&["--batch-size", "7"]),
            file,
            defaults.clone(),
        );
        assert_eq!(o.batch_size, 7, "the flag wins");
        assert_eq!(o.block, Duration::from_secs(5), "then the file");
        assert_eq!(o.concurrency, 3);
        assert_eq!(o.dead_letter_maxlen, Some(77));
        assert_eq!(
            o.visibility_timeout, defaults.visibility_timeout,
            "then the default"
        );
        assert!(!o.ordered_by_key);

        let none = worker_options(&consume_args(&[]), FileGroup::default(), defaults.clone());
        assert_eq!(none.batch_size, BATCH_SIZE);
        assert_eq!(none.block, MAX_WAIT);
    }

    #[test]
    fn lease_settings_flags_over_file_over_defaults() {
        let t = Topology::parse(
            "[streams.s]\npartitions = 4\n[streams.s.groups.g]\nlease_time = \"30s\"\nlease_renew = \"5s\"\n[streams.s.groups.t]\nlease_time = \"6s\"\n",
        )
        .unwrap();
        let lease = |argv: &[&str], group: &str| {
            let o = lease_options(&consume_args(argv), t.group("s", group));
            (o.lease_time, o.renew_interval)
        };
        let s = Duration::from_secs;
        assert_eq!(lease(&[], "g"), (s(30), s(5)), "the file");
        assert_eq!(lease(&[], "none"), (s(10), s(3)), "the defaults");
        assert_eq!(lease(&[], "t"), (s(6), s(2)), "a third of the file's lease");
        let run = ["--exec", "true"];
        let with = |extra: &[&'static str]| [&run[..], extra].concat();
        assert_eq!(
            lease(&with(&["--lease-time", "12s"]), "g"),
            (s(12), s(4)),
            "the flag's lease, renewed at a third of it"
        );
        assert_eq!(
            lease(&with(&["--lease-renew", "2s"]), "g"),
            (s(30), s(2)),
            "the flag's renewal, the file's lease"
        );
        assert_eq!(
            lease(&with(&["--lease-time", "8s", "--lease-renew", "1s"]), "g"),
            (s(8), s(1))
        );
    }
}
