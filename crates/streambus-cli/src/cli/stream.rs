//! The arguments of the commands that write or read a stream: `publish`, `tail`.

use std::time::Duration;

use clap::Args;
use streambus::config::{parse_bytes, parse_duration};
use streambus::StartId;

use super::PartitionsArg;

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The stream to publish to.
    pub stream: String,

    #[command(flatten)]
    pub partitions: PartitionsArg,

    /// JSON documents, each published as one envelope. Without any (and without
    /// --field), JSON documents are read from stdin, one per line.
    #[arg(value_name = "JSON")]
    pub documents: Vec<String>,

    /// Publish ONE raw entry with exactly these fields (no envelope). Repeatable.
    #[arg(
        long = "field",
        value_name = "NAME=VALUE",
        value_parser = parse_field,
        conflicts_with_all = ["documents", "kind", "key"]
    )]
    pub fields: Vec<(String, String)>,

    /// Print one JSON object per message written instead of its entry id:
    /// `{"stream", "entry_id", "envelope_id"}` (`envelope_id` null for a
    /// --field entry), plus `"partition"` (its index) and `"partition_key"`
    /// for a partitioned stream.
    #[arg(long)]
    pub json: bool,

    /// Keep about N entries in the stream (XADD MAXLEN ~ N) [default: the
    /// stream's retention in the topology file, else unbounded].
    #[arg(long, value_name = "N")]
    pub maxlen: Option<u64>,

    /// Trim toward --maxlen (or the topology file's retention) but never
    /// past an entry a consumer group has not acknowledged or not yet read:
    /// a slow group loses nothing [default: the topology file's
    /// `keep_unacked`, else off].
    #[arg(long)]
    pub keep_unacked: bool,

    /// A line counts as published only once N replicas hold it (WAIT after
    /// each pipeline); a line not replicated within --replica-timeout stops
    /// publish with its number (it is on the primary) [default: the topology
    /// file's `min_replicas`, else 0: the primary's acknowledgement].
    #[arg(long, value_name = "N")]
    pub min_replicas: Option<u32>,

    /// How long to wait for --min-replicas (below --response-timeout)
    /// [default: the topology file's `replica_timeout`, else 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub replica_timeout: Option<std::time::Duration>,

    /// Largest message accepted (e.g. 512KiB, 1MiB); larger ones are refused
    /// and nothing is written.
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes, default_value = "1MiB")]
    pub max_message_bytes: usize,

    /// The envelope's `type` field.
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: Option<String>,

    /// The envelope's `key` field (ordering / partition key).
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,

    /// Each line's envelope key from this field of its JSON object (a
    /// string, or a number's text): keyed events from one process, each to
    /// its partition. A line without it is refused, with its number.
    #[arg(long, value_name = "FIELD", conflicts_with_all = ["key", "fields"])]
    pub key_field: Option<String>,

    /// How long to keep retrying one chunk of input while Redis is away
    /// (refused, silent, reset, loading after a restart) before giving up
    /// with the number of the first line not published. The default rides
    /// out a Redis restart or a Sentinel/managed failover (seconds to a few
    /// minutes) without hanging for ever on an outage that needs a human.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    pub retry_for: Duration,
}

pub(super) fn parse_field(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// The stream to read.
    pub stream: String,

    #[command(flatten)]
    pub partitions: PartitionsArg,

    /// Where to start: 0 (the beginning), $ (only new entries) or an entry id
    /// (entries after it). Without it: the last --count entries.
    #[arg(long, value_name = "ID|$|0")]
    pub from: Option<StartId>,

    /// Without --from: how many of the last entries to print (default 10).
    /// With --from: the most entries to print in all (default: no limit).
    #[arg(short = 'n', long, value_name = "N")]
    pub count: Option<u64>,

    /// Keep waiting for new entries (until Ctrl-C, or --count with --from).
    #[arg(short, long)]
    pub follow: bool,
}
