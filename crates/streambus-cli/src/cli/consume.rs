//! The arguments of `consume`, with those of `consume --exec`.

use std::time::Duration;

use clap::Args;
use streambus::config::parse_duration;
use streambus::{Backoff, StartId};

use super::PartitionsArg;

/// `I/N`: member I of N members (I below N).
pub(super) fn parse_member(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("expected I/N with I below N (e.g. 0/3), got {s:?}");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

/// The help section of the options that only go with `consume --exec` or
/// `consume --pipe`.
const EXEC_HEADING: &str = "Running a command (--exec, --pipe)";

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("runner").args(["exec", "pipe"])))]
pub struct ConsumeArgs {
    /// The stream to read.
    pub stream: String,

    #[command(flatten)]
    pub partitions: PartitionsArg,

    /// Static membership: this process is member I of N (e.g. `0/3`) and
    /// reads only the partitions P with P % N == I, so that each partition (and
    /// so each key) is read by one process at a time. While a member is down,
    /// its partitions wait for it. Needs a partitioned stream. Without it,
    /// --exec and --pipe on a partitioned stream use leased membership:
    /// processes join and leave freely, each partition is owned by one live
    /// process at a time (an owner lease in Redis), and the partitions of a
    /// process that stops or dies move to the others (see --lease-time).
    #[arg(long, value_name = "I/N", value_parser = parse_member)]
    pub member: Option<(usize, usize)>,

    /// Leased membership (a partitioned stream with --exec or --pipe, no
    /// --member): how long a partition's owner lease lasts unless renewed. A
    /// process that dies holds its partitions this long (plus one renewal),
    /// one that stops gracefully hands them over at once. A command that
    /// runs longer than the lease time minus --lease-renew may overlap with
    /// the next owner if this process is paused or cut off [default: the
    /// group's lease_time in the topology file, else 10s].
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = parse_duration,
        requires = "runner",
        conflicts_with = "member",
        help_heading = EXEC_HEADING
    )]
    pub lease_time: Option<Duration>,

    /// Leased membership: how often leases are renewed and the live
    /// processes looked at; at most half of --lease-time [default: the
    /// group's lease_renew in the topology file, else a third of the lease
    /// time: 3s by default].
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = parse_duration,
        requires = "runner",
        conflicts_with = "member",
        help_heading = EXEC_HEADING
    )]
    pub lease_renew: Option<Duration>,

    /// The consumer group (created if missing, at --from).
    #[arg(short, long, value_name = "GROUP")]
    pub group: String,

    /// This consumer's name in the group (default: `<hostname>-<pid>`). Reuse a
    /// name to take back the entries delivered to it and not acknowledged.
    #[arg(short, long, value_name = "NAME")]
    pub consumer: Option<String>,

    /// Most entries per read (when printing, a batch read ahead is read as
    /// two halves) [default: the group's batch_size in the topology file,
    /// else 2000 when printing, 128 with --pipe, 10 with --exec].
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,

    /// How long one read waits when no entry is there (e.g. 500ms, 5s); what
    /// is there is returned at once [default: the group's max_wait in the
    /// topology file, else 2s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_wait: Option<Duration>,

    /// Stop after this many entries (default: run until Ctrl-C). With --exec:
    /// after this many were acknowledged or dead-lettered.
    #[arg(short = 'n', long, value_name = "N")]
    pub count: Option<u64>,

    /// Where a newly created group starts: 0, $ or an entry id [default: the
    /// group's start in the topology file, else 0].
    #[arg(long, value_name = "ID|$|0")]
    pub from: Option<StartId>,

    /// Never create the group: a missing group is an error, and so is one
    /// that vanishes while consuming (Redis restarted without persistence).
    /// Without it, a vanished group is recreated from the start of the stream.
    #[arg(long, conflicts_with = "runner")]
    pub no_create: bool,

    /// Run CMD for each entry instead of printing it (directly when it is
    /// plain words, else with `sh -c`): the entry's JSON
    /// line on its stdin, STREAMBUS_STREAM, STREAMBUS_ENTRY_ID,
    /// STREAMBUS_DELIVERIES, STREAMBUS_GROUP and STREAMBUS_CONSUMER in its
    /// environment (and, for a partitioned stream, STREAMBUS_PARTITION and
    /// STREAMBUS_PARTITION_KEY). Exit 0 acknowledges the entry, 65 (EX_DATAERR)
    /// dead-letters it at once, anything else (75 EX_TEMPFAIL, other codes, a
    /// signal) retries it after the backoff, until --max-deliveries.
    #[arg(long, value_name = "CMD", help_heading = EXEC_HEADING)]
    pub exec: Option<String>,

    /// Start `sh -c CMD` once and stream entries through it: one JSON line per
    /// entry on its stdin (as printed without --exec), one answer per entry on
    /// its stdout, in any order: `ack ID`, `retry ID [DELAY] [REASON]` or
    /// `dead ID REASON` (its logs go to stderr). A copy that exits or writes
    /// anything else is restarted, and its unanswered entries are retried.
    /// STREAMBUS_STREAM, STREAMBUS_GROUP, STREAMBUS_CONSUMER and STREAMBUS_COPY
    /// are in its environment.
    #[arg(long, value_name = "CMD", conflicts_with = "exec", help_heading = EXEC_HEADING)]
    pub pipe: Option<String>,

    /// With --pipe: entries handed to the command and not yet answered, over
    /// all copies [default: 256].
    #[arg(long, value_name = "N", requires = "pipe", help_heading = EXEC_HEADING)]
    pub in_flight: Option<usize>,

    /// Commands running at the same time; with --pipe, copies of the command
    /// [default: 1: each command is a process, so more is something to ask
    /// for].
    #[arg(
        long,
        value_name = "N",
        requires = "runner",
        help_heading = EXEC_HEADING
    )]
    pub concurrency: Option<usize>,

    /// An entry held by another consumer for this long is taken over (its
    /// consumer is presumed dead). Must exceed the longest command run
    /// [default: 30s].
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = parse_duration,
        requires = "runner",
        help_heading = EXEC_HEADING
    )]
    pub visibility_timeout: Option<Duration>,

    /// Deliveries after which a failing entry is dead-lettered [default: 5].
    #[arg(
        long,
        value_name = "N",
        requires = "runner",
        help_heading = EXEC_HEADING
    )]
    pub max_deliveries: Option<u32>,

    /// Delay before a retry: BASE after the first failure, doubling up to MAX
    /// (e.g. 1s,5m or 100ms) [default: 1s,5m].
    #[arg(
        long,
        value_name = "BASE[,MAX]",
        value_parser = parse_backoff,
        requires = "runner",
        help_heading = EXEC_HEADING
    )]
    pub backoff: Option<Backoff>,

    /// Run entries with the same envelope key one at a time, in stream order.
    #[arg(long, requires = "runner", help_heading = EXEC_HEADING)]
    pub ordered_by_key: bool,

    /// On Ctrl-C or SIGTERM, how long running commands may still take; then
    /// they are killed (with what they started) and their entries stay pending
    /// [default: 30s].
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = parse_duration,
        requires = "runner",
        help_heading = EXEC_HEADING
    )]
    pub grace: Option<Duration>,
}

/// `BASE[,MAX]`: a doubling backoff. MAX defaults to 5m (or BASE, if larger).
pub(super) fn parse_backoff(s: &str) -> Result<Backoff, String> {
    let (base, max) = match s.split_once(',') {
        Some((base, max)) => (base, Some(max)),
        None => (s, None),
    };
    let base = parse_duration(base).map_err(|e| e.to_string())?;
    let max = match max {
        Some(max) => parse_duration(max).map_err(|e| e.to_string())?,
        None => Duration::from_secs(300).max(base),
    };
    if max < base {
        return Err(format!("the maximum of backoff {s:?} is below its base"));
    }
    Ok(Backoff::new(base, max))
}
