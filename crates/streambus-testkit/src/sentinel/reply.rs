//! Asking a sentinel or a server: one command on a fresh connection, its
//! reply with arrays kept (the crate's `read_reply` reads scalars only).

use std::collections::HashMap;
use std::io::{self, BufRead, Write};

use crate::resp::{read_reply, resp_command};
use crate::RespConn;

/// A reply, arrays kept as such (the crate's `read_reply` reads scalars only).
pub(super) enum Reply {
    Text(String),
    Array(Vec<Reply>),
}

fn read_any(reader: &mut impl BufRead) -> io::Result<Reply> {
    if reader.fill_buf()?.first() != Some(&b'*') {
        return read_reply(reader).map(Reply::Text);
    }
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let n: i64 = line[1..]
        .trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, line.clone()))?;
    let mut items = Vec::new();
    for _ in 0..n.max(0) {
        items.push(read_any(reader)?);
    }
    Ok(Reply::Array(items))
}

/// One command on a fresh connection to `port` (after `AUTH` with
/// `password`), its reply with arrays.
pub(super) fn call_as(port: u16, password: Option<&str>, args: &[&str]) -> Result<Reply, String> {
    let mut conn = RespConn::connect(port)?;
    if let Some(pass) = password {
        let reply = conn.call(&["AUTH", "default", pass])?;
        if reply != "+OK" {
            return Err(format!("AUTH: {reply}"));
        }
    }
    let io_err = |e: io::Error| format!("i/o: {e}");
    conn.writer.write_all(&resp_command(args)).map_err(io_err)?;
    read_any(&mut conn.reader).map_err(io_err)
}

/// A `SENTINEL REPLICAS`/`SENTINELS` reply: one map per instance.
pub(super) fn sentinel_table(
    port: u16,
    password: Option<&str>,
    args: &[&str],
) -> Result<Vec<HashMap<String, String>>, String> {
    let Reply::Array(rows) = call_as(port, password, args)? else {
        return Err(format!("{args:?} on {port}: not an array"));
    };
    Ok(rows
        .into_iter()
        .filter_map(|row| match row {
            Reply::Array(kv) => {
                let texts: Vec<String> = kv
                    .into_iter()
                    .filter_map(|r| match r {
                        Reply::Text(t) => Some(t),
                        Reply::Array(_) => None,
                    })
                    .collect();
                Some(
                    texts
                        .chunks(2)
                        .filter(|c| c.len() == 2)
                        .map(|c| (c[0].clone(), c[1].clone()))
                        .collect(),
                )
            }
            Reply::Text(_) => None,
        })
        .collect())
}

/// `INFO replication` of a primary or replica.
pub(super) fn replication(port: u16, password: Option<&str>) -> Result<String, String> {
    let reply = call_as(port, password, &["INFO", "replication"])?;
    match reply {
        Reply::Text(t) if !t.starts_with('-') => Ok(t),
        Reply::Text(t) => Err(t),
        Reply::Array(_) => Err("INFO: an array".into()),
    }
}

/// The value of `key` in an `INFO` reply.
pub(super) fn field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_keep_their_arrays() {
        let mut input: &[u8] = b"*2\r\n*2\r\n$4\r\nname\r\n$1\r\na\r\n$-1\r\n";
        let Reply::Array(items) = read_any(&mut input).unwrap() else {
            panic!("not an array");
        };
        assert!(matches!(&items[0], Reply::Array(kv) if kv.len() == 2));
        assert!(matches!(&items[1], Reply::Text(t) if t.is_empty()));
    }
}
