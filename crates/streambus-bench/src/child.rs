//! The worker phase run again in a process of its own, so that its peak memory
//! is the worker's alone (in the bench process it would include the publishers,
//! the histograms and what earlier phases left in the allocator).
//!
//! The bench starts `BenchOptions::worker_exe` with [`ENV`] set to a JSON spec.
//! That program must call [`run_if_requested`] first thing in `main`:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     if let Some(code) = streambus_bench::child::run_if_requested() {
//!         return code;
//!     }
//!     // ... the program's normal work
//!     std::process::ExitCode::SUCCESS
//! }
//! ```
//!
//! The child consumes the given number of entries with a no-op handler, waits
//! until they are acknowledged, prints one JSON line ([`ChildResult`]) and exits.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use streambus::{CancellationToken, Client, Delivery, Outcome, Worker, WorkerOptions};

/// The environment variable that carries the spec; a program started with it
/// set is a bench child.
pub const ENV: &str = "STREAMBUS_BENCH_CHILD";

/// What the child does.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct ChildSpec {
    pub url: String,
    pub stream: String,
    pub group: String,
    pub concurrency: usize,
    pub messages: u64,
}

/// What the child prints.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct ChildResult {
    pub messages: u64,
    pub seconds: f64,
    pub peak_rss_bytes: Option<u64>,
}

/// Runs the bench's worker child if [`ENV`] is set, returning the exit code;
/// `None` (at once) otherwise.
pub fn run_if_requested() -> Option<ExitCode> {
    let spec = std::env::var(ENV).ok()?;
    let result = serde_json::from_str::<ChildSpec>(&spec)
        .map_err(|e| format!("bad {ENV}: {e}"))
        .and_then(|spec| {
            // The same runtime as the CLI's: two worker threads.
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(consume(spec))
                .map_err(|e| e.to_string())
        });
    Some(match result {
        Ok(r) => {
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: bench worker: {e}");
            ExitCode::FAILURE
        }
    })
}

/// Runs a worker with a no-op handler until `messages` entries were handled and
/// acknowledged. Used by the bench process too, for the in-process figures.
pub(crate) async fn consume_with(
    client: &Client,
    stream: &str,
    group: &str,
    options: WorkerOptions,
    messages: u64,
) -> crate::Result<(Duration, streambus::WorkerReport)> {
    let handled = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let handled = handled.clone();
        let done = done.clone();
        move |_d: Delivery| {
            if handled.fetch_add(1, Ordering::Relaxed) + 1 == messages {
                done.notify_one();
            }
            std::future::ready(Outcome::Ack)
        }
    };
    let stop = CancellationToken::new();
    let worker = Worker::new(
        client,
        stream,
        group,
        WorkerOptions {
            consumer_name: Some("bench".into()),
            ..options
        },
    );
    let started = Instant::now();
    let task = tokio::spawn(worker.run(handler, stop.clone()));
    // Stops the worker even if this future is dropped.
    let _stop_on_exit = stop.clone().drop_guard();
    tokio::select! {
        _ = done.notified() => {}
        r = tokio::time::sleep(Duration::from_secs(600)) => {
            let _: () = r;
            return Err(crate::Error::new("the worker did not finish within 10 minutes"));
        }
    }
    // Handled is not done: wait for the acknowledgements (one flush interval).
    let mut conn = client.connect().await?;
    loop {
        let (pending,): (u64,) = redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .query_async::<(u64, redis::Value, redis::Value, redis::Value)>(&mut conn)
            .await
            .map(|(n, _, _, _)| (n,))?;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    stop.cancel();
    let report = task
        .await
        .map_err(|e| crate::Error::new(format!("worker task: {e}")))??;
    Ok((elapsed, report))
}

async fn consume(spec: ChildSpec) -> crate::Result<ChildResult> {
    let client = Client::open(&spec.url)?;
    let options = WorkerOptions {
        concurrency: spec.concurrency,
        ..WorkerOptions::default()
    };
    let (elapsed, _) =
        consume_with(&client, &spec.stream, &spec.group, options, spec.messages).await?;
    Ok(ChildResult {
        messages: spec.messages,
        seconds: elapsed.as_secs_f64(),
        peak_rss_bytes: crate::sys::peak_rss(None),
    })
}
