//! Monitor, scaler and dead-letter operations (`streambus::admin`), as
//! functions on a `Client`. Results cross as JSON text; the Python package
//! turns them into dataclasses.

use std::str::FromStr;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use serde::Serialize;
use streambus::admin::monitor::{self, CleanupOptions, MonitorOptions};
use streambus::admin::{dead_letter, scaler};
use streambus::EntryId;

use crate::client::Client;
use crate::consumer::parse_ids;
use crate::errors::{IntoPy, InvalidInputError};
use crate::{duration, wait};

fn to_json<T: Serialize>(v: &T) -> PyResult<String> {
    serde_json::to_string(v).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

fn parse_id(s: &str) -> PyResult<EntryId> {
    EntryId::from_str(s).map_err(|e| InvalidInputError::new_err(format!("bad entry id {s:?}: {e}")))
}

/// A monitor snapshot of `stream` (its groups and their consumers) as JSON.
#[pyfunction]
#[pyo3(signature = (client, stream, *, idle_threshold=60.0, pending_warning=100, delivery_sample=10, group=None))]
fn monitor_snapshot(
    py: Python<'_>,
    client: &Client,
    stream: String,
    idle_threshold: f64,
    pending_warning: u64,
    delivery_sample: usize,
    group: Option<String>,
) -> PyResult<String> {
    let options = MonitorOptions {
        idle_threshold: duration("idle_threshold", idle_threshold)?,
        pending_warning,
        delivery_sample,
        group,
    };
    let mut conn = client.conn.clone();
    let snap = wait(py, async move {
        monitor::snapshot(&mut conn, &stream, &options).await
    })?
    .py_err()?;
    to_json(&snap)
}

/// The safe cleanup of `group`: pending entries of dead consumers go to live
/// ones; a dead consumer is deleted only once it holds nothing. JSON report.
#[pyfunction]
#[pyo3(signature = (client, stream, group, *, idle_threshold=60.0, dry_run=false))]
fn monitor_cleanup(
    py: Python<'_>,
    client: &Client,
    stream: String,
    group: String,
    idle_threshold: f64,
    dry_run: bool,
) -> PyResult<String> {
    let options = CleanupOptions {
        idle_threshold: duration("idle_threshold", idle_threshold)?,
        dry_run,
        ..Default::default()
    };
    let mut conn = client.conn.clone();
    let report = wait(py, async move {
        monitor::cleanup(&mut conn, &stream, &group, &options).await
    })?
    .py_err()?;
    to_json(&report)
}

/// The reference package's rule: `(rate, suggestion, rate_text, sentence)`.
#[pyfunction]
#[pyo3(signature = (undelivered, pending, consumers, scale_out=scaler::DEFAULT_SCALE_OUT, scale_in=scaler::DEFAULT_SCALE_IN))]
fn scale_decision(
    undelivered: u64,
    pending: u64,
    consumers: u64,
    scale_out: f64,
    scale_in: f64,
) -> PyResult<(f64, String, String)> {
    scaler::validate_thresholds(scale_out, scale_in).py_err()?;
    let (rate, suggestion) =
        scaler::rate_and_suggestion(undelivered, pending, consumers, scale_out, scale_in);
    let sentence = scaler::reference_sentence(undelivered, pending, consumers, scale_out, scale_in);
    Ok((rate, suggestion.as_str().to_owned(), sentence))
}

#[derive(Serialize)]
struct SampleJson {
    entries_added: Option<u64>,
    entries_read: Option<u64>,
    lag: Option<u64>,
    pending: u64,
    consumers: u64,
}

/// The scaler's counters of `group` (two O(1) commands), as JSON.
#[pyfunction]
fn scaler_sample(
    py: Python<'_>,
    client: &Client,
    stream: String,
    group: String,
) -> PyResult<String> {
    let mut conn = client.conn.clone();
    let s = wait(py, async move {
        scaler::sample(&mut conn, &stream, &group).await
    })?
    .py_err()?;
    to_json(&SampleJson {
        entries_added: s.entries_added,
        entries_read: s.entries_read,
        lag: s.lag,
        pending: s.pending,
        consumers: s.consumers,
    })
}

/// Up to `count` dead letters of `stream`, oldest first, after `after`: JSON list.
#[pyfunction]
#[pyo3(signature = (client, stream, *, count=100, after=None))]
fn dead_letter_list(
    py: Python<'_>,
    client: &Client,
    stream: String,
    count: usize,
    after: Option<String>,
) -> PyResult<String> {
    let after = after.as_deref().map(parse_id).transpose()?;
    let mut conn = client.conn.clone();
    let list = wait(py, async move {
        dead_letter::list(&mut conn, &stream, after, count).await
    })?
    .py_err()?;
    to_json(&list)
}

/// Number of dead letters of `stream`.
#[pyfunction]
fn dead_letter_count(py: Python<'_>, client: &Client, stream: String) -> PyResult<u64> {
    let mut conn = client.conn.clone();
    wait(
        py,
        async move { dead_letter::count(&mut conn, &stream).await },
    )?
    .py_err()
}

/// Puts dead letter `id` back onto `stream`; the new entry id, or None.
#[pyfunction]
fn dead_letter_replay(
    py: Python<'_>,
    client: &Client,
    stream: String,
    id: String,
) -> PyResult<Option<String>> {
    let id = parse_id(&id)?;
    let mut conn = client.conn.clone();
    let new = wait(py, async move {
        dead_letter::replay(&mut conn, &stream, id).await
    })?
    .py_err()?;
    Ok(new.map(|i| i.to_string()))
}

/// Replays every dead letter of `stream`; returns how many.
#[pyfunction]
fn dead_letter_replay_all(py: Python<'_>, client: &Client, stream: String) -> PyResult<u64> {
    let mut conn = client.conn.clone();
    wait(py, async move {
        dead_letter::replay_all(&mut conn, &stream).await
    })?
    .py_err()
}

/// Deletes the dead-letter stream of `stream`; returns how many it held.
#[pyfunction]
fn dead_letter_purge(py: Python<'_>, client: &Client, stream: String) -> PyResult<u64> {
    let mut conn = client.conn.clone();
    wait(
        py,
        async move { dead_letter::purge(&mut conn, &stream).await },
    )?
    .py_err()
}

/// Deletes single dead letters; returns how many existed.
#[pyfunction]
fn dead_letter_delete(
    py: Python<'_>,
    client: &Client,
    stream: String,
    ids: Vec<String>,
) -> PyResult<u64> {
    let ids = parse_ids(ids)?;
    let mut conn = client.conn.clone();
    wait(py, async move {
        dead_letter::delete(&mut conn, &stream, &ids).await
    })?
    .py_err()
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(monitor_snapshot, m)?)?;
    m.add_function(wrap_pyfunction!(monitor_cleanup, m)?)?;
    m.add_function(wrap_pyfunction!(scale_decision, m)?)?;
    m.add_function(wrap_pyfunction!(scaler_sample, m)?)?;
    m.add_function(wrap_pyfunction!(dead_letter_list, m)?)?;
    m.add_function(wrap_pyfunction!(dead_letter_count, m)?)?;
    m.add_function(wrap_pyfunction!(dead_letter_replay, m)?)?;
    m.add_function(wrap_pyfunction!(dead_letter_replay_all, m)?)?;
    m.add_function(wrap_pyfunction!(dead_letter_purge, m)?)?;
    m.add_function(wrap_pyfunction!(dead_letter_delete, m)?)?;
    Ok(())
}
