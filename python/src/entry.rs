//! `Entry` (an entry read from a stream) and `Delivery` (an entry given to a
//! worker's handler, which carries the handler's answer back to the worker).
//!
//! Both are lazy: the fields and the payload are turned into Python objects
//! only when asked for, so that a handler that looks at little costs little.

use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use tokio::sync::oneshot;

use crate::errors::IntoPy;
use streambus::Outcome;

/// One stream entry: its id, its raw fields, and the envelope decoded from them.
#[pyclass(module = "streambus._native", frozen, subclass)]
pub struct Entry {
    pub(crate) inner: streambus::Entry,
}

impl Entry {
    fn envelope(&self) -> PyResult<Option<streambus::Envelope>> {
        self.inner.envelope().py_err()
    }
}

#[pymethods]
impl Entry {
    /// The entry id, e.g. `"1700000000000-0"`.
    #[getter]
    fn id(&self) -> String {
        self.inner.id.to_string()
    }

    /// The stream it was read from.
    #[getter]
    fn stream(&self) -> &str {
        &self.inner.stream
    }

    /// The raw field map, values as bytes (binary-safe).
    #[getter]
    fn fields<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in self.inner.fields.iter() {
            d.set_item(k, PyBytes::new(py, v))?;
        }
        Ok(d)
    }

    /// The raw field map with values decoded as UTF-8 (invalid bytes replaced).
    #[getter]
    fn text_fields<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in self.inner.fields.iter() {
            d.set_item(k, String::from_utf8_lossy(v))?;
        }
        Ok(d)
    }

    /// Whether the entry is an envelope (has `id` and `data` fields).
    #[getter]
    fn is_envelope(&self) -> bool {
        self.inner.fields.get("id").is_some() && self.inner.fields.get("data").is_some()
    }

    /// The envelope payload, decoded from JSON; `None` for raw entries.
    /// Raises `DecodeError` if `data` is not valid JSON.
    #[getter]
    fn data(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self.envelope()? {
            None => Ok(py.None()),
            Some(env) => crate::helpers()?.json_loads.call1(py, (env.data,)),
        }
    }

    /// The envelope payload as JSON text; `None` for raw entries.
    #[getter]
    fn data_text(&self) -> PyResult<Option<String>> {
        Ok(self.envelope()?.map(|e| e.data))
    }

    /// The envelope's unique message id (UUID); `None` for raw entries.
    #[getter]
    fn message_id(&self) -> Option<String> {
        self.inner.fields.get_str("id").map(str::to_owned)
    }

    /// The envelope's ISO-8601 publishing time, if present.
    #[getter]
    fn timestamp(&self) -> Option<String> {
        self.inner.fields.get_str("timestamp").map(str::to_owned)
    }

    /// The envelope's `type` field, if present.
    #[getter]
    fn r#type(&self) -> Option<String> {
        self.inner.fields.get_str("type").map(str::to_owned)
    }

    /// The envelope's ordering `key`, if present.
    #[getter]
    fn key(&self) -> Option<String> {
        self.inner.fields.get_str("key").map(str::to_owned)
    }

    /// The W3C `traceparent` field, if present.
    #[getter]
    fn traceparent(&self) -> Option<String> {
        self.inner.fields.get_str("traceparent").map(str::to_owned)
    }

    /// The entry as a dict: `id`, `stream`, `fields` (text), and for envelopes
    /// `message_id`, `timestamp`, `data` (decoded), `type`, `key`.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("id", self.id())?;
        d.set_item("stream", self.stream())?;
        d.set_item("fields", self.text_fields(py)?)?;
        if self.is_envelope() {
            d.set_item("message_id", self.message_id())?;
            d.set_item("timestamp", self.timestamp())?;
            d.set_item("data", self.data(py)?)?;
            d.set_item("type", self.r#type())?;
            d.set_item("key", self.key())?;
        }
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Entry(stream={:?}, id={:?}, fields={})",
            &*self.inner.stream,
            self.inner.id.to_string(),
            serde_json::Value::Object(self.inner.fields.to_json())
        )
    }
}

/// One delivery of an entry to a worker's handler.
#[pyclass(module = "streambus._native", extends = Entry, frozen)]
pub struct Delivery {
    pub(crate) deliveries: u32,
    /// Where the handler's outcome goes; taken when the delivery is completed.
    pub(crate) reply: Mutex<Option<oneshot::Sender<Outcome>>>,
}

impl Delivery {
    pub(crate) fn create(
        py: Python<'_>,
        d: streambus::Delivery,
        reply: oneshot::Sender<Outcome>,
    ) -> PyResult<Py<Delivery>> {
        let init = PyClassInitializer::from(Entry { inner: d.entry }).add_subclass(Delivery {
            deliveries: d.deliveries,
            reply: Mutex::new(Some(reply)),
        });
        Py::new(py, init)
    }

    /// Sends `outcome` to the worker; false if already completed.
    pub(crate) fn send(&self, outcome: Outcome) -> bool {
        let tx = match self.reply.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        match tx {
            // The worker may have stopped waiting (a hard stop): nothing to do.
            Some(tx) => {
                let _ = tx.send(outcome);
                true
            }
            None => false,
        }
    }
}

#[pymethods]
impl Delivery {
    /// How many times this entry has been delivered, this time included (1 the
    /// first time).
    #[getter]
    fn deliveries(&self) -> u32 {
        self.deliveries
    }

    /// Completes this delivery with what the handler returned (`result`) or
    /// raised (`error`), mapped as `Worker.dispatch` maps them. Returns False if
    /// it was already completed.
    #[pyo3(signature = (result=None, error=None))]
    fn _complete(
        slf: &Bound<'_, Self>,
        result: Option<Bound<'_, PyAny>>,
        error: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let py = slf.py();
        let r: PyResult<Bound<'_, PyAny>> = match error {
            Some(e) => Err(PyErr::from_value(e)),
            None => Ok(result.unwrap_or_else(|| py.None().into_bound(py))),
        };
        let outcome = crate::worker::outcome_or_retry(py, &r);
        Ok(slf.get().send(outcome))
    }

    fn __repr__(slf: PyRef<'_, Self>) -> String {
        let deliveries = slf.deliveries;
        let entry = slf.as_super();
        format!(
            "Delivery(stream={:?}, id={:?}, deliveries={deliveries}, fields={})",
            &*entry.inner.stream,
            entry.inner.id.to_string(),
            serde_json::Value::Object(entry.inner.fields.to_json())
        )
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        // A delivery dropped without an answer (a bug in the dispatcher, or a
        // handler task cancelled) is retried, never acknowledged.
        self.send(Outcome::retry(
            "the delivery was dropped without an outcome",
        ));
    }
}
