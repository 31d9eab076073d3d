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
//! until they are acknowledged, prints one JSON line (`ChildResult`) and exits.

use std::process::ExitCode;

use streambus::{Client, WorkerOptions};

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

async fn consume(spec: ChildSpec) -> crate::Result<ChildResult> {
    let client = Client::open(&spec.url)?;
    let options = WorkerOptions {
        concurrency: spec.concurrency,
        ..WorkerOptions::default()
    };
    let (elapsed, _) =
        crate::noop::consume(&client, &spec.stream, &spec.group, options, spec.messages).await?;
    Ok(ChildResult {
        messages: spec.messages,
        seconds: elapsed.as_secs_f64(),
        peak_rss_bytes: crate::sys::peak_rss(None),
    })
}
