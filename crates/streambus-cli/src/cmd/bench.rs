//! `streambus bench`: the benchmark of `streambus-bench`, with a progress display.
//!
//! Without a Redis given on the command line (or in the environment or the
//! topology file) it starts a private `redis-server`: a benchmark never writes
//! into a Redis nobody named. It re-runs this binary for the stdin phase
//! (`streambus publish`) and for the worker-in-its-own-process memory figure.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, Result};
use streambus_bench::BenchOptions;

use crate::cli::BenchArgs;

pub async fn run(given: Option<String>, args: BenchArgs) -> Result<()> {
    let mut opts = BenchOptions::default();
    opts.redis = given;
    if args.quick {
        opts.rounds = 1;
        opts.publish_messages = 100_000;
        opts.cli_messages = 100_000;
        opts.latency_duration = Duration::from_secs(1);
    }
    if let Some(n) = args.rounds {
        opts.rounds = n.max(1);
    }
    if let Some(n) = args.messages {
        opts.publish_messages = n;
    }
    if let Some(n) = args.cli_messages {
        opts.cli_messages = n;
    }
    if let Some(n) = args.concurrency {
        opts.worker_concurrency = n;
    }
    if args.no_redis_benchmark {
        opts.redis_benchmark_bin = None;
    }
    opts.python_bin = args.python.clone();
    opts.cluster_compare = args.cluster || args.cluster_only;
    opts.cluster_only = args.cluster_only;
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    opts.streambus_bin = Some(exe.clone());
    opts.worker_exe = Some(exe);

    // Progress on stderr: a spinner on a terminal, plain lines otherwise.
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let progress = |line: &str| match &bar {
        Some(bar) => bar.set_message(line.to_owned()),
        None => eprintln!("bench: {line}"),
    };
    let report = streambus_bench::run(opts, progress).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let report = report.context("the benchmark failed")?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", report.to_json())?;
    } else {
        write!(out, "{}", report.table())?;
    }
    out.flush()?;
    Ok(())
}
