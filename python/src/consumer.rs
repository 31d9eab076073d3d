//! `Consumer`: a named member of a group, read and acknowledged by hand.

use std::str::FromStr;
use std::sync::Arc;

use pyo3::prelude::*;
use streambus::{ConsumerOptions, EntryId, StartId};
use tokio::sync::Mutex;

use crate::client::Client;
use crate::entry::Entry;
use crate::errors::{IntoPy, InvalidInputError};
use crate::{duration, wait};

/// One named member of a consumer group.
#[pyclass(module = "streambus._native", frozen)]
pub struct Consumer {
    /// A tokio mutex: a read holds it across its await (one read at a time).
    inner: Arc<Mutex<streambus::Consumer>>,
    stream: String,
    group: String,
    name: String,
}

pub(crate) fn parse_ids(ids: Vec<String>) -> PyResult<Vec<EntryId>> {
    ids.iter()
        .map(|s| {
            EntryId::from_str(s)
                .map_err(|e| InvalidInputError::new_err(format!("bad entry id {s:?}: {e}")))
        })
        .collect()
}

pub(crate) fn parse_start(start: &str) -> PyResult<StartId> {
    StartId::from_str(start).py_err()
}

fn entries(py: Python<'_>, batch: Vec<streambus::Entry>) -> PyResult<Vec<Py<Entry>>> {
    batch
        .into_iter()
        .map(|inner| Py::new(py, Entry { inner }))
        .collect()
}

#[pymethods]
impl Consumer {
    #[new]
    #[pyo3(signature = (client, stream, group, *, name=None, batch_size=10, max_wait=2.0, start="0", create_group=true))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        client: &Client,
        stream: String,
        group: String,
        name: Option<String>,
        batch_size: usize,
        max_wait: f64,
        start: &str,
        create_group: bool,
    ) -> PyResult<Consumer> {
        let options = ConsumerOptions {
            batch_size,
            max_wait: duration("max_wait", max_wait)?,
            start: parse_start(start)?,
            create_group,
            consumer_name: name,
        };
        let c = client.client.clone();
        let (s, g) = (stream.clone(), group.clone());
        let consumer = wait(py, async move {
            streambus::Consumer::new(&c, &s, &g, options).await
        })?
        .py_err()?;
        let name = consumer.name().to_owned();
        Ok(Consumer {
            inner: Arc::new(Mutex::new(consumer)),
            stream,
            group,
            name,
        })
    }

    #[getter]
    fn stream(&self) -> &str {
        &self.stream
    }

    #[getter]
    fn group(&self) -> &str {
        &self.group
    }

    /// The consumer's name in the group.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Up to `batch_size` entries, or what arrived within `max_wait`: first this
    /// consumer's own pending entries (after a restart), then new ones.
    fn next_batch(&self, py: Python<'_>) -> PyResult<Vec<Py<Entry>>> {
        let inner = self.inner.clone();
        let batch = wait(py, async move { inner.lock().await.next_batch().await })?.py_err()?;
        entries(py, batch)
    }

    /// One read of up to `count` entries, waiting up to `block` seconds
    /// (`None`: do not wait).
    #[pyo3(signature = (count, block=None))]
    fn read(&self, py: Python<'_>, count: usize, block: Option<f64>) -> PyResult<Vec<Py<Entry>>> {
        let block = block.map(|b| duration("block", b)).transpose()?;
        let inner = self.inner.clone();
        let batch = wait(
            py,
            async move { inner.lock().await.read(count, block).await },
        )?
        .py_err()?;
        entries(py, batch)
    }

    /// Acknowledges entries by id (one XACK); returns how many were pending.
    fn ack(&self, py: Python<'_>, ids: Vec<String>) -> PyResult<u64> {
        let ids = parse_ids(ids)?;
        let inner = self.inner.clone();
        wait(py, async move { inner.lock().await.ack(&ids).await })?.py_err()
    }

    /// Acknowledges and deletes entries (XACK + XDEL); returns how many were pending.
    fn ack_and_delete(&self, py: Python<'_>, ids: Vec<String>) -> PyResult<u64> {
        let ids = parse_ids(ids)?;
        let inner = self.inner.clone();
        wait(
            py,
            async move { inner.lock().await.ack_and_delete(&ids).await },
        )?
        .py_err()
    }
}
