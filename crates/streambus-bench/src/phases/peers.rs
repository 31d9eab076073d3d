//! The Python libraries people use for the same jobs, run against the same
//! server with the same entries, when `BenchOptions::python_bin` can import
//! them (a note says which could not, and how to install them):
//!
//! - redis-py: a pipeline of 1000 `XADD … MAXLEN ~ N` per `execute()`, each
//!   message the reference envelope (a fresh `uuid4` id, a timestamp, the
//!   same 200-byte `data`) built in Python: the peer of `publish_batch`.
//! - walrus: `ConsumerGroup.read(count=100)` and one `ack` of the batch's ids,
//!   the loop of its tutorial with the acks batched (in its favour).
//! - redis-streams (PyPI): its `Consumer` with `batch_size=100`,
//!   `get_items()` and `remove_item_from_consumer_group` for each item, as
//!   its documentation shows.
//!
//! Each script times itself, from after its imports and its connection to its
//! last reply (Python's start is not counted: in the peer's favour, where the
//! `streambus consume` rows count the process's whole life), and prints the
//! seconds and how many messages it moved. A consumer run must leave nothing
//! pending, and must have read exactly the entries put in the stream.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::{fill, pending, python_check, throughput_row, Ctx};
use crate::noop::LIMIT;
use crate::payload::{self, now_ns};
use crate::{Error, Result, Throughput};

/// The group the consumers read through (each stream is its own).
const GROUP: &str = "bench-peer";

/// Arguments: URL STREAM N MAXLEN DATA. Prints "SECONDS COUNT".
const REDIS_PY_PUBLISH: &str = r#"import sys, time, uuid
from datetime import datetime, timezone
import redis

url, stream, n, maxlen, data = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
r = redis.Redis.from_url(url)
r.ping()
ids = 0
started = time.perf_counter()
while ids < n:
    p = r.pipeline(transaction=False)
    for _ in range(min(1000, n - ids)):
        ts = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
        p.xadd(stream, {"id": str(uuid.uuid4()), "timestamp": ts, "data": data}, maxlen=maxlen, approximate=True)
    ids += len(p.execute())
print(time.perf_counter() - started, ids)
"#;

/// Arguments: URL STREAM GROUP N. Prints "SECONDS COUNT".
const WALRUS_CONSUME: &str = r#"import sys, time
from walrus import Database

url, stream, group, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
db = Database.from_url(url)
cg = db.consumer_group(group, {stream: "0"}, consumer="peer")
cg.create()
s = cg.streams[stream]
done = 0
started = time.perf_counter()
while done < n:
    for _, messages in cg.read(count=100, block=1000) or []:
        if messages:
            s.ack(*[i for i, _ in messages])
            done += len(messages)
print(time.perf_counter() - started, done)
"#;

/// Arguments: URL STREAM GROUP N. Prints "SECONDS COUNT".
const REDIS_STREAMS_CONSUME: &str = r#"import sys, time
from redis import Redis
from redis_streams.consumer import Consumer

url, stream, group, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
c = Consumer(redis_conn=Redis.from_url(url, decode_responses=True), stream=stream,
             consumer_group=group, consumer_id="peer", batch_size=100, max_wait_time_ms=1000)
done = 0
started = time.perf_counter()
while done < n:
    for item in c.get_items():
        c.remove_item_from_consumer_group(item_id=item.msgid)
        done += 1
print(time.perf_counter() - started, done)
"#;

/// One peer: what it needs importable, its script and its row.
struct Peer {
    module: &'static str,
    package: &'static str,
    script: &'static str,
    key: &'static str,
    name: &'static str,
}

const PUBLISHER: Peer = Peer {
    module: "redis",
    package: "redis",
    script: REDIS_PY_PUBLISH,
    key: "peer_redis_py_publish",
    name: "redis-py pipeline, 1000 XADD per execute (Python)",
};

const CONSUMERS: [Peer; 2] = [
    Peer {
        module: "walrus",
        package: "walrus",
        script: WALRUS_CONSUME,
        key: "peer_walrus_consume",
        name: "walrus ConsumerGroup.read(count=100) + ack (Python)",
    },
    Peer {
        module: "redis_streams.consumer",
        package: "redis-streams",
        script: REDIS_STREAMS_CONSUME,
        key: "peer_redis_streams_consume",
        name: "redis-streams Consumer, batch_size 100 (Python)",
    },
];

/// The peers' rows: those whose module the Python imports. A peer that fails
/// is a note, not the bench's failure.
pub(super) async fn peers(ctx: &mut Ctx<'_>) -> Result<Vec<Throughput>> {
    // redis-py speaks redis:// and rediss:// only.
    if !(ctx.url.starts_with("redis://") || ctx.url.starts_with("rediss://")) {
        ctx.notes
            .push("Python peers skipped: they need a redis:// or rediss:// URL".into());
        return Ok(Vec::new());
    }
    let dir = tempfile::tempdir().map_err(|e| Error::new(format!("temporary directory: {e}")))?;
    let mut rows = Vec::new();
    for peer in std::iter::once(&PUBLISHER).chain(&CONSUMERS) {
        if !imports(ctx, peer).await {
            continue;
        }
        let run = if peer.key == PUBLISHER.key {
            publisher(ctx, dir.path()).await
        } else {
            consumer(ctx, peer, dir.path()).await
        };
        match run {
            Ok(row) => rows.push(row),
            Err(e) => ctx
                .notes
                .push(format!("peer \"{}\" failed: {e}", peer.name)),
        }
    }
    Ok(rows)
}

/// redis-py publishing `publish_messages` envelopes.
async fn publisher(ctx: &mut Ctx<'_>, dir: &Path) -> Result<Throughput> {
    let n = ctx.opts.publish_messages;
    let stream = ctx.key("peer-publish");
    ctx.say(&format!("{}: {n} messages", PUBLISHER.name));
    let data = payload::data(now_ns(), 0);
    let args = [stream, n.to_string(), ctx.opts.maxlen.to_string(), data];
    let (elapsed, count) = run_peer(ctx, &PUBLISHER, dir, &args).await?;
    if count != n {
        return Err(Error::new(format!("published {count} messages, not {n}")));
    }
    Ok(row(ctx, &PUBLISHER, n, elapsed))
}

/// A consumer peer reading and acknowledging a stream filled beforehand.
async fn consumer(ctx: &mut Ctx<'_>, peer: &Peer, dir: &Path) -> Result<Throughput> {
    let n = ctx.opts.cli_consume_messages.min(ctx.opts.maxlen);
    ctx.say(&format!("{}: {n} entries", peer.name));
    let stream = fill(ctx, peer.key, n).await?;
    let args = [stream.clone(), GROUP.to_owned(), n.to_string()];
    let (elapsed, count) = run_peer(ctx, peer, dir, &args).await?;
    let pending = pending(ctx, &stream, GROUP).await?;
    if count != n || pending != 0 {
        return Err(Error::new(format!(
            "read {count} entries of {n}, and left {pending} pending"
        )));
    }
    Ok(row(ctx, peer, n, elapsed))
}

fn row(ctx: &Ctx<'_>, peer: &Peer, n: u64, elapsed: Duration) -> Throughput {
    throughput_row(ctx, peer.key, peer.name.to_owned(), n, elapsed, None, "")
}

/// Whether the Python imports the peer's module; a note says why not.
async fn imports(ctx: &mut Ctx<'_>, peer: &Peer) -> bool {
    let Err(why) = python_check(ctx, &format!("import {}", peer.module)).await else {
        return true;
    };
    let note = format!(
        "peer \"{}\" skipped: {}: {why} (pip install {}; `streambus bench --python` picks the Python)",
        peer.name, ctx.opts.python_bin, peer.package
    );
    // Once, not once per round.
    if !ctx.notes.contains(&note) {
        ctx.notes.push(note);
    }
    false
}

/// Runs the peer's script with `URL ARGS...`; its own timing and count.
async fn run_peer(
    ctx: &Ctx<'_>,
    peer: &Peer,
    dir: &Path,
    args: &[String],
) -> Result<(Duration, u64)> {
    let file = dir.join(format!("{}.py", peer.key));
    std::fs::write(&file, peer.script)
        .map_err(|e| Error::new(format!("cannot write {}: {e}", file.display())))?;
    let run = Command::new(&ctx.opts.python_bin)
        .arg(&file)
        .arg(&ctx.url)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(LIMIT, run)
        .await
        .map_err(|_| Error::new(format!("it did not finish within {} s", LIMIT.as_secs())))?
        .map_err(|e| Error::new(format!("cannot run {}: {e}", ctx.opts.python_bin)))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed = stdout.split_whitespace().collect::<Vec<_>>();
    match (out.status.success(), parsed.as_slice()) {
        (true, [secs, count]) => match (secs.parse::<f64>(), count.parse::<u64>()) {
            (Ok(s), Ok(c)) if s > 0.0 => Ok((Duration::from_secs_f64(s), c)),
            _ => Err(Error::new(format!(
                "{}: unexpected output {stdout:?}",
                peer.name
            ))),
        },
        _ => Err(Error::new(format!(
            "{} failed ({}): {}{}",
            peer.name,
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}
