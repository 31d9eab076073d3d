//! `streambus._native`: the Python extension module of streambus.
//!
//! The streambus library runs on a tokio runtime that lives in this module
//! (one per process, started at first use). Every call that waits on Redis
//! releases the GIL (`Python::detach`) and wakes up every 100 ms to let Python
//! handle signals, so Ctrl-C works in a blocking call.
//!
//! # Layout
//!
//! - `errors`: streambus errors as Python exceptions.
//! - `json`: Python objects to JSON text, fast, without `json.dumps`.
//! - `entry`: `Entry` (read by a consumer) and `Delivery` (given to a handler).
//! - `client`: `Client`, the connection every other class uses.
//! - `producer`, `consumer`, `worker`: the core classes.
//! - `admin`: monitor, scaler and dead-letter functions.
//!
//! The Python package (`streambus/__init__.py`) wraps these into the public API.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::prelude::*;

mod admin;
mod client;
mod consumer;
mod entry;
mod errors;
mod json;
mod producer;
mod worker;

/// mimalloc for the extension's Rust allocations. Entries are made on the
/// runtime's threads and dropped on Python's (and the other way round for what
/// is published); glibc's malloc takes the owning arena's lock for each such
/// free, and its lock waits and wake-ups were a fifth of the worker's CPU. With
/// mimalloc (cross-thread frees without a lock) the Python worker with a no-op
/// handler went from 311–324k to 320–348k entries/s (`python bench.py`). Built
/// with `no_thp`: with transparent huge pages its peak RSS was 20 MiB higher.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The process-wide tokio runtime that runs the streambus library.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        // STREAMBUS_RUNTIME_THREADS overrides tokio's default (one per CPU).
        if let Some(n) = std::env::var("STREAMBUS_RUNTIME_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
        {
            builder.worker_threads(n);
        }
        builder
            .enable_all()
            .thread_name("streambus")
            .build()
            // Without a runtime nothing in this module can work: there is no
            // sensible way to go on (it fails only when threads cannot be made).
            .unwrap_or_else(|e| panic!("streambus: cannot start the tokio runtime: {e}"))
    })
}

/// How often a blocking call wakes up to let Python run its signal handlers.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// Runs `fut` to completion on the runtime with the GIL released. Every
/// [`SIGNAL_POLL`] it takes the GIL back for a moment to run Python's signal
/// handlers: a `KeyboardInterrupt` from Ctrl-C drops the future and is raised.
fn wait<F>(py: Python<'_>, fut: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let mut fut = Box::pin(fut);
    loop {
        let done = py.detach(|| {
            runtime().block_on(async { tokio::time::timeout(SIGNAL_POLL, &mut fut).await.ok() })
        });
        if let Some(out) = done {
            return Ok(out);
        }
        py.check_signals()?;
    }
}

/// Seconds (a Python float) as a `Duration`, with a clear error for bad values.
fn duration(name: &str, seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds).map_err(|_| {
        pyo3::exceptions::PyValueError::new_err(format!(
            "{name} must be a finite, non-negative number of seconds, got {seconds}"
        ))
    })
}

/// Outcome types defined in Python (`streambus._outcome`), registered once by the
/// package at import, and `json.loads`.
struct PyHelpers {
    retry: Py<PyAny>,
    dead_letter: Py<PyAny>,
    json_loads: Py<PyAny>,
}

static HELPERS: OnceLock<PyHelpers> = OnceLock::new();

fn helpers() -> PyResult<&'static PyHelpers> {
    HELPERS.get().ok_or_else(|| {
        pyo3::exceptions::PyRuntimeError::new_err(
            "streambus._native used without the streambus package (import streambus first)",
        )
    })
}

/// Called once by `streambus/__init__.py` with its `Retry` and `DeadLetter`
/// classes and `json.loads`.
#[pyfunction]
fn _register(retry: Py<PyAny>, dead_letter: Py<PyAny>, json_loads: Py<PyAny>) {
    let _ = HELPERS.set(PyHelpers {
        retry,
        dead_letter,
        json_loads,
    }); // a second import of the package registers the same objects: keep the first
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_register, m)?)?;
    errors::register(m)?;
    m.add_class::<client::Client>()?;
    m.add_class::<entry::Entry>()?;
    m.add_class::<entry::Delivery>()?;
    m.add_class::<producer::Producer>()?;
    m.add_class::<consumer::Consumer>()?;
    m.add_class::<worker::Worker>()?;
    admin::register(m)?;
    m.add_function(wrap_pyfunction!(json::to_json, m)?)?;
    m.add_function(wrap_pyfunction!(client::command, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
