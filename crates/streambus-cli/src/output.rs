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

    /// `entry.to_json()`, compact, on one line (written without building
    /// the value: [`Entry::write_json`]).
    pub fn entry(&mut self, entry: &Entry) -> io::Result<()> {
        entry.write_json(&mut self.out, None)?;
        self.out.write_all(b"\n")
    }

    /// An entry of partition `index` of the logical stream `stream`, on one
    /// line (see [`partition_entry_json`]).
    pub fn partition_entry(&mut self, entry: &Entry, stream: &str, index: usize) -> io::Result<()> {
        entry.write_json(&mut self.out, Some((stream, index)))?;
        self.out.write_all(b"\n")
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

/// Rows as aligned columns (two spaces apart), without trailing blanks.
pub fn table<const N: usize>(rows: &[[String; N]]) -> Vec<String> {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect()
}

/// `text` on one line, cut to at most `max` characters (the last one `…` if cut).
pub fn cell(text: &str, max: usize) -> String {
    let line = text.replace(['\n', '\r', '\t'], " ");
    if line.chars().count() <= max {
        return line;
    }
    let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_cut_and_kept_on_one_line() {
        assert_eq!(cell("a\nb", 10), "a b");
        assert_eq!(cell("abcdef", 4), "abc…");
        assert_eq!(cell("abcd", 4), "abcd");
    }

    #[test]
    fn table_aligns_columns() {
        let rows = [
            ["A".to_owned(), "BB".to_owned(), "C".to_owned()],
            ["aaa".to_owned(), "b".to_owned(), String::new()],
        ];
        assert_eq!(table(&rows), ["A    BB  C", "aaa  b"]);
    }
}
