//! A measurement, not a product: would a leaner sender than redis-rs's
//! pipeline path make `publish_batch` faster? (issue 15: "measure a leaner
//! encoder or sender and decide with figures"; BENCHMARKS.md has the figures
//! and the decision.)
//!
//! Both sides publish the same messages as `streambus bench`'s publish_batch
//! row (the library's `Message::json_text` of the bench payload: the same
//! envelope, UUID and timestamp work per message) with the same
//! `XADD S MAXLEN ~ 100000 * fields…`, in calls of `PER_CALL` messages, each
//! call waiting for its replies, `PIPELINE` commands per pipeline, `IN_FLIGHT`
//! pipelines under way. The library's side is `Producer::publish_batch`. The
//! lean side encodes RESP by hand into one reused buffer, writes it on a plain
//! `TcpStream` and scans the replies by hand into `EntryId`s. With `CONNS=N`
//! both run N callers at once: the lean ones each on its own connection, the
//! library's sharing one producer (and so its one connection).
//!
//!     cargo run --release -p streambus-bench --example lean_xadd -- PORT [MESSAGES]
//!     CONNS=2 PER_CALL=1000 PIPELINE=128 IN_FLIGHT=8 target/release/examples/lean_xadd PORT
//!
//! against a `redis-server` of your own on 127.0.0.1:PORT without a password
//! (never a shared one: it writes 2 × MESSAGES entries into fresh streams).

use std::time::Instant;

use streambus::{Client, EntryId, Message, Producer, ProducerOptions, Retention};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const MAXLEN: u64 = 100_000;

/// The shape of the publishing, from the environment.
#[derive(Clone, Copy)]
struct Shape {
    per_call: usize,
    pipeline: usize,
    in_flight: usize,
    conns: usize,
}

impl Shape {
    fn from_env() -> Shape {
        let knob = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&n: &usize| n > 0)
                .unwrap_or(default)
        };
        Shape {
            per_call: knob("PER_CALL", 1000),
            pipeline: knob("PIPELINE", 128),
            in_flight: knob("IN_FLIGHT", 8),
            conns: knob("CONNS", 1),
        }
    }
}

/// The bench's messages `from..from + n`.
fn messages(from: u64, n: usize) -> Result<Vec<Message>> {
    let now_ns = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    };
    (from..from + n as u64)
        .map(|seq| {
            Ok(Message::json_text(streambus_bench::payload::data(
                now_ns(),
                seq,
            ))?)
        })
        .collect()
}

fn push_len(out: &mut Vec<u8>, prefix: u8, n: usize) {
    out.push(prefix);
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    push_len(out, b'$', b.len());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

fn encode_xadd(out: &mut Vec<u8>, stream: &str, m: &Message) {
    let fields = m.to_fields();
    push_len(out, b'*', 6 + 2 * fields.len());
    for arg in [&b"XADD"[..], stream.as_bytes(), b"MAXLEN", b"~"] {
        bulk(out, arg);
    }
    bulk(out, MAXLEN.to_string().as_bytes());
    bulk(out, b"*");
    for (k, v) in fields.iter() {
        bulk(out, k.as_bytes());
        bulk(out, v);
    }
}

/// One XADD reply: the new entry's id, or the error Redis sent.
async fn read_id(r: &mut BufReader<OwnedReadHalf>, line: &mut Vec<u8>) -> Result<EntryId> {
    line.clear();
    loop {
        match r.read_u8().await? {
            b'\n' => break,
            b => line.push(b),
        }
    }
    let text = std::str::from_utf8(line)?.trim_end();
    let Some(len) = text.strip_prefix('$') else {
        return Err(format!("XADD reply: {text}").into());
    };
    let mut id = vec![0; len.parse::<usize>()? + 2];
    r.read_exact(&mut id).await?;
    Ok(EntryId::from_bytes(&id[..id.len() - 2])?)
}

/// One caller on its own connection, `total` messages.
async fn lean_caller(port: u16, stream: String, total: u64, shape: Shape) -> Result<()> {
    let sock = TcpStream::connect(("127.0.0.1", port)).await?;
    sock.set_nodelay(true)?;
    let (rd, mut wr) = sock.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let mut buf = Vec::with_capacity(shape.pipeline * 400);
    let mut line = Vec::with_capacity(64);
    let mut ids = Vec::with_capacity(shape.per_call);
    let mut seq = 0;
    while seq < total {
        let n = shape.per_call.min((total - seq) as usize);
        let batch = messages(seq, n)?;
        let chunks: Vec<&[Message]> = batch.chunks(shape.pipeline).collect();
        ids.clear();
        let (mut sent, mut answered) = (0, 0);
        while answered < chunks.len() {
            while sent < chunks.len() && sent - answered < shape.in_flight {
                buf.clear();
                for m in chunks[sent] {
                    encode_xadd(&mut buf, &stream, m);
                }
                wr.write_all(&buf).await?;
                sent += 1;
            }
            for _ in 0..chunks[answered].len() {
                ids.push(read_id(&mut rd, &mut line).await?);
            }
            answered += 1;
        }
        seq += n as u64;
    }
    Ok(())
}

async fn lean(port: u16, stream: &str, total: u64, shape: Shape) -> Result<f64> {
    let started = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    let each = total / shape.conns as u64;
    for _ in 0..shape.conns {
        let stream = stream.to_owned();
        callers.spawn(async move {
            lean_caller(port, stream, each, shape)
                .await
                .map_err(|e| e.to_string())
        });
    }
    while let Some(done) = callers.join_next().await {
        done??;
    }
    Ok((each * shape.conns as u64) as f64 / started.elapsed().as_secs_f64())
}

async fn library(port: u16, stream: &str, total: u64, shape: Shape) -> Result<f64> {
    let client = Client::open(&format!("redis://127.0.0.1:{port}"))?;
    let options = ProducerOptions {
        retention: Retention::MaxLen {
            len: MAXLEN,
            exact: false,
        },
        batch_pipeline: shape.pipeline,
        pipelines_in_flight: shape.in_flight,
        ..Default::default()
    };
    let producer = Producer::new(&client, options).await?;
    // As many callers as the lean side has connections, sharing the
    // producer (and its one connection).
    let started = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    let each = total / shape.conns as u64;
    for _ in 0..shape.conns {
        let (producer, stream) = (producer.clone(), stream.to_owned());
        callers.spawn(async move {
            let mut seq = 0;
            while seq < each {
                let n = shape.per_call.min((each - seq) as usize);
                let batch = messages(seq, n).map_err(|e| e.to_string())?;
                producer
                    .publish_batch(&stream, batch)
                    .await
                    .map_err(|e| e.to_string())?;
                seq += n as u64;
            }
            Ok::<_, String>(())
        });
    }
    while let Some(done) = callers.join_next().await {
        done??;
    }
    Ok((each * shape.conns as u64) as f64 / started.elapsed().as_secs_f64())
}

/// The runtime of the `streambus` binary and of the bench: two threads.
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .ok_or("usage: lean_xadd PORT [MESSAGES]")?
        .parse()?;
    let total: u64 = args.next().map_or(Ok(300_000), |s| s.parse())?;
    let shape = Shape::from_env();
    let tag = std::process::id();
    let lean_rate = lean(port, &format!("lean:{tag}"), total, shape).await?;
    let lib_rate = library(port, &format!("lib:{tag}"), total, shape).await?;
    println!(
        "{} per call, {} per pipeline, {} in flight; lean sender on {} connection(s): {lean_rate:.0} msg/s; library publish_batch ({} caller(s), one connection): {lib_rate:.0} msg/s; lean/library {:.2}",
        shape.per_call,
        shape.pipeline,
        shape.in_flight,
        shape.conns,
        shape.conns,
        lean_rate / lib_rate
    );
    Ok(())
}
