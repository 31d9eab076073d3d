//! The arguments of the commands that run a service or check a setup:
//! `serve`, `demo`, `topology`, `bench`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::admin::parse_interval;

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

    /// Print the summary at the end as one JSON object instead of text (the
    /// progress shown while it runs stays on stderr).
    #[arg(long)]
    pub json: bool,
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

        /// Print what was checked as one JSON object (`{"file", "streams":
        /// [{"stream", "partitions", "groups"}], "summary"}`) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create the groups (and their streams) of the topology file in Redis;
    /// report what exists, was created or differs. Never deletes anything.
    Apply {
        /// The file [default: --config, STREAMBUS_CONFIG, else ./streambus.toml].
        file: Option<PathBuf>,

        /// Print what was found and done as one JSON object (`{"file",
        /// "redis", "streams": [{"stream", "status", "detail", "groups":
        /// [{"group", "status", "start"}]}], "summary"}`) instead of text.
        #[arg(long)]
        json: bool,
    },
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

    /// The Python of the `consume --pipe` handler and of the peers' rows
    /// (redis-py, walrus, redis-streams: each measured when this Python can
    /// import it).
    #[arg(long, value_name = "PATH", default_value = "python3")]
    pub python: String,

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
