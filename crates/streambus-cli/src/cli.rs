//! Command-line arguments.

use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};
use streambus::config::{parse_bytes, parse_duration};
use streambus::StartId;

/// streambus: a reliable event bus on Redis Streams.
#[derive(Debug, Parser)]
#[command(name = "streambus", version, about, propagate_version = true)]
pub struct Cli {
    /// Redis URL: redis://[user:password@]host:port[/db], rediss:// for TLS,
    /// redis+cluster://host1:port1,host2:port2 for a cluster.
    // The value may hold a password: never show it (help, errors) except
    // through `Client::display_url`.
    #[arg(
        long,
        global = true,
        env = "REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379",
        value_name = "URL"
    )]
    pub redis: String,

    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the command line. Exits on `--help`, `--version` and usage errors
    /// (status 2); a value that fails validation (a bad id or duration) is
    /// reported on one line, since the parser's own message already says it all.
    pub fn parse_or_exit() -> Cli {
        match Cli::try_parse() {
            Ok(cli) => cli,
            Err(e) if e.kind() == clap::error::ErrorKind::ValueValidation => {
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or("error: invalid value");
                eprintln!("{first}");
                std::process::exit(e.exit_code());
            }
            Err(e) => e.exit(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish messages: JSON arguments, one raw entry (--field), or JSON lines on stdin.
    Publish(PublishArgs),
    /// Print entries of a stream as JSON lines, optionally following new ones.
    Tail(TailArgs),
    /// Read through a consumer group, print each entry as a JSON line, then acknowledge it.
    Consume(ConsumeArgs),
    /// List, create or destroy the consumer groups of a stream.
    Groups(GroupsArgs),
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The stream to publish to.
    pub stream: String,

    /// JSON documents, each published as one envelope. Without any (and without
    /// --field), JSON documents are read from stdin, one per line.
    #[arg(value_name = "JSON")]
    pub json: Vec<String>,

    /// Publish ONE raw entry with exactly these fields (no envelope). Repeatable.
    #[arg(
        long = "field",
        value_name = "NAME=VALUE",
        value_parser = parse_field,
        conflicts_with_all = ["json", "kind", "key"]
    )]
    pub fields: Vec<(String, String)>,

    /// Keep about N entries in the stream (XADD MAXLEN ~ N).
    #[arg(long, value_name = "N")]
    pub maxlen: Option<u64>,

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
}

fn parse_field(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// The stream to read.
    pub stream: String,

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

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// The stream to read.
    pub stream: String,

    /// The consumer group (created if missing, at --from).
    #[arg(short, long, value_name = "GROUP")]
    pub group: String,

    /// This consumer's name in the group (default: <hostname>-<pid>). Reuse a
    /// name to take back the entries delivered to it and not acknowledged.
    #[arg(short, long, value_name = "NAME")]
    pub consumer: Option<String>,

    /// Most entries per read.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub batch_size: usize,

    /// How long one read waits to fill a batch (e.g. 500ms, 5s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2s")]
    pub max_wait: Duration,

    /// Stop after this many entries (default: run until Ctrl-C).
    #[arg(short = 'n', long, value_name = "N")]
    pub count: Option<u64>,

    /// Where a newly created group starts: 0, $ or an entry id.
    #[arg(long, value_name = "ID|$|0", default_value = "0")]
    pub from: StartId,
}

#[derive(Debug, Args)]
pub struct GroupsArgs {
    /// The stream.
    pub stream: String,

    /// Print the groups as JSON instead of a table.
    #[arg(long, conflicts_with_all = ["create", "destroy"])]
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn fields_split_at_the_first_equals() {
        assert_eq!(parse_field("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_field("a=").unwrap(), ("a".into(), String::new()));
        assert!(parse_field("=x").is_err());
        assert!(parse_field("x").is_err());
    }
}
