//! One module per command; [`run`] dispatches.
//!
//! Where Redis is: `--redis`, else `REDIS_URL`, else the topology file's
//! `redis`, else `redis://127.0.0.1:6379`; except that `demo` runs on a private
//! `redis-server` unless a Redis was given (it writes a lot: never into a Redis
//! nobody named), and `serve` starts one when none was given and nothing
//! answers on 127.0.0.1:6379 (see [`crate::embedded`]).
//!
//! Every other setting: the flag, else the topology file, else the command's
//! default ([`settings`]). Waiting out an outage of Redis: [`retry`].

use anyhow::Result;
use streambus::partition::Partitions;
use streambus::{Client, Connection};

use crate::cli::{Cli, Command, PartitionsArg};
use crate::embedded::{self, EmbeddedRedis};
use crate::topology::{self, Topology};

mod bench;
mod consume;
mod demo;
mod dlq;
mod exec;
mod groups;
mod monitor;
mod pipe;
mod publish;
mod retry;
mod runner;
mod scale;
mod serve;
mod settings;
mod tail;
mod topology_cmd;

/// Where Redis is when nothing says otherwise.
const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";

pub async fn run(cli: Cli) -> Result<()> {
    let explicit_file = cli.config.as_deref();
    let options = cli.connect_options();
    let open = |url: &str| Client::open_with(url, options.clone());
    if let Command::Topology(args) = cli.command {
        return topology_cmd::run(args, explicit_file, cli.redis.as_deref(), &options).await;
    }
    let file = topology::locate(explicit_file);
    let topology = match &file {
        Some(path) => {
            let t = Topology::load(path)?;
            tracing::debug!(file = %path.display(), "using topology file");
            Some(t)
        }
        None => None,
    };
    // Given: on the command line, in the environment or in the file.
    let given = cli
        .redis
        .clone()
        .or_else(|| topology.as_ref().and_then(|t| t.redis.clone()));
    match cli.command {
        Command::Bench(args) => return bench::run(given, args).await,
        Command::Demo(args) => {
            let (client, _embedded) = match given {
                Some(url) => (open(&url)?, None),
                None => {
                    let server = start_embedded("")?;
                    (
                        Client::open_with(&server.url(), options.clone())?,
                        Some(server),
                    )
                }
            };
            return demo::run(&client, args, topology.as_ref()).await;
        }
        Command::Serve(args) => return serve::run(given, &options, args, topology.as_ref()).await,
        _ => {}
    }
    let client = open(given.as_deref().unwrap_or(DEFAULT_REDIS))?;
    tracing::debug!(redis = client.display_url(), "using Redis");
    let topology = topology.as_ref();
    match cli.command {
        Command::Publish(args) => publish::run(&client, args, topology).await,
        Command::Tail(args) => tail::run(&client, args, topology).await,
        Command::Consume(args) => consume::run(&client, args, topology).await,
        Command::Groups(args) => groups::run(&client, args, topology).await,
        Command::Dlq(args) => dlq::run(&client, args, topology).await,
        Command::Monitor(args) => monitor::run(&client, args, topology).await,
        Command::Scale(args) => scale::run(&client, args, topology).await,
        Command::Bench(_) | Command::Demo(_) | Command::Serve(_) | Command::Topology(_) => {
            unreachable!("handled above")
        }
    }
}

/// Starts the private redis-server and says so on stderr.
fn start_embedded(why_not_local: &str) -> Result<EmbeddedRedis> {
    let server = EmbeddedRedis::start()?;
    eprintln!(
        "no Redis given{why_not_local}: started a private redis-server on 127.0.0.1:{} (data in {}; pid {}; stopped and deleted on exit)",
        server.port(),
        server.dir().display(),
        server.pid()
    );
    Ok(server)
}

/// `serve`'s Redis: the one given, else the one answering on 127.0.0.1:6379,
/// else a private one (returned, to be stopped on drop).
fn serve_redis(
    given: Option<String>,
    options: &streambus::ConnectOptions,
) -> Result<(Client, Option<EmbeddedRedis>)> {
    if let Some(url) = given {
        return Ok((Client::open_with(&url, options.clone())?, None));
    }
    let probe = embedded::probe_addr();
    if embedded::answers(probe) {
        eprintln!("no Redis given: using the one on {probe}");
        return Ok((
            Client::open_with(&format!("redis://{probe}"), options.clone())?,
            None,
        ));
    }
    let server = start_embedded(&format!(" and none on {probe}"))?;
    Ok((
        Client::open_with(&server.url(), options.clone())?,
        Some(server),
    ))
}

/// The partitions of `stream`: `--partitions`, else the topology file's
/// `partitions`, else 1. `None` for 1: a plain stream, used exactly as before
/// partitions existed (its key is the stream's name).
fn partitions(
    arg: PartitionsArg,
    topology: Option<&Topology>,
    stream: &str,
) -> Result<Option<Partitions>> {
    let n = settings::layered(arg.partitions, topology.map(|t| t.partitions(stream)), 1);
    if n == 1 {
        return Ok(None);
    }
    Ok(Some(Partitions::new(stream, n)?))
}

/// The shared connection. The library's error already names the (masked) URL
/// and says what to check.
async fn connect(client: &Client) -> Result<Connection> {
    Ok(client.connect().await?)
}
