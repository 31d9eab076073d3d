//! A measurement, not a product: how fast redis-rs turns a stream reply into
//! a `redis::Value`, on one thread, which is the ceiling of every read path
//! through one connection (worker, `consume`, the Python worker): a
//! connection's replies are parsed by its one driver task.
//!
//! Reads one `XRANGE STREAM - + COUNT N` reply as raw bytes from a
//! `redis-server` of your own, then parses (and drops) it repeatedly with
//! `redis::parse_redis_value`, and prints the time per entry:
//!
//!     cargo run --release -p streambus-bench --example parse_reply -- PORT STREAM [N]
//!
//! The stream should hold entries like the bench's (e.g. filled by
//! `streambus publish`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A command in RESP.
fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: parse_reply PORT STREAM [N]";
    let port: u16 = args.next().ok_or(usage)?.parse()?;
    let stream = args.next().ok_or(usage)?;
    let n: usize = args.next().map_or(Ok(1000), |s| s.parse())?;

    let mut sock = TcpStream::connect(("127.0.0.1", port))?;
    sock.write_all(&command(&[
        "XRANGE",
        &stream,
        "-",
        "+",
        "COUNT",
        &n.to_string(),
    ]))?;
    let mut reply = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let value = loop {
        let k = sock.read(&mut chunk)?;
        if k == 0 {
            return Err("the connection closed before the reply was complete".into());
        }
        reply.extend_from_slice(&chunk[..k]);
        if let Ok(v) = redis::parse_redis_value(&reply) {
            break v;
        }
    };
    let entries = match value {
        redis::Value::Array(items) => items.len(),
        other => return Err(format!("not an entry list: {other:?}").into()),
    };
    if entries == 0 {
        return Err(format!("stream {stream:?} is empty").into());
    }
    let rounds = (200_000 / entries).max(10);
    let started = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(redis::parse_redis_value(&reply)?);
    }
    let per_entry = started.elapsed().as_secs_f64() / (rounds * entries) as f64;
    println!(
        "{entries} entries, {} bytes per reply; parsed {rounds} times: {:.2} µs per entry ({:.0} entries/s on one thread)",
        reply.len(),
        per_entry * 1e6,
        1.0 / per_entry
    );
    Ok(())
}
