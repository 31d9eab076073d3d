//! `streambus bench`: how fast streambus is on this machine, as ratios to what
//! Redis itself does.
//!
//! One [`run`] measures, against `--redis` or a private `redis-server` it starts:
//!
//! - the references: `redis-benchmark -c 1 -P 64` XADD of the same envelope
//!   (when `redis-benchmark` is installed), and the same with `-c 50`, the
//!   server's saturation; every throughput is also given as a ratio to each,
//!   because absolute figures drift ±25% between runs here;
//! - publish throughput: [`streambus::Producer::publish`] from many concurrent
//!   callers, [`streambus::Producer::publish_batch`], and `streambus publish`
//!   with JSON lines on stdin (when the binary is given);
//! - consume throughput: a [`streambus::Worker`] with a no-op handler (read +
//!   ack), at concurrency 1 and N; and `streambus consume` as a child process
//!   (when the binary is given): printing to a pipe, `--pipe` with a Python
//!   handler, `--exec true` per entry;
//! - end-to-end latency publish → handler (HDR histogram) at fixed rates and at
//!   saturation;
//! - peak resident memory of the worker and of `streambus publish`.
//!
//! Every message is the reference envelope (UUID `id`, `timestamp`, 200-byte JSON
//! `data`), and every XADD trims with `MAXLEN ~ 100000`.
//!
//! The caller renders the [`BenchReport`] ([`BenchReport::table`],
//! [`BenchReport::to_json`]) and shows progress from the callback.
//!
//! # Layout
//!
//! - [`payload`]: the one payload, which carries its own send time.
//! - `phases`: the measurements, one file per kind, run in order by
//!   `phases/mod.rs` (the shared context and the phase list):
//!   `reference` (redis-benchmark), `publish` (library and stdin), `consume`
//!   (worker and plain loop), `memory` (the worker in its own process),
//!   `cli_consume` (`streambus consume` as a child), `latency`, `scaling`
//!   (the cluster comparison).
//! - `noop`: the no-op worker every consume figure runs, and the wait until
//!   nothing is pending.
//! - `server`: the private `redis-server` and Redis Cluster.
//! - `render`: the table and the targets.
//! - [`child`]: the worker run in a process of its own, to measure its memory.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use streambus::{ProducerOptions, Retention, WorkerOptions};

pub mod child;
mod noop;
pub mod payload;
mod phases;
mod render;
mod server;
mod sys;

pub use sys::Machine;

/// What to run, and how much. `Default` is what `streambus bench` runs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BenchOptions {
    /// Redis to run against; `None` starts a private `redis-server` on a free port.
    /// Only keys under a fresh `streambus-bench:<random>:` prefix are written,
    /// and they are deleted at the end.
    pub redis: Option<String>,
    /// The `redis-server` binary for the private server.
    pub redis_server_bin: String,
    /// The `redis-benchmark` binary for the reference; `None` skips it (then no
    /// ratios). A missing binary is skipped with a note.
    pub redis_benchmark_bin: Option<String>,
    /// The `streambus` binary, for the `streambus publish` (stdin) and
    /// `streambus consume` phases; `None` skips them.
    pub streambus_bin: Option<PathBuf>,
    /// A program that runs [`child::run_if_requested`] first (the `streambus`
    /// binary does), to run the worker in a process of its own for its memory
    /// figure. `None`: the worker's memory is measured in this process, which
    /// gives an upper bound.
    pub worker_exe: Option<PathBuf>,
    /// Rounds of the throughput phases: each round runs redis-benchmark and
    /// every throughput phase once, one after the other; the report gives each
    /// figure's median (and every round's rate). Rates on a shared machine drift
    /// by 25% within seconds, so one pass can put a phase and the reference in
    /// different weather.
    pub rounds: usize,
    /// Messages per publish phase (and for redis-benchmark).
    pub publish_messages: u64,
    /// Concurrent callers of `publish` in the library publish phase.
    pub publish_callers: usize,
    /// Messages per `publish_batch` call.
    pub batch_size: usize,
    /// Lines fed to `streambus publish` on stdin (each ≈ 201 bytes; 5,000,000 ≈ 1 GB).
    pub cli_messages: u64,
    /// Entries read by `streambus consume` printing to a pipe, and by
    /// `consume --pipe` (at most `maxlen` stay in the stream).
    pub cli_consume_messages: u64,
    /// Entries run by `consume --exec true --concurrency 8`: one process each,
    /// so far fewer.
    pub exec_messages: u64,
    /// The Python of the `consume --pipe` handler; the phase is skipped with a
    /// note when it does not run.
    pub python_bin: String,
    /// Entries consumed by the worker at concurrency N (at most `maxlen` stay in the stream).
    pub consume_messages: u64,
    /// Entries consumed by the worker at concurrency 1 (slower: one entry per read).
    pub consume_messages_single: u64,
    /// The N of "concurrency N"; the worker's default.
    pub worker_concurrency: usize,
    /// Worker settings for every worker phase (concurrency is set per phase).
    pub worker: WorkerOptions,
    /// Producer settings for every publish (retention is `MAXLEN ~ maxlen`).
    pub producer: ProducerOptions,
    /// `MAXLEN ~` of every XADD.
    pub maxlen: u64,
    /// Fixed publish rates (messages/s) at which latency is measured.
    pub latency_rates: Vec<u64>,
    /// How long each latency phase publishes.
    pub latency_duration: Duration,
    /// The first part of each latency phase that is not recorded (connections
    /// opening, group creation, caches warming).
    pub latency_warmup: Duration,
    /// Also measure latency at saturation (publishers as fast as they can).
    pub saturation: bool,
    /// Also measure publish and consume throughput on one node against a private
    /// Redis Cluster of [`BenchOptions::cluster_masters`] masters that the bench
    /// starts itself (`redis-server --cluster-enabled yes` and `redis-cli
    /// --cluster create`), with a stream of [`BenchOptions::cluster_partitions`]
    /// partitions ([`streambus::partition`]).
    pub cluster_compare: bool,
    /// Run only the cluster comparison (no reference, no other phase).
    pub cluster_only: bool,
    /// Masters of the private cluster (at least 3).
    pub cluster_masters: usize,
    /// Partitions of the stream in the cluster comparison.
    pub cluster_partitions: u32,
    /// Messages published in each publish run of the cluster comparison.
    pub cluster_messages: u64,
    /// The `redis-cli` binary (`--cluster create`, `CLUSTER INFO`).
    pub redis_cli_bin: String,
}

impl Default for BenchOptions {
    fn default() -> Self {
        let maxlen = 100_000;
        BenchOptions {
            redis: None,
            redis_server_bin: "redis-server".to_owned(),
            redis_benchmark_bin: Some("redis-benchmark".to_owned()),
            streambus_bin: None,
            worker_exe: None,
            rounds: 3,
            publish_messages: 500_000,
            publish_callers: 256,
            batch_size: 1000,
            cli_messages: 500_000,
            consume_messages: maxlen,
            cli_consume_messages: maxlen,
            exec_messages: 2_000,
            python_bin: "python3".to_owned(),
            consume_messages_single: 20_000,
            worker_concurrency: WorkerOptions::default().concurrency,
            worker: WorkerOptions::default(),
            producer: ProducerOptions {
                retention: Retention::max_len(maxlen),
                ..ProducerOptions::default()
            },
            maxlen,
            latency_rates: vec![2_000, 20_000],
            latency_duration: Duration::from_secs(3),
            latency_warmup: Duration::from_millis(300),
            saturation: true,
            cluster_compare: false,
            cluster_only: false,
            cluster_masters: 3,
            cluster_partitions: 6,
            cluster_messages: 300_000,
            redis_cli_bin: "redis-cli".to_owned(),
        }
    }
}

/// One throughput figure.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Throughput {
    /// Stable name for machines (`publish`, `publish_batch`, `cli_publish`,
    /// `worker_c1`, `worker_cN`, `cli_consume`, `cli_consume_pipe`,
    /// `cli_consume_exec`, `redis_benchmark`, `redis_benchmark_c50`).
    pub key: String,
    /// What was measured, for people.
    pub name: String,
    /// Messages moved.
    pub messages: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Messages per second: the median of the rounds.
    pub rate: f64,
    /// The rate of each round, in order (one entry when there was one round).
    #[serde(default)]
    pub rounds: Vec<f64>,
    /// `rate` / the redis-benchmark `-c 1` reference of the same run.
    pub ratio: Option<f64>,
    /// `rate` / the redis-benchmark `-c 50` reference of the same run (the
    /// server's saturation, what issue 15's targets are stated against).
    #[serde(default)]
    pub ratio_saturation: Option<f64>,
    /// Peak resident memory of whoever did the work during this phase, if
    /// measured: the largest of the rounds.
    pub peak_rss_bytes: Option<u64>,
    /// How the memory was measured.
    pub rss_note: Option<String>,
}

/// One end-to-end latency figure (publish call → handler start).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    /// Stable name (`latency_2000`, `latency_saturation`, ...).
    pub key: String,
    /// What was measured, for people.
    pub name: String,
    /// The publish rate asked for; `None` at saturation.
    pub target_rate: Option<f64>,
    /// Messages handled per second during the phase.
    pub achieved_rate: f64,
    /// Latencies recorded (warm-up excluded).
    pub count: u64,
    /// Median, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, in milliseconds.
    pub p99_ms: f64,
    /// 99.9th percentile, in milliseconds.
    pub p999_ms: f64,
    /// Largest, in milliseconds.
    pub max_ms: f64,
}

/// A target from the issue, checked against this run.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Target {
    /// What is measured.
    pub what: String,
    /// The goal, e.g. `≥ 0.9`.
    pub goal: String,
    /// What this run got.
    pub value: String,
    /// Met, missed, or `None` when the phase did not run.
    pub met: Option<bool>,
}

/// Everything one run measured.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct BenchReport {
    /// When the run started (UTC).
    pub date: String,
    /// Where it ran.
    pub machine: Machine,
    /// The Redis it ran against (password masked), or `embedded`.
    pub redis: String,
    /// Its version (`INFO server`).
    pub redis_version: String,
    /// redis-benchmark `-c 1 -P 64` XADD, the 1.0 of every `ratio`.
    pub reference: Option<Throughput>,
    /// redis-benchmark `-c 50 -P 64` XADD (the server's saturation), the 1.0 of
    /// every `ratio_saturation`.
    #[serde(default)]
    pub saturation_reference: Option<Throughput>,
    /// Publish and consume throughputs.
    pub throughput: Vec<Throughput>,
    /// End-to-end latencies.
    pub latency: Vec<Latency>,
    /// The targets, checked.
    pub targets: Vec<Target>,
    /// The cluster comparison (empty unless asked for): publish and consume on
    /// one node and on the cluster; `ratio` is to the one-node plain-stream row
    /// of the same kind.
    #[serde(default)]
    pub scaling: Vec<Throughput>,
    /// Phases skipped and why, and other remarks.
    pub notes: Vec<String>,
}

impl BenchReport {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report as a plain-text table for people.
    pub fn table(&self) -> String {
        render::table(self)
    }
}

/// Why a run failed.
#[derive(Debug)]
pub struct Error(String);

impl Error {
    fn new(msg: impl Into<String>) -> Error {
        Error(msg.into())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<streambus::Error> for Error {
    fn from(e: streambus::Error) -> Self {
        Error(e.to_string())
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Error(format!("Redis: {e}"))
    }
}

/// The result of a bench run.
pub type Result<T> = std::result::Result<T, Error>;

/// Runs the whole bench and reports. `progress` gets one line at each step
/// (and a few during long phases), for a spinner or a log.
pub async fn run(opts: BenchOptions, progress: impl Fn(&str)) -> Result<BenchReport> {
    phases::run_all(opts, &progress).await
}
