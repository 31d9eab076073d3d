//! Runs `streambus bench` without the CLI, for development:
//!
//! ```text
//! cargo run --release -p streambus-bench --example bench -- [--json] [--redis URL] [--quick]
//!     [--worker-only] [--cluster | --cluster-only] [--cluster-messages N] [--rounds N]
//! ```
//!
//! It uses `target/release/streambus` for the stdin and `streambus consume`
//! phases when it exists, and itself as the worker process for the memory
//! figure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use streambus_bench::BenchOptions;

fn main() -> ExitCode {
    if let Some(code) = streambus_bench::child::run_if_requested() {
        return code;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut opts = BenchOptions::default();
    let mut json = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json = true,
            "--redis" => opts.redis = it.next().cloned(),
            "--rounds" => {
                opts.rounds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(opts.rounds)
            }
            "--concurrency" => {
                opts.worker_concurrency = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(opts.worker_concurrency)
            }
            "--cli-messages" => {
                opts.cli_messages = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(opts.cli_messages)
            }
            "--publish-only" => {
                opts.latency_rates.clear();
                opts.saturation = false;
                opts.redis_benchmark_bin = None;
                opts.publish_messages = 300_000;
                opts.consume_messages = 1000;
                opts.consume_messages_single = 100;
            }
            "--consume-only" => {
                opts.latency_rates.clear();
                opts.saturation = false;
                opts.redis_benchmark_bin = None;
                opts.publish_messages = 1000;
                opts.cli_messages = 1000;
                opts.consume_messages_single = 100;
            }
            "--worker-only" => {
                // The reference and the worker phases (publish phases kept short).
                opts.latency_rates.clear();
                opts.saturation = false;
                opts.publish_messages = 200_000;
                opts.cli_messages = 1000;
            }
            "--cluster" => opts.cluster_compare = true,
            "--cluster-only" => {
                // Only the comparison 1 node / private 3-master Redis Cluster.
                opts.cluster_compare = true;
                opts.cluster_only = true;
            }
            "--cluster-messages" => {
                opts.cluster_messages = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(opts.cluster_messages)
            }
            "--only-cli" => {
                opts.latency_rates.clear();
                opts.saturation = false;
                opts.publish_messages = 1000;
                opts.consume_messages = 1000;
                opts.consume_messages_single = 100;
            }
            "--quick" => {
                opts.publish_messages = 100_000;
                opts.cli_messages = 100_000;
                opts.latency_duration = Duration::from_secs(1);
            }
            other => {
                eprintln!("unknown argument {other}");
                return ExitCode::from(2);
            }
        }
    }
    let exe = std::env::current_exe().ok();
    opts.worker_exe = exe.clone();
    let cli = exe
        .as_deref()
        .and_then(|e| e.parent()?.parent().map(|d| d.join("streambus")))
        .filter(|p| p.exists());
    opts.streambus_bin =
        cli.or_else(|| Some(PathBuf::from("target/release/streambus")).filter(|p| p.exists()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(streambus_bench::run(opts, |line| eprintln!("{line}"))) {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
