//! The arguments of the operations on a stream and its groups: `groups`,
//! `dlq`, `monitor`, `scale`.

use std::time::Duration;

use clap::{Args, Subcommand};
use streambus::config::parse_duration;
use streambus::{EntryId, StartId};

use super::PartitionsArg;

#[derive(Debug, Args)]
pub struct GroupsArgs {
    /// The stream.
    pub stream: String,

    #[command(flatten)]
    pub partitions: PartitionsArg,

    /// Print the groups as JSON instead of a table; with --create or
    /// --destroy, what was done as one JSON object.
    #[arg(long)]
    pub json: bool,

    /// Create this group (and the stream, if missing).
    #[arg(long, value_name = "GROUP", conflicts_with = "destroy")]
    pub create: Option<String>,

    /// Destroy this group and its pending entries list (the entries stay in the stream).
    #[arg(long, value_name = "GROUP")]
    pub destroy: Option<String>,

    /// With --create: where the group starts (0, $ or an entry id).
    #[arg(long, value_name = "ID|$|0", requires = "create", default_value = "0")]
    pub from: StartId,
}

#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Print the dead letters of a stream, oldest first.
    List(DlqListArgs),
    /// Put dead letters back onto their stream, as new entries.
    Replay(DlqReplayArgs),
    /// Delete all dead letters of a stream.
    Purge(DlqPurgeArgs),
}

#[derive(Debug, Args)]
pub struct DlqListArgs {
    /// The stream whose dead letters to list (not the dead-letter stream itself).
    pub stream: String,

    #[command(flatten)]
    pub partitions: PartitionsArg,

    /// Most dead letters to print (default: all).
    #[arg(short = 'n', long, value_name = "N")]
    pub count: Option<u64>,

    /// One JSON document per dead letter instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["ids", "all"])))]
pub struct DlqReplayArgs {
    /// The stream the dead letters came from.
    pub stream: String,

    #[command(flatten)]
    pub partitions: PartitionsArg,

    /// A dead letter to replay: its id in the dead-letter stream (the `id`
    /// column of `dlq list`). Repeatable.
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<EntryId>,

    /// Replay every dead letter of the stream.
    #[arg(long)]
    pub all: bool,

    /// One JSON object per line (`{"id", "new_id", "partition"}`, or with
    /// --all `{"stream", "replayed"}`) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DlqPurgeArgs {
    /// The stream whose dead letters to delete.
    pub stream: String,

    #[command(flatten)]
    pub partitions: PartitionsArg,

    /// Really delete them (without it, only say how many there are).
    #[arg(long)]
    pub yes: bool,

    /// One JSON object (`{"stream", "purged"}`) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// The stream to look at.
    pub stream: String,

    #[command(flatten)]
    pub partitions: PartitionsArg,

    /// Only this group (default: every group of the stream). Required by --cleanup.
    #[arg(short, long, value_name = "GROUP")]
    pub group: Option<String>,

    /// A consumer idle for longer than this is reported idle (or stalled, if it
    /// holds pending entries); --cleanup treats it as dead.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
    pub idle_threshold: Duration,

    /// A consumer holding more pending entries than this gets a warning (set it
    /// to batch size times concurrency of your workers).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub pending_warning: u64,

    /// Print JSON instead of text: the snapshot (or, with --cleanup, the
    /// cleanup report) as one document; with --watch, one per line.
    #[arg(long)]
    pub json: bool,

    /// Refresh every INTERVAL (default 2s) until Ctrl-C. Put the stream first
    /// or write --watch=INTERVAL, so that the stream is not taken for the interval.
    #[arg(
        long,
        value_name = "INTERVAL",
        num_args = 0..=1,
        default_missing_value = "2s",
        value_parser = parse_interval,
        conflicts_with = "cleanup"
    )]
    pub watch: Option<Duration>,

    /// Hand the pending entries of dead consumers (idle above
    /// --idle-threshold) to live ones, then delete the dead consumers whose
    /// pending list is empty. Needs --group.
    #[arg(long, requires = "group")]
    pub cleanup: bool,

    /// With --cleanup: say what would be done, change nothing.
    #[arg(long, requires = "cleanup")]
    pub dry_run: bool,
}

/// A --watch interval: a duration, not zero (that would hammer Redis).
pub(super) fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("the interval must be above zero".to_owned());
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// The stream.
    pub stream: String,

    #[command(flatten)]
    pub partitions: PartitionsArg,

    /// The consumer group to size.
    #[arg(short, long, value_name = "GROUP")]
    pub group: String,

    /// Reference rule: suggest OUT at or above this utilization, percent.
    #[arg(long, value_name = "PERCENT", default_value_t = streambus::admin::scaler::DEFAULT_SCALE_OUT)]
    pub scale_out_rate: f64,

    /// Reference rule: suggest IN below this utilization (with more than one
    /// consumer), percent.
    #[arg(long, value_name = "PERCENT", default_value_t = streambus::admin::scaler::DEFAULT_SCALE_IN)]
    pub scale_in_rate: f64,

    /// How long to watch the counters to measure the arrival and ack rates.
    #[arg(long, value_name = "DURATION", value_parser = parse_interval, default_value = "5s")]
    pub window: Duration,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    /// Never advise fewer consumers than this [default: 1].
    #[arg(long, value_name = "N")]
    pub min_consumers: Option<u64>,

    /// Never advise more consumers than this [default: 64].
    #[arg(long, value_name = "N")]
    pub max_consumers: Option<u64>,

    /// Drain the lag within this time, on top of keeping up with arrivals
    /// [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub target_drain: Option<Duration>,
}
