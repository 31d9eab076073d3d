//! A topology error and where it is: the byte offset in the `toml` crate's
//! error turned into a line and, through the spanned document, into the
//! dotted path of the field (`streams."aurora:alerts".retention.max_len`).

use std::fmt;

/// A topology error: the line (1-based), the field's path, the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologyError {
    pub line: Option<usize>,
    pub path: String,
    pub message: String,
}

impl TopologyError {
    pub(super) fn new(text: &str, e: &toml::de::Error) -> TopologyError {
        let offset = e.span().map(|s| s.start);
        TopologyError {
            line: offset.map(|o| line_of(text, o)),
            path: offset.map(|o| path_at(text, o)).unwrap_or_default(),
            message: e.message().trim().replace('\n', "; "),
        }
    }
}

impl TopologyError {
    /// An error found after the file was read (a check across fields, such
    /// as a group's lease settings), named by its key: `keys` is the path
    /// (`["streams", "s", "groups", "g", "lease_renew"]`), whose line is
    /// looked up in the spanned document.
    pub(super) fn at_key(text: &str, keys: &[&str], message: String) -> TopologyError {
        TopologyError {
            line: key_offset(text, keys).map(|o| line_of(text, o)),
            path: keys
                .iter()
                .map(|k| quote_key(k))
                .collect::<Vec<_>>()
                .join("."),
            message,
        }
    }
}

/// The byte offset of the key at `keys`, following tables; `None` when the
/// document or the key is not there.
fn key_offset(text: &str, keys: &[&str]) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let (last, parents) = keys.split_last()?;
    let mut table = doc.get_ref();
    for k in parents {
        let (_, v) = table.iter().find(|(key, _)| key.get_ref().as_ref() == *k)?;
        match v.get_ref() {
            toml::de::DeValue::Table(t) => table = t,
            _ => return None,
        }
    }
    table
        .iter()
        .find(|(key, _)| key.get_ref().as_ref() == *last)
        .map(|(key, _)| key.span().start)
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for TopologyError {}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The dotted path (`streams."aurora:alerts".retention.max_len`) of the
/// innermost key whose key or value contains `offset`; empty when the document
/// cannot be parsed or the offset is at the top level.
fn path_at(text: &str, offset: usize) -> String {
    let Ok(doc) = toml::de::DeTable::parse(text) else {
        return String::new();
    };
    let mut path = Vec::new();
    walk_table(doc.get_ref(), offset, &mut path);
    path.iter()
        .map(|k| quote_key(k))
        .collect::<Vec<_>>()
        .join(".")
}

fn walk_table(table: &toml::de::DeTable<'_>, offset: usize, path: &mut Vec<String>) {
    for (key, value) in table.iter() {
        let in_key = key.span().contains(&offset);
        let vspan = value.span();
        // An error at the end of a value (e.g. a missing field in an inline
        // table) points just past it.
        let in_value = vspan.start <= offset && offset <= vspan.end;
        if in_key || in_value {
            path.push(key.get_ref().to_string());
            if !in_key {
                walk_value(value.get_ref(), offset, path);
            }
            return;
        }
    }
    // A table written with `[a.b]` headers: the value spans only the header;
    // look for the key deeper down anyway.
    for (key, value) in table.iter() {
        if let toml::de::DeValue::Table(t) = value.get_ref() {
            let mut sub = vec![key.get_ref().to_string()];
            walk_table(t, offset, &mut sub);
            if sub.len() > 1 {
                path.extend(sub);
                return;
            }
        }
    }
}

fn walk_value(value: &toml::de::DeValue<'_>, offset: usize, path: &mut Vec<String>) {
    match value {
        toml::de::DeValue::Table(t) => walk_table(t, offset, path),
        toml::de::DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if item.span().contains(&offset) {
                    path.push(format!("[{i}]"));
                    walk_value(item.get_ref(), offset, path);
                    return;
                }
            }
        }
        _ => {}
    }
}

/// A key as TOML writes it: bare when it can be, else quoted.
fn quote_key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare || k.starts_with('[') {
        k.to_owned()
    } else {
        format!("{k:?}")
    }
}
