//! streambus errors as Python exceptions: one base class, `StreambusError`, with
//! a subclass per family of `ErrorKind`, and the kind's name in `.kind`.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use streambus::{Error, ErrorKind};

create_exception!(
    _native,
    StreambusError,
    PyException,
    "Base class of every streambus error; `.kind` names the library's ErrorKind."
);
create_exception!(
    _native,
    ConnectError,
    StreambusError,
    "Redis could not be reached, timed out or was unavailable (retryable)."
);
create_exception!(
    _native,
    AuthError,
    StreambusError,
    "Redis refused the credentials or the ACL user lacks a permission."
);
create_exception!(
    _native,
    NoGroupError,
    StreambusError,
    "The consumer group (or stream) does not exist."
);
create_exception!(
    _native,
    DecodeError,
    StreambusError,
    "An entry could not be decoded (e.g. its `data` is not JSON): dead-letters in a handler."
);
create_exception!(
    _native,
    InvalidInputError,
    StreambusError,
    "Bad input: a bad URL, name, option or an oversized message: dead-letters in a handler."
);
create_exception!(
    _native,
    RedisError,
    StreambusError,
    "Any other error Redis answered with."
);

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("StreambusError", py.get_type::<StreambusError>())?;
    m.add("ConnectError", py.get_type::<ConnectError>())?;
    m.add("AuthError", py.get_type::<AuthError>())?;
    m.add("NoGroupError", py.get_type::<NoGroupError>())?;
    m.add("DecodeError", py.get_type::<DecodeError>())?;
    m.add("InvalidInputError", py.get_type::<InvalidInputError>())?;
    m.add("RedisError", py.get_type::<RedisError>())?;
    Ok(())
}

fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Connection => "connection",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Unconfirmed => "unconfirmed",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Auth => "auth",
        ErrorKind::Permission => "permission",
        ErrorKind::NoGroup => "no_group",
        ErrorKind::NoStream => "no_stream",
        ErrorKind::WrongType => "wrong_type",
        ErrorKind::Decode => "decode",
        ErrorKind::TooLarge => "too_large",
        ErrorKind::CrossSlot => "cross_slot",
        ErrorKind::InvalidInput => "invalid_input",
        ErrorKind::Busy => "busy",
        _ => "redis",
    }
}

/// The Python exception for a streambus error.
pub(crate) fn to_py(e: Error) -> PyErr {
    let kind = e.kind();
    let msg = e.to_string();
    let err = match kind {
        ErrorKind::Connection
        | ErrorKind::Timeout
        | ErrorKind::Unconfirmed
        | ErrorKind::Unavailable
        | ErrorKind::Busy => ConnectError::new_err(msg),
        ErrorKind::Auth | ErrorKind::Permission => AuthError::new_err(msg),
        ErrorKind::NoGroup | ErrorKind::NoStream => NoGroupError::new_err(msg),
        ErrorKind::Decode => DecodeError::new_err(msg),
        ErrorKind::InvalidInput | ErrorKind::TooLarge => InvalidInputError::new_err(msg),
        _ => RedisError::new_err(msg),
    };
    Python::attach(|py| {
        let _ = err.value(py).setattr("kind", kind_name(kind)); // best effort: the message says it all
        let _ = err.value(py).setattr("retryable", e.is_retryable());
    });
    err
}

/// `Result` of the library to `PyResult`.
pub(crate) trait IntoPy<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for streambus::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
