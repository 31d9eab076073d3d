//! Command-line arguments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};
use streambus::config::{parse_bytes, parse_duration};
use streambus::{Backoff, EntryId, StartId};

/// streambus: a reliable event bus on Redis Streams.
#[derive(Debug, Parser)]
#[command(name = "streambus", version, about, propagate_version = true)]
pub struct Cli {
    /// Redis URL: redis://[user:password@]host:port[/db], rediss:// for TLS,
    /// redis+cluster://host1:port1,host2:port2 for a cluster [default: the
    /// topology file's `redis`, else redis://127.0.0.1:6379; `demo` and
    /// `serve` start a private redis-server when none is given].
    // The value may hold a password: never show it (help, errors) except
    // through `Client::display_url`.
    #[arg(
        long,
        global = true,
        env = "REDIS_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub redis: Option<String>,

    /// TLS: the CA certificate (PEM) that signed the Redis server's certificate,
    /// instead of the system's trusted roots (also `?ca=FILE` in the URL).
    #[arg(long, global = true, env = "REDIS_CA", value_name = "FILE")]
    pub redis_ca: Option<PathBuf>,

    /// TLS: a client certificate (PEM), for servers that require one (mutual TLS).
    #[arg(
        long,
        global = true,
        env = "REDIS_CERT",
        value_name = "FILE",
        requires = "redis_key"
    )]
    pub redis_cert: Option<PathBuf>,

    /// TLS: the private key (PEM) of --redis-cert.
    #[arg(
        long,
        global = true,
        env = "REDIS_KEY",
        value_name = "FILE",
        requires = "redis_cert"
    )]
    pub redis_key: Option<PathBuf>,

    /// TLS: accept ANY server certificate. For tests only: anyone on the network
    /// path can then read and change the traffic, passwords included.
    #[arg(long, global = true)]
    pub redis_insecure_skip_verify: bool,

    /// How long to wait for a reply from Redis before the connection counts as
    /// dead and is replaced (blocking reads add their wait to it). With the
    /// defaults, every long-running command works again within 10 s of the
    /// network healing.
    #[arg(long, global = true, env = "STREAMBUS_RESPONSE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration, default_value = "3s")]
    pub response_timeout: Duration,

    /// How long to wait for a new connection to Redis (TCP, TLS) to open.
    #[arg(long, global = true, env = "STREAMBUS_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = parse_duration, default_value = "3s")]
    pub connect_timeout: Duration,

    /// The topology file (streams, retention, groups, service) every command
    /// takes its defaults from [default: ./streambus.toml if it exists].
    #[arg(long, global = true, env = "STREAMBUS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// How to connect: the TLS settings of the command line.
    pub fn connect_options(&self) -> streambus::ConnectOptions {
        streambus::ConnectOptions {
            tls: streambus::connection::TlsOptions {
                ca_file: self.redis_ca.clone(),
                client_cert_file: self.redis_cert.clone(),
                client_key_file: self.redis_key.clone(),
                insecure_skip_verify: self.redis_insecure_skip_verify,
            },
            response_timeout: self.response_timeout,
            connect_timeout: self.connect_timeout,
            ..Default::default()
        }
    }

    /// Parses the command line. Exits on `--help`, `--version` and usage errors
    /// (status 2); a value that fails validation (a bad id or duration) is
    /// reported on one line, since the parser's own message already says it all.
    pub fn parse_or_exit() -> Cli {
        match Cli::try_parse_with_sources() {
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

    /// Parses the command line, remembering where a secret came from.
    fn try_parse_with_sources() -> Result<Cli, clap::Error> {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command().try_get_matches()?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        if let Command::Serve(args) = &mut cli.command {
            args.token_on_command_line = matches
                .subcommand_matches("serve")
                .and_then(|m| m.value_source("token"))
                == Some(clap::parser::ValueSource::CommandLine);
        }
        Ok(cli)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish messages: JSON arguments, one raw entry (--field), or JSON lines on stdin.
    Publish(PublishArgs),
    /// Print entries of a stream as JSON lines, optionally following new ones.
    Tail(TailArgs),
    /// Read through a consumer group, print each entry as a JSON line, then
    /// acknowledge it; or, with --exec, run a command for each entry.
    Consume(ConsumeArgs),
    /// List, create or destroy the consumer groups of a stream.
    Groups(GroupsArgs),
    /// List, replay or purge the dead letters of a stream.
    Dlq(DlqArgs),
    /// Show a stream, its groups and their consumers' health; optionally
    /// refresh (--watch) or clean up dead consumers (--cleanup).
    Monitor(MonitorArgs),
    /// Suggest how many consumers a group should have: the reference rule
    /// (IN / OUT / NO_SCALE) and a throughput-based target.
    Scale(ScaleArgs),
    /// Serve the dashboard, the JSON API, the WebSocket relay and /metrics.
    Serve(ServeArgs),
    /// Run the SOC pipeline of the reference in one process, with the
    /// dashboard: alerts in, tasks and results out, a worker killed and
    /// restarted, malformed alerts dead-lettered; then prove nothing was lost.
    Demo(DemoArgs),
    /// Check a topology file, or create its streams' groups in Redis.
    Topology(TopologyArgs),
    /// Measure publish and consume throughput, latency and memory against a
    /// private redis-server (or --redis), next to redis-benchmark in the same run.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Print the report as one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,

    /// A shorter run (100,000 messages per publish phase, 1 s latency phases).
    #[arg(long)]
    pub quick: bool,

    /// Messages per publish phase (and for redis-benchmark).
    #[arg(long, value_name = "N")]
    pub messages: Option<u64>,

    /// Rounds of the throughput phases; each figure is the median of the
    /// rounds, each round running redis-benchmark and every phase once
    /// [default: 3; 1 with --quick].
    #[arg(long, value_name = "N")]
    pub rounds: Option<usize>,

    /// Lines fed to `streambus publish` on stdin (each about 200 bytes:
    /// 5000000 is about 1 GB).
    #[arg(long, value_name = "N")]
    pub cli_messages: Option<u64>,

    /// The worker's concurrency in the "concurrency N" phase.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,

    /// Skip the redis-benchmark reference (then no ratios).
    #[arg(long)]
    pub no_redis_benchmark: bool,

    /// Also compare publish and consume on one node with a private 3-master
    /// Redis Cluster (6 partitions) it starts itself.
    #[arg(long)]
    pub cluster: bool,

    /// Only the Redis Cluster comparison.
    #[arg(long, conflicts_with = "cluster")]
    pub cluster_only: bool,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The stream to publish to.
    pub stream: String,

    #[command(flatten)]
    pub partitions: PartitionsArg,

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

    /// Keep about N entries in the stream (XADD MAXLEN ~ N) [default: the
    /// stream's retention in the topology file, else unbounded].
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

    /// How long to keep retrying one chunk of input while Redis is away
    /// (refused, silent, reset, loading after a restart) before giving up
    /// with the number of the first line not published. The default rides
    /// out a Redis restart or a Sentinel/managed failover (seconds to a few
    /// minutes) without hanging for ever on an outage that needs a human.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    pub retry_for: Duration,
}

fn parse_field(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

/// `--partitions N`, shared by the commands that read or write a stream.
#[derive(Clone, Copy, Debug, Default, Args)]
pub struct PartitionsArg {
    /// The stream is split into N partitions (keys `STREAM:p<i>{...}`, spread
    /// over the masters of a Redis Cluster) [default: the stream's `partitions`
    /// in the topology file, else 1: a plain stream].
    #[arg(
        long = "partitions",
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=i64::from(streambus::partition::MAX_PARTITIONS))
    )]
    pub partitions: Option<u32>,
}

/// `I/N`: member I of N members (I below N).
fn parse_member(s: &str) -> Result<(usize, usize), String> {
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

/// The help section of the options that only go with `consume --exec`.
const EXEC_HEADING: &str = "Running a command (--exec)";

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// The stream to read.
    pub stream: String,

    #[command(flatten)]
    pub partitions: PartitionsArg,

    /// Static membership: this process is member I of N (e.g. `0/3`) and
    /// reads only the partitions P with P % N == I, so that each partition (and
    /// so each key) is read by one process at a time. While a member is down,
    /// its partitions wait for it. Needs a partitioned stream.
    #[arg(long, value_name = "I/N", value_parser = parse_member)]
    pub member: Option<(usize, usize)>,

    /// The consumer group (created if missing, at --from).
    #[arg(short, long, value_name = "GROUP")]
    pub group: String,

    /// This consumer's name in the group (default: `<hostname>-<pid>`). Reuse a
    /// name to take back the entries delivered to it and not acknowledged.
    #[arg(short, long, value_name = "NAME")]
    pub consumer: Option<String>,

    /// Most entries per read [default: the group's batch_size in the topology
    /// file, else 10].
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,

    /// How long one read waits to fill a batch (e.g. 500ms, 5s) [default: the
    /// group's max_wait in the topology file, else 2s].
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
    #[arg(long, conflicts_with = "exec")]
    pub no_create: bool,

    /// Run `sh -c CMD` for each entry instead of printing it: the entry's JSON
    /// line on its stdin, STREAMBUS_STREAM, STREAMBUS_ENTRY_ID,
    /// STREAMBUS_DELIVERIES, STREAMBUS_GROUP and STREAMBUS_CONSUMER in its
    /// environment (and, for a partitioned stream, STREAMBUS_PARTITION and
    /// STREAMBUS_PARTITION_KEY). Exit 0 acknowledges the entry, 65 (EX_DATAERR)
    /// dead-letters it at once, anything else (75 EX_TEMPFAIL, other codes, a
    /// signal) retries it after the backoff, until --max-deliveries.
    #[arg(long, value_name = "CMD", help_heading = EXEC_HEADING)]
    pub exec: Option<String>,

    /// Commands running at the same time [default: 1: each command is a
    /// process, so more is something to ask for].
    #[arg(
        long,
        value_name = "N",
        requires = "exec",
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
        requires = "exec",
        help_heading = EXEC_HEADING
    )]
    pub visibility_timeout: Option<Duration>,

    /// Deliveries after which a failing entry is dead-lettered [default: 5].
    #[arg(
        long,
        value_name = "N",
        requires = "exec",
        help_heading = EXEC_HEADING
    )]
    pub max_deliveries: Option<u32>,

    /// Delay before a retry: BASE after the first failure, doubling up to MAX
    /// (e.g. 1s,5m or 100ms) [default: 1s,5m].
    #[arg(
        long,
        value_name = "BASE[,MAX]",
        value_parser = parse_backoff,
        requires = "exec",
        help_heading = EXEC_HEADING
    )]
    pub backoff: Option<Backoff>,

    /// Run entries with the same envelope key one at a time, in stream order.
    #[arg(long, requires = "exec", help_heading = EXEC_HEADING)]
    pub ordered_by_key: bool,

    /// On Ctrl-C or SIGTERM, how long running commands may still take; then
    /// they are killed (with what they started) and their entries stay pending
    /// [default: 30s].
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = parse_duration,
        requires = "exec",
        help_heading = EXEC_HEADING
    )]
    pub grace: Option<Duration>,
}

/// `BASE[,MAX]`: a doubling backoff. MAX defaults to 5m (or BASE, if larger).
fn parse_backoff(s: &str) -> Result<Backoff, String> {
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

#[derive(Debug, Args)]
pub struct GroupsArgs {
    /// The stream.
    pub stream: String,

    #[command(flatten)]
    pub partitions: PartitionsArg,

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
fn parse_interval(s: &str) -> Result<Duration, String> {
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
    #[arg(long, value_name = "PERCENT", default_value_t = streambus::scaler::DEFAULT_SCALE_OUT)]
    pub scale_out_rate: f64,

    /// Reference rule: suggest IN below this utilization (with more than one
    /// consumer), percent.
    #[arg(long, value_name = "PERCENT", default_value_t = streambus::scaler::DEFAULT_SCALE_IN)]
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

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to listen [default: the topology file's service.listen, else
    /// 127.0.0.1:8080]. Beyond loopback a token is required.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// The bearer token the API, /metrics and the WebSocket require (at least
    /// 16 characters; e.g. `openssl rand -hex 32`). Prefer the environment
    /// variable: a command line is visible to other users.
    #[arg(
        long,
        env = "STREAMBUS_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// Whether the token was typed on the command line (not taken from the
    /// environment): only then may it be shown back, in the dashboard's link.
    #[arg(skip)]
    pub token_on_command_line: bool,

    /// The streams to show and relay, comma-separated [default: the topology
    /// file's service.streams, else any stream asked for].
    #[arg(long, value_name = "S1,S2,...", value_delimiter = ',')]
    pub streams: Vec<String>,

    /// A browser origin (https://host[:port]) besides the service's own that
    /// may open the WebSocket. Repeatable.
    #[arg(long = "allowed-origin", value_name = "URL")]
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How long to run [default: until Ctrl-C].
    #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
    pub duration: Option<Duration>,

    /// Alerts published per second, security and CPS alerts together.
    #[arg(long, value_name = "N", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: u32,

    /// Where the dashboard listens [default: the topology file's
    /// service.listen, else 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR", conflicts_with = "no_serve")]
    pub listen: Option<SocketAddr>,

    /// Do not serve the dashboard.
    #[arg(long)]
    pub no_serve: bool,
}

#[derive(Debug, Args)]
pub struct TopologyArgs {
    #[command(subcommand)]
    pub command: TopologyCommand,
}

#[derive(Debug, Subcommand)]
pub enum TopologyCommand {
    /// Check a topology file: syntax, names, durations, start ids; errors
    /// name the line and the field.
    Check {
        /// The file [default: --config, STREAMBUS_CONFIG, else ./streambus.toml].
        file: Option<PathBuf>,
    },
    /// Create the groups (and their streams) of the topology file in Redis;
    /// report what exists, was created or differs. Never deletes anything.
    Apply {
        /// The file [default: --config, STREAMBUS_CONFIG, else ./streambus.toml].
        file: Option<PathBuf>,
    },
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
    fn backoff_takes_a_base_and_an_optional_max() {
        let ms = Duration::from_millis;
        assert_eq!(
            parse_backoff("10ms,50ms").unwrap(),
            Backoff::new(ms(10), ms(50))
        );
        assert_eq!(
            parse_backoff("1s").unwrap(),
            Backoff::new(ms(1000), ms(300_000))
        );
        assert_eq!(
            parse_backoff("10m").unwrap(),
            Backoff::new(ms(600_000), ms(600_000))
        );
        assert!(parse_backoff("1s,10ms").is_err());
        assert!(parse_backoff("x").is_err());
        assert!(parse_backoff("1s,").is_err());
    }

    #[test]
    fn watch_takes_an_optional_interval() {
        let parse = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Command::Monitor(m) => m.watch,
            other => panic!("{other:?}"),
        };
        assert_eq!(parse(&["sb", "monitor", "s"]), None);
        assert_eq!(
            parse(&["sb", "monitor", "s", "--watch"]),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse(&["sb", "monitor", "s", "--watch", "250ms"]),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse(&["sb", "monitor", "--watch=1s", "s"]),
            Some(Duration::from_secs(1))
        );
        assert!(Cli::try_parse_from(["sb", "monitor", "s", "--watch", "0s"]).is_err());
    }

    #[test]
    fn cleanup_needs_a_group_and_dry_run_needs_cleanup() {
        let e = Cli::try_parse_from(["sb", "monitor", "s", "--cleanup"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(e.to_string().contains("--group"), "{e}");
        assert!(Cli::try_parse_from(["sb", "monitor", "s", "-g", "g", "--dry-run"]).is_err());
        assert!(
            Cli::try_parse_from(["sb", "monitor", "s", "-g", "g", "--cleanup", "--watch"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["sb", "monitor", "s", "-g", "g", "--cleanup", "--dry-run"])
                .is_ok()
        );
    }

    #[test]
    fn fields_split_at_the_first_equals() {
        assert_eq!(parse_member("1/3").unwrap(), (1, 3));
        assert!(parse_member("3/3").is_err());
        assert!(parse_member("0/0").is_err());
        assert!(parse_member("x").is_err());
        assert!(Cli::try_parse_from(["sb", "tail", "s", "--partitions", "0"]).is_err());
        assert!(Cli::try_parse_from(["sb", "tail", "s", "--partitions", "1025"]).is_err());
        assert_eq!(parse_field("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_field("a=").unwrap(), ("a".into(), String::new()));
        assert!(parse_field("=x").is_err());
        assert!(parse_field("x").is_err());
    }
}
