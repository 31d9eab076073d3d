//! `Worker`: the library's worker, with the handler in Python.
//!
//! The Rust worker calls its handler once per delivery, concurrently. Here that
//! handler only queues the delivery with a one-shot reply channel and waits for
//! the answer. Python takes the queue a batch at a time: `dispatch` calls a
//! plain function for every delivery of a batch under one acquisition of the
//! GIL; `next_batch` hands the deliveries to Python (the asyncio path runs each
//! as a task and answers with `Delivery`'s completion). Everything else, reads,
//! acks, retries, reclaim, dead letters, shutdown, is the library's.

use std::sync::Mutex;
use std::time::Duration;

use pyo3::exceptions::{PyException, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::PyList;
use streambus::{Backoff, CancellationToken, Outcome, WorkerOptions, WorkerReport};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::entry::Delivery;
use crate::errors::{DecodeError, IntoPy, InvalidInputError};
use crate::{duration, helpers, runtime, wait};

/// A delivery on its way to Python, with the channel for its outcome.
struct Job {
    delivery: streambus::Delivery,
    reply: oneshot::Sender<Outcome>,
}

#[pyclass(module = "streambus._native", frozen)]
pub struct Worker {
    client: streambus::Client,
    stream: String,
    group: String,
    name: String,
    options: WorkerOptions,
    /// Cancelled by `stop`.
    shutdown: CancellationToken,
    /// The queue of deliveries; held (GIL released) while a dispatcher waits on
    /// it, so only ever `try_lock`ed with the GIL held.
    jobs: Mutex<Option<mpsc::UnboundedReceiver<Job>>>,
    /// The running library worker, until `join` takes it.
    task: Mutex<Option<JoinHandle<streambus::Result<WorkerReport>>>>,
    /// To stop it at once.
    abort: Mutex<Option<tokio::task::AbortHandle>>,
}

/// What the handler's return value or exception means, as the Rust `Outcome`
/// conversions decide: `Retry`/`DeadLetter` (returned or raised) say so;
/// `DecodeError` and `InvalidInputError` dead-letter (retrying cannot fix
/// them); any other exception retries; any other return value acknowledges.
fn outcome_of(py: Python<'_>, result: &PyResult<Bound<'_, PyAny>>) -> PyResult<Outcome> {
    if let Ok(v) = result {
        if v.is_none() {
            return Ok(Outcome::Ack); // the common case, without the isinstance checks
        }
    }
    let h = helpers()?;
    let value = match result {
        Ok(v) => v.clone(),
        Err(e) => e.value(py).clone().into_any(),
    };
    if value.is_instance(h.retry.bind(py))? {
        let reason: String = value.getattr("reason")?.str()?.extract()?;
        let delay: Option<f64> = value.getattr("delay")?.extract()?;
        return Ok(match delay {
            Some(d) => Outcome::retry_after(duration("Retry.delay", d)?, reason),
            None => Outcome::retry(reason),
        });
    }
    if value.is_instance(h.dead_letter.bind(py))? {
        let reason: String = value.getattr("reason")?.str()?.extract()?;
        return Ok(Outcome::dead_letter(reason));
    }
    match result {
        Ok(_) => Ok(Outcome::Ack),
        Err(e) => {
            let reason = describe(py, e);
            if e.is_instance_of::<DecodeError>(py) || e.is_instance_of::<InvalidInputError>(py) {
                Ok(Outcome::dead_letter(reason))
            } else {
                Ok(Outcome::retry(reason))
            }
        }
    }
}

/// [`outcome_of`], and a retry when the outcome itself is bad (e.g. a negative
/// `Retry.delay`): a handler's mistake never stops the worker.
pub(crate) fn outcome_or_retry(py: Python<'_>, result: &PyResult<Bound<'_, PyAny>>) -> Outcome {
    outcome_of(py, result)
        .unwrap_or_else(|e| Outcome::retry(format!("bad handler outcome: {}", describe(py, &e))))
}

/// `TypeName: message` of an exception, for the retry reason and dead letter.
fn describe(py: Python<'_>, e: &PyErr) -> String {
    let name = e
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    let text = e.value(py).str().map(|s| s.to_string()).unwrap_or_default();
    if text.is_empty() {
        name
    } else {
        format!("{name}: {text}")
    }
}

impl Worker {
    /// Waits (GIL released) up to `timeout` for the first job, then takes what
    /// else is queued, up to `max`. `None` once the worker has stopped and every
    /// job was taken.
    fn take_batch(
        &self,
        py: Python<'_>,
        max: usize,
        timeout: Duration,
    ) -> PyResult<Option<Vec<Job>>> {
        let mut guard = self.jobs.try_lock().map_err(|_| {
            PyRuntimeError::new_err("another thread is already taking this worker's deliveries")
        })?;
        let jobs = guard.as_mut().ok_or_else(|| {
            PyRuntimeError::new_err("the worker is not running (call start first)")
        })?;
        let first = py.detach(|| {
            runtime().block_on(async { tokio::time::timeout(timeout, jobs.recv()).await })
        });
        let first = match first {
            Err(_) => return Ok(Some(Vec::new())), // nothing within the timeout
            Ok(None) => return Ok(None),           // stopped, queue empty
            Ok(Some(job)) => job,
        };
        let mut batch = Vec::with_capacity(max.min(1024));
        batch.push(first);
        while batch.len() < max {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        Ok(Some(batch))
    }
}

#[pymethods]
impl Worker {
    #[new]
    #[pyo3(signature = (client, stream, group, *, name=None, concurrency=None, batch_size=None,
        block=None, visibility_timeout=None, reclaim_interval=None, max_deliveries=None,
        retry_backoff=None, shutdown_grace=None, ordered_by_key=false, idempotency_ttl=None,
        start="0", dead_letter_maxlen=None, ack_flush_interval=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        client: &Client,
        stream: String,
        group: String,
        name: Option<String>,
        concurrency: Option<usize>,
        batch_size: Option<usize>,
        block: Option<f64>,
        visibility_timeout: Option<f64>,
        reclaim_interval: Option<f64>,
        max_deliveries: Option<u32>,
        retry_backoff: Option<(f64, f64)>,
        shutdown_grace: Option<f64>,
        ordered_by_key: bool,
        idempotency_ttl: Option<f64>,
        start: &str,
        dead_letter_maxlen: Option<u64>,
        ack_flush_interval: Option<f64>,
    ) -> PyResult<Worker> {
        let mut o = WorkerOptions::default();
        if let Some(v) = concurrency {
            o.concurrency = v;
        }
        if let Some(v) = batch_size {
            o.batch_size = v;
        }
        if let Some(v) = block {
            o.block = duration("block", v)?;
        }
        if let Some(v) = visibility_timeout {
            o.visibility_timeout = duration("visibility_timeout", v)?;
        }
        if let Some(v) = reclaim_interval {
            o.reclaim_interval = duration("reclaim_interval", v)?;
        }
        if let Some(v) = max_deliveries {
            o.max_deliveries = v;
        }
        if let Some((base, max)) = retry_backoff {
            o.retry_backoff = Backoff::new(
                duration("retry_backoff base", base)?,
                duration("retry_backoff max", max)?,
            );
        }
        if let Some(v) = shutdown_grace {
            o.shutdown_grace = duration("shutdown_grace", v)?;
        }
        o.ordered_by_key = ordered_by_key;
        o.idempotency_ttl = idempotency_ttl
            .map(|v| duration("idempotency_ttl", v))
            .transpose()?;
        o.start = crate::consumer::parse_start(start)?;
        o.dead_letter_maxlen = dead_letter_maxlen;
        if let Some(v) = ack_flush_interval {
            o.ack_flush_interval = duration("ack_flush_interval", v)?;
        }
        let name = name.unwrap_or_else(streambus::default_consumer_name);
        o.consumer_name = Some(name.clone());
        Ok(Worker {
            client: client.client.clone(),
            stream,
            group,
            name,
            options: o,
            shutdown: CancellationToken::new(),
            jobs: Mutex::new(None),
            task: Mutex::new(None),
            abort: Mutex::new(None),
        })
    }

    /// The consumer name in the group.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    #[getter]
    fn stream(&self) -> &str {
        &self.stream
    }

    #[getter]
    fn group(&self) -> &str {
        &self.group
    }

    /// Starts the worker in the background; deliveries queue up for `dispatch`
    /// or `next_batch`.
    fn start(&self) -> PyResult<()> {
        let mut jobs = self
            .jobs
            .try_lock()
            .map_err(|_| PyRuntimeError::new_err("the worker was already started"))?;
        let mut task_slot = lock(&self.task)?;
        if jobs.is_some() || task_slot.is_some() {
            return Err(PyRuntimeError::new_err("the worker was already started"));
        }
        let (tx, rx) = mpsc::unbounded_channel::<Job>();
        let worker = streambus::Worker::new(
            &self.client,
            self.stream.clone(),
            self.group.clone(),
            self.options.clone(),
        );
        let token = self.shutdown.clone();
        // Unbounded on purpose: the worker's concurrency permits bound what is
        // in flight, and so what can be queued here.
        let handler = move |delivery: streambus::Delivery| {
            let tx = tx.clone();
            async move {
                let (reply, answer) = oneshot::channel();
                if tx.send(Job { delivery, reply }).is_err() {
                    return Outcome::retry("the Python dispatcher has gone");
                }
                answer
                    .await
                    .unwrap_or_else(|_| Outcome::retry("the Python side dropped the delivery"))
            }
        };
        let task = runtime().spawn(async move { worker.run(handler, token).await });
        *lock(&self.abort)? = Some(task.abort_handle());
        *task_slot = Some(task);
        *jobs = Some(rx);
        Ok(())
    }

    /// Takes a batch of up to `max` deliveries (waiting up to `timeout` seconds
    /// for the first) and calls `handler(delivery)` for each, under one
    /// acquisition of the GIL. Returns False once the worker has stopped and
    /// every delivery was handled.
    ///
    /// A `BaseException` that is not an `Exception` (KeyboardInterrupt,
    /// SystemExit) retries its delivery and the rest of the batch and is raised.
    #[pyo3(signature = (handler, max=512, timeout=0.1))]
    fn dispatch(
        &self,
        py: Python<'_>,
        handler: &Bound<'_, PyAny>,
        max: usize,
        timeout: f64,
    ) -> PyResult<bool> {
        let Some(batch) = self.take_batch(py, max.max(1), duration("timeout", timeout)?)? else {
            return Ok(false);
        };
        let mut jobs = batch.into_iter();
        while let Some(job) = jobs.next() {
            let d = Delivery::create(py, job.delivery, job.reply)?;
            let result = handler.call1((d.clone_ref(py),));
            if let Err(e) = &result {
                if !e.is_instance_of::<PyException>(py) {
                    let reason = describe(py, e);
                    d.get().send(Outcome::retry(reason.clone()));
                    for rest in jobs {
                        let _ = rest
                            .reply
                            .send(Outcome::retry(format!("worker interrupted: {reason}")));
                    }
                    return Err(result
                        .err()
                        .unwrap_or_else(|| PyRuntimeError::new_err("interrupted")));
                }
            }
            let outcome = outcome_or_retry(py, &result);
            d.get().send(outcome);
        }
        Ok(true)
    }

    /// Takes a batch of deliveries without handling them (for the asyncio
    /// path); `None` once the worker has stopped and every delivery was taken.
    #[pyo3(signature = (max=512, timeout=0.1))]
    fn next_batch<'py>(
        &self,
        py: Python<'py>,
        max: usize,
        timeout: f64,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        let Some(batch) = self.take_batch(py, max.max(1), duration("timeout", timeout)?)? else {
            return Ok(None);
        };
        let items: Vec<Py<Delivery>> = batch
            .into_iter()
            .map(|job| Delivery::create(py, job.delivery, job.reply))
            .collect::<PyResult<_>>()?;
        Ok(Some(PyList::new(py, items)?))
    }

    /// Stops the worker gracefully: no more reads; in-flight deliveries are
    /// still handed out until `dispatch`/`next_batch` report the end.
    fn stop(&self) {
        self.shutdown.cancel();
    }

    /// Whether `stop` was called.
    #[getter]
    fn stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Waits for the stopped worker and returns its report as JSON text (raises
    /// the error it failed with, e.g. Redis unreachable at start).
    fn join(&self, py: Python<'_>) -> PyResult<String> {
        let task = lock(&self.task)?.take();
        let Some(task) = task else {
            return Err(PyRuntimeError::new_err(
                "the worker was not started, or already joined",
            ));
        };
        let report = wait(py, task)?
            .map_err(|e| PyRuntimeError::new_err(format!("the worker task failed: {e}")))?
            .py_err()?;
        serde_json::to_string(&report).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// Stops at once (the handlers' answers still pending are dropped, their
    /// entries stay pending and are redelivered).
    fn abort(&self) -> PyResult<()> {
        self.shutdown.cancel();
        if let Some(a) = lock(&self.abort)?.as_ref() {
            a.abort();
        }
        Ok(())
    }
}

/// Locks a mutex that is never held across a wait.
fn lock<T>(m: &Mutex<T>) -> PyResult<std::sync::MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| PyRuntimeError::new_err("worker state poisoned"))
}
