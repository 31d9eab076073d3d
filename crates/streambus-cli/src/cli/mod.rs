//! Command-line arguments: [`Cli`] (the global flags) and [`Command`] here;
//! each group of commands' arguments in a file of its own, re-exported here.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};
use streambus::config::parse_duration;

mod admin;
mod consume;
mod service;
mod stream;

pub use self::admin::*;
pub use self::consume::ConsumeArgs;
pub use self::service::*;
pub use self::stream::*;

/// streambus: a reliable event bus on Redis Streams.
#[derive(Debug, Parser)]
#[command(name = "streambus", version, about, propagate_version = true)]
pub struct Cli {
    /// Redis URL: redis://[user:password@]host:port[/db], rediss:// for TLS,
    /// redis+cluster://host1:port1,host2:port2 for a cluster,
    /// redis+sentinel://[user:password@]s1:26379,s2:26379/MASTER_NAME[?db=N]
    /// for the primary watched by Redis Sentinel (rediss+sentinel:// for TLS;
    /// the sentinels' own credentials, if any, as
    /// ?sentinel_username=U&sentinel_password=P) [default: the
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
            tls: streambus::TlsOptions {
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

#[cfg(test)]
mod tests {
    use super::consume::{parse_backoff, parse_member};
    use super::stream::parse_field;
    use super::*;
    use clap::CommandFactory;
    use streambus::Backoff;

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

    #[test]
    fn json_goes_with_the_commands_that_print_for_people() {
        for argv in [
            &["sb", "groups", "s", "--json"][..],
            &["sb", "groups", "s", "--create", "g", "--json"],
            &["sb", "groups", "s", "--destroy", "g", "--json"],
            &["sb", "dlq", "list", "s", "--json"],
            &["sb", "dlq", "replay", "s", "--all", "--json"],
            &["sb", "dlq", "purge", "s", "--yes", "--json"],
            &["sb", "monitor", "s", "--json"],
            &["sb", "scale", "s", "-g", "g", "--json"],
            &["sb", "bench", "--json"],
            &["sb", "publish", "s", "{}", "--json"],
            &["sb", "publish", "s", "--json"],
            &["sb", "publish", "s", "--field", "a=1", "--json"],
            &["sb", "topology", "check", "--json"],
            &["sb", "topology", "apply", "f.toml", "--json"],
            &["sb", "demo", "--json"],
        ] {
            assert!(Cli::try_parse_from(argv).is_ok(), "{argv:?}");
        }
    }
}
