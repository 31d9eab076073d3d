//! `Producer`: envelopes (or raw entries) to a stream, pipelined.

use std::sync::Arc;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};
use streambus::{Message, ProducerOptions, Retention};

use crate::client::Client;
use crate::errors::IntoPy;
use crate::{duration, json, wait};

/// Publishes to streams; safe to share between threads (concurrent calls are
/// pipelined into the same round trips).
#[pyclass(module = "streambus._native", frozen)]
pub struct Producer {
    inner: Arc<streambus::Producer>,
}

fn message(
    data: &Bound<'_, PyAny>,
    key: Option<String>,
    kind: Option<String>,
    id: Option<String>,
) -> PyResult<Message> {
    let text = json::dumps(data)?;
    let mut m = Message::json_text(text).py_err()?;
    if let Some(k) = key {
        m = m.with_key(k);
    }
    if let Some(t) = kind {
        m = m.with_type(t);
    }
    if let Some(i) = id {
        m = m.with_id(i);
    }
    Ok(m)
}

fn raw_message(fields: &Bound<'_, PyDict>) -> PyResult<Message> {
    let mut pairs: Vec<(String, Vec<u8>)> = Vec::with_capacity(fields.len());
    for (k, v) in fields.iter() {
        let k: String = k
            .extract()
            .map_err(|_| PyTypeError::new_err("raw field names must be str"))?;
        let v: Vec<u8> = if let Ok(b) = v.cast::<PyBytes>() {
            b.as_bytes().to_vec()
        } else if let Ok(s) = v.cast::<PyString>() {
            s.to_cow()?.as_bytes().to_vec()
        } else {
            // redis-py writes numbers as their text too.
            v.str()?.to_cow()?.as_bytes().to_vec()
        };
        pairs.push((k, v));
    }
    if pairs.is_empty() {
        return Err(PyValueError::new_err(
            "a raw entry needs at least one field",
        ));
    }
    Ok(Message::raw(pairs))
}

#[pymethods]
impl Producer {
    #[new]
    #[pyo3(signature = (client, *, maxlen=None, exact=false, max_age=None, max_message_bytes=None, publish_timeout=None))]
    fn new(
        py: Python<'_>,
        client: &Client,
        maxlen: Option<u64>,
        exact: bool,
        max_age: Option<f64>,
        max_message_bytes: Option<usize>,
        publish_timeout: Option<f64>,
    ) -> PyResult<Producer> {
        let retention = match (maxlen, max_age) {
            (Some(_), Some(_)) => {
                return Err(PyValueError::new_err("give maxlen or max_age, not both"))
            }
            (Some(len), None) => Retention::MaxLen { len, exact },
            (None, Some(age)) => Retention::MaxAge(duration("max_age", age)?),
            (None, None) => Retention::Unbounded,
        };
        let mut o = ProducerOptions {
            retention,
            ..Default::default()
        };
        if let Some(n) = max_message_bytes {
            o.max_message_bytes = n;
        }
        if let Some(t) = publish_timeout {
            o.publish_timeout = duration("publish_timeout", t)?;
        }
        let c = client.client.clone();
        let p = wait(py, async move { streambus::Producer::new(&c, o).await })?.py_err()?;
        Ok(Producer { inner: Arc::new(p) })
    }

    /// Publishes one envelope whose `data` is `data` as JSON; returns the entry id.
    #[pyo3(signature = (stream, data, *, key=None, r#type=None, id=None))]
    fn publish(
        &self,
        py: Python<'_>,
        stream: String,
        data: &Bound<'_, PyAny>,
        key: Option<String>,
        r#type: Option<String>,
        id: Option<String>,
    ) -> PyResult<String> {
        let m = message(data, key, r#type, id)?;
        let p = self.inner.clone();
        let id = wait(py, async move { p.publish(&stream, m).await })?.py_err()?;
        Ok(id.to_string())
    }

    /// Publishes a raw entry with exactly these fields (no envelope).
    fn publish_raw(
        &self,
        py: Python<'_>,
        stream: String,
        fields: &Bound<'_, PyDict>,
    ) -> PyResult<String> {
        let m = raw_message(fields)?;
        let p = self.inner.clone();
        let id = wait(py, async move { p.publish(&stream, m).await })?.py_err()?;
        Ok(id.to_string())
    }

    /// Publishes many envelopes in pipelines; returns their entry ids, in order.
    #[pyo3(signature = (stream, items, *, key=None, r#type=None))]
    fn publish_batch(
        &self,
        py: Python<'_>,
        stream: String,
        items: &Bound<'_, PyAny>,
        key: Option<String>,
        r#type: Option<String>,
    ) -> PyResult<Vec<String>> {
        let mut messages = Vec::new();
        for item in items.try_iter()? {
            messages.push(message(&item?, key.clone(), r#type.clone(), None)?);
        }
        let p = self.inner.clone();
        let ids = wait(py, async move { p.publish_batch(&stream, messages).await })?.py_err()?;
        Ok(ids.into_iter().map(|i| i.to_string()).collect())
    }
}
