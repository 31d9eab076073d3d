//! Output to stdout: one JSON document (or id) per line, buffered, with explicit
//! flush points so a reader sees whole batches promptly and a closed pipe is
//! noticed at a known place.

use std::fmt::Display;
use std::io::{self, BufWriter, StdoutLock, Write};

use streambus::Entry;

/// A buffered line writer over stdout.
pub struct Lines {
    out: BufWriter<StdoutLock<'static>>,
}

impl Lines {
    pub fn stdout() -> Self {
        Lines {
            out: BufWriter::with_capacity(64 * 1024, io::stdout().lock()),
        }
    }

    /// `entry.to_json()`, compact, on one line.
    pub fn entry(&mut self, entry: &Entry) -> io::Result<()> {
        self.json(&entry.to_json())
    }

    /// Any serializable value as one compact JSON line.
    pub fn json<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> io::Result<()> {
        // `io::Error::from` hands back the original I/O error (a broken pipe stays one).
        serde_json::to_writer(&mut self.out, value).map_err(io::Error::from)?;
        self.out.write_all(b"\n")
    }

    /// A line of text.
    pub fn line(&mut self, text: impl Display) -> io::Result<()> {
        writeln!(self.out, "{text}")
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
