//! Python objects to JSON text, written straight into a buffer: what
//! `json.dumps` does for dicts, lists, strings, numbers, booleans and `None`,
//! several times faster. Anything else goes through `json.dumps` (so its
//! `TypeError` for objects that are not JSON serializable is what the caller sees).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

/// Deep structures beyond this are refused, like `json.dumps`'s recursion limit.
const MAX_DEPTH: usize = 512;

/// `obj` as JSON text.
pub(crate) fn dumps(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    let mut out = String::with_capacity(128);
    write(obj, &mut out, 0)?;
    Ok(out)
}

/// `obj` as JSON text (the encoder `publish` uses), exposed for tests and tools.
#[pyfunction]
pub(crate) fn to_json(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    dumps(obj)
}

fn write_str(s: &str, out: &mut String) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match esc {
            Some(e) => out.push_str(e),
            None => out.push_str(&format!("\\u{:04x}", b)),
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

fn write(obj: &Bound<'_, PyAny>, out: &mut String, depth: usize) -> PyResult<()> {
    if depth > MAX_DEPTH {
        return Err(PyValueError::new_err(
            "payload nested too deeply to encode as JSON",
        ));
    }
    if obj.is_none() {
        out.push_str("null");
    } else if let Ok(s) = obj.cast_exact::<PyString>() {
        write_str(&s.to_cow()?, out);
    } else if let Ok(b) = obj.cast_exact::<PyBool>() {
        out.push_str(if b.is_true() { "true" } else { "false" });
    } else if let Ok(i) = obj.cast_exact::<PyInt>() {
        match i.extract::<i64>() {
            Ok(v) => out.push_str(&v.to_string()),
            Err(_) => out.push_str(&i.str()?.to_cow()?),
        }
    } else if let Ok(f) = obj.cast_exact::<PyFloat>() {
        let v = f.value();
        if !v.is_finite() {
            return Err(PyValueError::new_err(format!(
                "payload contains {v}, which is not valid JSON"
            )));
        }
        // Python's repr: the shortest text that reads back to the same float.
        out.push_str(&f.repr()?.to_cow()?);
    } else if let Ok(d) = obj.cast_exact::<PyDict>() {
        out.push('{');
        let mut first = true;
        for (k, v) in d.iter() {
            if !first {
                out.push(',');
            }
            first = false;
            if let Ok(ks) = k.cast_exact::<PyString>() {
                write_str(&ks.to_cow()?, out);
            } else {
                // json.dumps turns int, float, bool and None keys into strings.
                let text = dumps_fallback(&k)?;
                if k.cast::<PyString>().is_ok() {
                    out.push_str(&text);
                } else {
                    write_str(text.trim_matches('"'), out);
                }
            }
            out.push(':');
            write(&v, out, depth + 1)?;
        }
        out.push('}');
    } else if let Ok(l) = obj.cast_exact::<PyList>() {
        out.push('[');
        for (n, v) in l.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            write(&v, out, depth + 1)?;
        }
        out.push(']');
    } else if let Ok(t) = obj.cast_exact::<PyTuple>() {
        out.push('[');
        for (n, v) in t.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            write(&v, out, depth + 1)?;
        }
        out.push(']');
    } else {
        out.push_str(&dumps_fallback(obj)?);
    }
    Ok(())
}

/// `json.dumps(obj)`, for the types the fast path does not know (subclasses of
/// the built-in types, and anything else, which it refuses with a `TypeError`).
fn dumps_fallback(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    let json = obj.py().import("json")?;
    json.call_method1("dumps", (obj,))?.extract()
}
