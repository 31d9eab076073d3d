//! `Client`: where Redis is, and the shared connection, checked at open.

use std::path::PathBuf;

use pyo3::prelude::*;
use streambus::{ConnectOptions, Connection, TlsOptions};

use crate::errors::IntoPy;
use crate::{duration, wait};

/// A Redis address and its shared, reconnecting connection.
#[pyclass(module = "streambus._native", frozen)]
pub struct Client {
    pub(crate) client: streambus::Client,
    pub(crate) conn: Connection,
}

#[pymethods]
impl Client {
    /// Parses `url`, connects and checks the connection with `PING`, so that a
    /// bad address or password fails here.
    #[staticmethod]
    #[pyo3(signature = (url, *, ca_file=None, client_cert_file=None, client_key_file=None,
        insecure_skip_verify=false, connect_timeout=None, response_timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn open(
        py: Python<'_>,
        url: &str,
        ca_file: Option<PathBuf>,
        client_cert_file: Option<PathBuf>,
        client_key_file: Option<PathBuf>,
        insecure_skip_verify: bool,
        connect_timeout: Option<f64>,
        response_timeout: Option<f64>,
    ) -> PyResult<Client> {
        let mut options = ConnectOptions {
            tls: TlsOptions {
                ca_file,
                client_cert_file,
                client_key_file,
                insecure_skip_verify,
            },
            ..Default::default()
        };
        if let Some(t) = connect_timeout {
            options.connect_timeout = duration("connect_timeout", t)?;
        }
        if let Some(t) = response_timeout {
            options.response_timeout = duration("response_timeout", t)?;
        }
        let client = streambus::Client::open_with(url, options).py_err()?;
        let c = client.clone();
        let conn = wait(py, async move { c.connect().await })?.py_err()?;
        Ok(Client { client, conn })
    }

    /// The URL with its password masked.
    #[getter]
    fn url(&self) -> &str {
        self.client.display_url()
    }

    /// Whether this is a Redis Cluster client.
    #[getter]
    fn is_cluster(&self) -> bool {
        self.client.is_cluster()
    }

    /// Sends `PING`; raises if Redis does not answer.
    fn ping(&self, py: Python<'_>) -> PyResult<()> {
        let mut conn = self.conn.clone();
        wait(py, async move {
            streambus::redis::cmd("PING")
                .query_async::<()>(&mut conn)
                .await
        })?
        .map_err(|e| crate::errors::ConnectError::new_err(format!("PING failed: {e}")))
    }

    fn __repr__(&self) -> String {
        format!("Client({:?})", self.client.display_url())
    }
}

/// A raw reply as Python objects: bulk strings as bytes, arrays as lists,
/// maps as dicts, errors raised.
fn reply_to_py(py: Python<'_>, v: streambus::redis::Value) -> PyResult<Py<PyAny>> {
    use pyo3::types::{PyBytes, PyDict, PyList};
    use streambus::redis::Value as V;
    Ok(match v {
        V::Nil => py.None(),
        V::Int(i) => i.into_pyobject(py)?.into_any().unbind(),
        V::BulkString(b) => PyBytes::new(py, &b).into_any().unbind(),
        V::SimpleString(s) => s.into_pyobject(py)?.into_any().unbind(),
        V::Okay => "OK".into_pyobject(py)?.into_any().unbind(),
        V::Double(f) => f.into_pyobject(py)?.into_any().unbind(),
        V::Boolean(b) => pyo3::types::PyBool::new(py, b)
            .to_owned()
            .into_any()
            .unbind(),
        V::Array(items) | V::Set(items) => {
            let l = PyList::empty(py);
            for i in items {
                l.append(reply_to_py(py, i)?)?;
            }
            l.into_any().unbind()
        }
        V::Map(pairs) => {
            let d = PyDict::new(py);
            for (k, v) in pairs {
                d.set_item(reply_to_py(py, k)?, reply_to_py(py, v)?)?;
            }
            d.into_any().unbind()
        }
        V::ServerError(e) => {
            return Err(crate::errors::RedisError::new_err(format!(
                "{}: {}",
                e.code(),
                e.details().unwrap_or("")
            )))
        }
        other => format!("{other:?}").into_pyobject(py)?.into_any().unbind(),
    })
}

/// One raw command on the client's shared connection (arguments as str,
/// bytes or int). For tools and the compatibility layers; blocking commands
/// must stay within the response timeout.
#[pyfunction]
pub(crate) fn command(
    py: Python<'_>,
    client: &Client,
    args: Vec<Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    use pyo3::types::{PyBytes, PyString};
    let mut parts: Vec<Vec<u8>> = Vec::with_capacity(args.len());
    for a in &args {
        if let Ok(b) = a.cast::<PyBytes>() {
            parts.push(b.as_bytes().to_vec());
        } else if let Ok(s) = a.cast::<PyString>() {
            parts.push(s.to_cow()?.as_bytes().to_vec());
        } else {
            parts.push(a.str()?.to_cow()?.as_bytes().to_vec());
        }
    }
    let Some((name, rest)) = parts.split_first() else {
        return Err(crate::errors::InvalidInputError::new_err(
            "command needs a name",
        ));
    };
    let mut cmd = streambus::redis::cmd(&String::from_utf8_lossy(name));
    for p in rest {
        cmd.arg(p.as_slice());
    }
    let mut conn = self_conn(client);
    let reply = wait(py, async move {
        cmd.query_async::<streambus::redis::Value>(&mut conn).await
    })?;
    match reply {
        Ok(v) => reply_to_py(py, v),
        Err(e) => Err(match e.code() {
            Some(_) => crate::errors::RedisError::new_err(e.to_string()),
            None => crate::errors::ConnectError::new_err(e.to_string()),
        }),
    }
}

fn self_conn(client: &Client) -> Connection {
    client.conn.clone()
}
