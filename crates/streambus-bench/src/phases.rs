//! The measurements, one function each, run in a fixed order by [`run_all`].

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use streambus::partition::{PartitionedWorker, Partitions};
use streambus::{
    CancellationToken, Client, Connection, Delivery, Message, Outcome, Producer, Worker,
    WorkerOptions, WorkerReport,
};
use tokio::task::JoinSet;

use crate::child::{self, ChildResult, ChildSpec};
use crate::payload::{self, now_ns};
use crate::server::{EmbeddedCluster, EmbeddedServer};
use crate::sys::{self, secs};
use crate::{BenchOptions, BenchReport, Error, Latency, Result, Throughput};

/// How often long phases report progress.
const TICK: Duration = Duration::from_secs(1);

struct Ctx<'a> {
    opts: BenchOptions,
    client: Client,
    url: String,
    /// `streambus-bench:<random>:`; every key of the run starts with it.
    prefix: String,
    /// Keys to delete at the end.
    keys: Vec<String>,
    notes: Vec<String>,
    progress: &'a dyn Fn(&str),
}

impl Ctx<'_> {
    fn key(&mut self, name: &str) -> String {
        let k = format!("{}{name}", self.prefix);
        self.keys.push(k.clone());
        k
    }

    fn say(&self, line: &str) {
        (self.progress)(line);
    }
}

pub(crate) async fn run_all(opts: BenchOptions, progress: &dyn Fn(&str)) -> Result<BenchReport> {
    let date = sys::now_utc();
    let machine = sys::machine();
    let (server, url) = match &opts.redis {
        Some(url) => (None, url.clone()),
        None => {
            progress("starting a private redis-server");
            let s = EmbeddedServer::start(&opts.redis_server_bin)?;
            let url = s.url();
            (Some(s), url)
        }
    };
    let client = Client::open(&url)?;
    let shown = match &server {
        Some(_) => format!("embedded redis-server at {url}"),
        None => client.display_url().to_owned(),
    };
    let mut conn = client.connect().await?;
    let redis_version = redis_version(&mut conn).await;
    let run_id = RandomState::new().hash_one(std::process::id()) & 0xffff_ffff;
    let mut ctx = Ctx {
        opts,
        client,
        url,
        prefix: format!("streambus-bench:{run_id:08x}:"),
        keys: Vec::new(),
        notes: Vec::new(),
        progress,
    };
    let measured = measure(&mut ctx).await;
    let scaling = match &measured {
        Ok(_) if ctx.opts.cluster_compare || ctx.opts.cluster_only => scaling(&mut ctx).await,
        _ => Ok(Vec::new()),
    };
    // Leave nothing behind on a Redis that is not ours (on the private one too,
    // though it goes away anyway).
    drop_keys(&mut ctx).await;
    drop(server);
    let (reference, throughput, latency) = measured?;
    let scaling = scaling?;
    let mut report = BenchReport {
        date,
        machine,
        redis: shown,
        redis_version,
        reference,
        throughput,
        latency,
        targets: Vec::new(),
        notes: ctx.notes,
        scaling,
    };
    report.targets = crate::render::targets(&report);
    Ok(report)
}

type Measured = (Option<Throughput>, Vec<Throughput>, Vec<Latency>);

async fn measure(ctx: &mut Ctx<'_>) -> Result<Measured> {
    if ctx.opts.cluster_only {
        return Ok((None, Vec::new(), Vec::new()));
    }
    let rounds = ctx.opts.rounds.max(1);
    let mut references = Vec::new();
    let mut measured: Vec<Vec<Throughput>> = Vec::new();
    for round in 1..=rounds {
        if rounds > 1 {
            ctx.say(&format!("round {round} of {rounds}"));
        }
        let mut rows = Vec::new();
        if let Some(r) = reference(ctx).await {
            references.push(r);
        }
        rows.push(publish_concurrent(ctx).await?);
        rows.push(publish_batches(ctx).await?);
        rows.extend(cli_publish(ctx).await?);
        rows.extend(consume(ctx).await?);
        // Keys of a round are not needed by the next: drop them now, so the
        // server's memory stays that of one round.
        drop_keys(ctx).await;
        measured.push(rows);
    }
    let reference = median(references);
    let base = reference.as_ref().map(|r| r.rate);
    let mut throughput = Vec::new();
    for i in 0..measured[0].len() {
        let runs = measured.iter().filter_map(|r| r.get(i).cloned()).collect();
        if let Some(mut t) = median(runs) {
            t.ratio = base.map(|b| t.rate / b);
            throughput.push(t);
        }
    }
    if rounds > 1 {
        ctx.notes.push(format!(
            "throughput: median of {rounds} rounds (each runs redis-benchmark and every phase once); peak RSS: the largest of the rounds"
        ));
    }

    let mut latency = Vec::new();
    let rates = ctx.opts.latency_rates.clone();
    for rate in rates {
        latency.push(latency_phase(ctx, Some(rate)).await?);
    }
    if ctx.opts.saturation {
        latency.push(latency_phase(ctx, None).await?);
    }
    Ok((reference, throughput, latency))
}

/// The run with the median rate (the lower one of the middle two for an even
/// count), carrying every run's rate and the largest peak RSS.
fn median(mut runs: Vec<Throughput>) -> Option<Throughput> {
    let rates: Vec<f64> = runs.iter().map(|t| t.rate).collect();
    let peak = runs.iter().filter_map(|t| t.peak_rss_bytes).max();
    runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let mid = runs.len().checked_sub(1)? / 2;
    let mut t = runs.swap_remove(mid);
    t.rounds = rates;
    t.peak_rss_bytes = peak;
    Some(t)
}

/// Deletes the keys written so far.
async fn drop_keys(ctx: &mut Ctx<'_>) {
    if ctx.keys.is_empty() {
        return;
    }
    let Ok(mut conn) = ctx.client.connect().await else {
        return;
    };
    let keys = std::mem::take(&mut ctx.keys);
    let _: std::result::Result<u64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
}

async fn redis_version(conn: &mut Connection) -> String {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_owned()
}

/// `redis-benchmark -c 1 -P 64 -n N XADD <key> MAXLEN ~ <maxlen> * <envelope>`.
async fn reference(ctx: &mut Ctx<'_>) -> Option<Throughput> {
    let bin = ctx.opts.redis_benchmark_bin.clone()?;
    let Some(url) = redis::parse_redis_url(&ctx.url).filter(|u| u.scheme() == "redis") else {
        ctx.notes.push(format!(
            "redis-benchmark skipped: it cannot reach {} (plain redis:// only); no ratios",
            ctx.client.display_url()
        ));
        return None;
    };
    let key = ctx.key("redis-benchmark");
    let n = ctx.opts.publish_messages;
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args(["-h", url.host_str().unwrap_or("127.0.0.1")])
        .args(["-p", &url.port().unwrap_or(6379).to_string()]);
    if let Some(password) = url.password() {
        cmd.args(["--user", url.username(), "-a", password]);
    }
    if let Ok(db) = url.path().trim_start_matches('/').parse::<u32>() {
        cmd.args(["--dbnum", &db.to_string()]);
    }
    cmd.args(["-c", "1", "-P", "64", "-n", &n.to_string(), "--csv"])
        .args([
            "XADD",
            &key,
            "MAXLEN",
            "~",
            &ctx.opts.maxlen.to_string(),
            "*",
        ]);
    for (k, v) in payload::reference_fields() {
        cmd.arg(k).arg(v);
    }
    ctx.say(&format!(
        "reference: redis-benchmark -c 1 -P 64 XADD, {n} messages"
    ));
    let out = match cmd.stdin(Stdio::null()).output().await {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            ctx.notes.push(format!(
                "redis-benchmark failed ({}): {}; no ratios",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            return None;
        }
        Err(e) => {
            ctx.notes
                .push(format!("redis-benchmark not run ({bin}: {e}); no ratios"));
            return None;
        }
    };
    // CSV: "test","rps","avg_latency_ms",... ; the test name holds the JSON
    // payload (commas, quotes), so take the numbers from the right.
    let text = String::from_utf8_lossy(&out.stdout);
    let rate = text.lines().last().and_then(|l| {
        let fields: Vec<&str> = l.rsplitn(8, ',').collect();
        fields.get(6)?.trim_matches('"').parse::<f64>().ok()
    });
    let Some(rate) = rate.filter(|r| *r > 0.0) else {
        ctx.notes
            .push(format!("cannot read redis-benchmark's output: {text:?}"));
        return None;
    };
    ctx.say(&format!("  {} msg/s", fmt_rate(rate)));
    Some(Throughput {
        key: "redis_benchmark".into(),
        name: "redis-benchmark -c 1 -P 64 XADD".into(),
        messages: n,
        seconds: n as f64 / rate,
        rate,
        rounds: vec![rate],
        ratio: Some(1.0),
        peak_rss_bytes: None,
        rss_note: None,
    })
}

async fn producer(ctx: &Ctx<'_>) -> streambus::Result<Producer> {
    Producer::new(&ctx.client, ctx.opts.producer.clone()).await
}

fn message(seq: u64) -> Result<Message> {
    Ok(Message::json_text(payload::data(now_ns(), seq))?)
}

/// Many tasks calling `publish` at once, one message per call.
async fn publish_concurrent(ctx: &mut Ctx<'_>) -> Result<Throughput> {
    let stream = ctx.key("publish");
    let total = ctx.opts.publish_messages;
    let callers = ctx.opts.publish_callers.max(1);
    ctx.say(&format!(
        "publish (library): {total} messages from {callers} concurrent callers"
    ));
    let producer = producer(ctx).await?;
    let next = Arc::new(AtomicU64::new(0));
    let rss_reset = sys::reset_peak_rss();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..callers {
        let (p, next, stream) = (producer.clone(), next.clone(), stream.clone());
        tasks.spawn(async move {
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= total {
                    return Ok::<_, Error>(());
                }
                p.publish(&stream, message(seq)?).await?;
            }
        });
    }
    join_all(ctx, &mut tasks, &next, total).await?;
    let elapsed = started.elapsed();
    Ok(throughput_row(
        ctx,
        "publish",
        format!("publish, {callers} concurrent callers (library)"),
        total,
        elapsed,
        rss_reset.then(|| sys::peak_rss(None)).flatten(),
        "bench process",
    ))
}

/// `publish_batch` with `batch_size` messages per call, one call at a time.
async fn publish_batches(ctx: &mut Ctx<'_>) -> Result<Throughput> {
    let stream = ctx.key("batch");
    let total = ctx.opts.publish_messages;
    let batch = ctx.opts.batch_size.max(1) as u64;
    ctx.say(&format!(
        "publish_batch (library): {total} messages, {batch} per call"
    ));
    let producer = producer(ctx).await?;
    let rss_reset = sys::reset_peak_rss();
    let started = Instant::now();
    let mut last_tick = Instant::now();
    let mut seq = 0;
    while seq < total {
        let end = (seq + batch).min(total);
        let messages = (seq..end).map(message).collect::<Result<Vec<_>>>()?;
        producer.publish_batch(&stream, messages).await?;
        seq = end;
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            ctx.say(&format!("  {seq}/{total}"));
        }
    }
    let elapsed = started.elapsed();
    Ok(throughput_row(
        ctx,
        "publish_batch",
        format!("publish_batch, {batch} per call (library)"),
        total,
        elapsed,
        rss_reset.then(|| sys::peak_rss(None)).flatten(),
        "bench process",
    ))
}

/// `streambus publish STREAM --maxlen N` with JSON lines on stdin.
async fn cli_publish(ctx: &mut Ctx<'_>) -> Result<Option<Throughput>> {
    let Some(bin) = ctx.opts.streambus_bin.clone() else {
        ctx.notes
            .push("`streambus publish` (stdin) skipped: no streambus binary given".into());
        return Ok(None);
    };
    let stream = ctx.key("cli");
    let total = ctx.opts.cli_messages;
    let line = format!("{}\n", payload::data(0, 0));
    ctx.say(&format!(
        "streambus publish: {total} JSON lines on stdin ({})",
        sys::mib(total * line.len() as u64)
    ));
    let stderr = tempfile::tempfile().map_err(|e| Error::new(format!("temporary file: {e}")))?;
    let stderr_copy = stderr
        .try_clone()
        .map_err(|e| Error::new(format!("temporary file: {e}")))?;
    let started = Instant::now();
    let mut child = Command::new(&bin)
        .args(["--redis", &ctx.url, "publish", &stream])
        .args(["--maxlen", &ctx.opts.maxlen.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(stderr_copy)
        .spawn()
        .map_err(|e| Error::new(format!("cannot run {}: {e}", bin.display())))?;
    let pid = child.id();
    let mut stdin = child.stdin.take();
    // A thread feeds stdin: writing repeated lines costs little next to the
    // publisher, and a pipe is what `... | streambus publish` gets.
    let feeder = std::thread::spawn(move || {
        let block = line.repeat(256);
        let Some(stdin) = stdin.as_mut() else { return };
        let mut left = total;
        while left > 0 {
            let n = left.min(256);
            // A failed write means the child died; its exit status says why.
            if stdin
                .write_all(&block.as_bytes()[..n as usize * line.len()])
                .is_err()
            {
                return;
            }
            left -= n;
        }
    });
    let mut peak = 0;
    let mut last_tick = Instant::now();
    let status = loop {
        // VmHWM only grows, so polling it until the exit misses at most the last
        // few milliseconds.
        if let Some(p) = sys::peak_rss(Some(pid)) {
            peak = peak.max(p);
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(Error::new(format!("waiting for streambus publish: {e}"))),
        }
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            ctx.say(&format!(
                "  running for {:.0} s, {}",
                started.elapsed().as_secs_f64(),
                sys::mib(peak)
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let elapsed = started.elapsed();
    let _ = feeder.join();
    if !status.success() {
        let mut text = String::new();
        let mut f = stderr;
        use std::io::{Read, Seek};
        let _ = f.rewind();
        let _ = f.read_to_string(&mut text);
        return Err(Error::new(format!(
            "streambus publish failed ({status}): {}",
            text.trim()
        )));
    }
    Ok(Some(throughput_row(
        ctx,
        "cli_publish",
        "streambus publish, JSON lines on stdin".into(),
        total,
        elapsed,
        (peak > 0).then_some(peak),
        "streambus publish process",
    )))
}

/// Fills a stream with exactly `n` messages (not timed).
async fn fill(ctx: &mut Ctx<'_>, name: &str, n: u64) -> Result<String> {
    let stream = ctx.key(name);
    ctx.say(&format!("  filling {name} with {n} messages"));
    let producer = producer(ctx).await?;
    let mut seq = 0;
    while seq < n {
        let end = (seq + 1000).min(n);
        let messages = (seq..end).map(message).collect::<Result<Vec<_>>>()?;
        producer.publish_batch(&stream, messages).await?;
        seq = end;
    }
    Ok(stream)
}

/// The worker with a no-op handler (read + ack) over a full stream.
async fn consume(ctx: &mut Ctx<'_>) -> Result<Vec<Throughput>> {
    let mut rows = Vec::new();
    let n_conc = ctx.opts.worker_concurrency.max(1);
    let mut many = ctx.opts.consume_messages;
    if many > ctx.opts.maxlen {
        ctx.notes.push(format!(
            "consume_messages lowered to {} (MAXLEN ~ trims the rest)",
            ctx.opts.maxlen
        ));
        many = ctx.opts.maxlen;
    }
    let single = ctx.opts.consume_messages_single.min(many);
    rows.push(plain_read_ack(ctx, many).await?);
    for (concurrency, n) in [(1, single), (n_conc, many)] {
        ctx.say(&format!(
            "worker, no-op handler, concurrency {concurrency}: {n} entries"
        ));
        let stream = fill(ctx, &format!("consume-{concurrency}"), n).await?;
        let options = WorkerOptions {
            concurrency,
            ..ctx.opts.worker.clone()
        };
        let rss_reset = sys::reset_peak_rss();
        let (elapsed, report) =
            child::consume_with(&ctx.client, &stream, "bench", options, n).await?;
        if report.acked < n {
            return Err(Error::new(format!(
                "the worker acknowledged {} of {n} entries",
                report.acked
            )));
        }
        let key = if concurrency == 1 {
            "worker_c1".to_owned()
        } else {
            "worker_cN".to_owned()
        };
        rows.push(throughput_row(
            ctx,
            &key,
            format!("worker read+ack, no-op handler, concurrency {concurrency}"),
            n,
            elapsed,
            rss_reset.then(|| sys::peak_rss(None)).flatten(),
            "bench process (upper bound)",
        ));
        if concurrency == n_conc {
            if let Some(row) = consume_in_child(ctx, &stream, n_conc, n).await? {
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

/// The plain loop of the engineering notes, without the library: one task,
/// `XREADGROUP COUNT 100` and the XACK of the previous batch in one pipeline.
/// No handler, no concurrency, no reclaim, no metrics: what the worker is
/// compared with (the "plain redis-rs read+ack" line), in the same run.
async fn plain_read_ack(ctx: &mut Ctx<'_>, n: u64) -> Result<Throughput> {
    const COUNT: usize = 100;
    ctx.say(&format!(
        "plain redis-rs read+ack loop, COUNT {COUNT}: {n} entries"
    ));
    let stream = fill(ctx, "consume-plain", n).await?;
    let mut conn = ctx.client.connect().await?;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("plain")
        .arg("0")
        .query_async(&mut conn)
        .await?;
    let started = Instant::now();
    let mut acks: Vec<Vec<u8>> = Vec::new();
    let mut done = 0u64;
    loop {
        let mut pipe = redis::pipe();
        if !acks.is_empty() {
            pipe.cmd("XACK")
                .arg(&stream)
                .arg("plain")
                .arg(&acks)
                .ignore();
        }
        pipe.cmd("XREADGROUP")
            .arg("GROUP")
            .arg("plain")
            .arg("c")
            .arg("COUNT")
            .arg(COUNT)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">");
        let (reply,): (redis::streams::StreamReadReply,) = pipe.query_async(&mut conn).await?;
        done += acks.len() as u64;
        acks.clear();
        for key in reply.keys {
            acks.extend(key.ids.into_iter().map(|e| e.id.into_bytes()));
        }
        if acks.is_empty() {
            break;
        }
    }
    let elapsed = started.elapsed();
    if done < n {
        return Err(Error::new(format!(
            "the plain loop acknowledged {done} of {n} entries"
        )));
    }
    Ok(throughput_row(
        ctx,
        "plain_read_ack",
        format!("plain redis-rs XREADGROUP COUNT {COUNT} + XACK (no library)"),
        n,
        elapsed,
        None,
        "",
    ))
}

/// The same worker run in a process of its own, for its memory alone.
async fn consume_in_child(
    ctx: &mut Ctx<'_>,
    stream: &str,
    concurrency: usize,
    n: u64,
) -> Result<Option<Throughput>> {
    let Some(exe) = ctx.opts.worker_exe.clone() else {
        ctx.notes.push(
            "worker memory measured in the bench process (no worker_exe given): an upper bound"
                .into(),
        );
        return Ok(None);
    };
    ctx.say(&format!(
        "worker in its own process, concurrency {concurrency}: {n} entries"
    ));
    let spec = ChildSpec {
        url: ctx.url.clone(),
        stream: stream.to_owned(),
        group: "child".into(),
        concurrency,
        messages: n,
    };
    let spec = serde_json::to_string(&spec).map_err(|e| Error::new(e.to_string()))?;
    let out = tokio::process::Command::new(&exe)
        .env(child::ENV, spec)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| Error::new(format!("cannot run {}: {e}", exe.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let result: ChildResult = match serde_json::from_str(text.trim()) {
        Ok(r) if out.status.success() => r,
        _ => {
            return Err(Error::new(format!(
                "the worker process failed ({}): {} {}",
                out.status,
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    };
    Ok(Some(throughput_row(
        ctx,
        "worker_cN_process",
        format!("worker read+ack, concurrency {concurrency}, own process"),
        result.messages,
        Duration::from_secs_f64(result.seconds),
        result.peak_rss_bytes,
        "worker process",
    )))
}

fn throughput_row(
    ctx: &Ctx<'_>,
    key: &str,
    name: String,
    messages: u64,
    elapsed: Duration,
    peak_rss_bytes: Option<u64>,
    rss_note: &str,
) -> Throughput {
    let rate = messages as f64 / secs(elapsed).max(1e-9);
    ctx.say(&format!("  {} msg/s", fmt_rate(rate)));
    Throughput {
        key: key.to_owned(),
        name,
        messages,
        seconds: secs(elapsed),
        rate,
        rounds: vec![rate],
        ratio: None,
        peak_rss_bytes,
        rss_note: peak_rss_bytes.map(|_| rss_note.to_owned()),
    }
}

async fn join_all(
    ctx: &Ctx<'_>,
    tasks: &mut JoinSet<Result<()>>,
    counter: &AtomicU64,
    total: u64,
) -> Result<()> {
    let mut tick = tokio::time::interval(TICK);
    tick.tick().await;
    loop {
        tokio::select! {
            r = tasks.join_next() => match r {
                None => return Ok(()),
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(Error::new(format!("publisher task: {e}"))),
            },
            _ = tick.tick() => {
                let done = counter.load(Ordering::Relaxed).min(total);
                // u64::MAX: no set total (publishers run for a time).
                if total == u64::MAX {
                    ctx.say(&format!("  {done} handled"));
                } else {
                    ctx.say(&format!("  {done}/{total}"));
                }
            }
        }
    }
}

/// End-to-end latency, publish call → handler, at a fixed rate or (`None`) at
/// saturation, with the worker at its default settings.
async fn latency_phase(ctx: &mut Ctx<'_>, rate: Option<u64>) -> Result<Latency> {
    let label = rate.map_or("saturation".to_owned(), |r| r.to_string());
    let stream = ctx.key(&format!("latency-{label}"));
    let duration = ctx.opts.latency_duration;
    ctx.say(&format!(
        "latency publish → handler at {}: {:.1} s",
        rate.map_or("saturation".to_owned(), |r| format!("{r} msg/s")),
        duration.as_secs_f64()
    ));
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1_000, 600_000_000_000, 3)
            .map_err(|e| Error::new(format!("histogram: {e}")))?,
    ));
    let handled = Arc::new(AtomicU64::new(0));
    let record_from = now_ns() + ctx.opts.latency_warmup.as_nanos() as u64;
    let handler = {
        let (hist, handled) = (hist.clone(), handled.clone());
        move |d: Delivery| {
            let now = now_ns();
            if let Some(t) = d.entry.fields.get("data").and_then(payload::sent_ns) {
                if t >= record_from {
                    let mut h = hist.lock().unwrap_or_else(|p| p.into_inner());
                    h.saturating_record(now.saturating_sub(t).max(1_000));
                }
            }
            handled.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Outcome::Ack)
        }
    };
    let options = WorkerOptions {
        concurrency: ctx.opts.worker_concurrency.max(1),
        ..ctx.opts.worker.clone()
    };
    let stop = CancellationToken::new();
    let _stop_on_exit = stop.clone().drop_guard();
    let worker = Worker::new(
        &ctx.client,
        &stream,
        "bench",
        WorkerOptions {
            consumer_name: Some("bench".into()),
            ..options
        },
    );
    let worker_task = tokio::spawn(worker.run(handler, stop.clone()));
    let producer = producer(ctx).await?;
    let published = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();

    let done = match rate {
        Some(rate) => {
            let total = (rate as f64 * duration.as_secs_f64()) as u64;
            let pacer = pace(
                producer,
                stream.clone(),
                rate,
                total,
                published.clone(),
                failed.clone(),
            );
            let done = wait_for(ctx, &handled, total, duration + Duration::from_secs(30)).await;
            let _ = pacer.join();
            done
        }
        None => {
            let deadline = Instant::now() + duration;
            let mut tasks = JoinSet::new();
            for _ in 0..ctx.opts.publish_callers.max(1) {
                let (p, stream, published) = (producer.clone(), stream.clone(), published.clone());
                tasks.spawn(async move {
                    while Instant::now() < deadline {
                        let seq = published.fetch_add(1, Ordering::Relaxed);
                        p.publish(&stream, message(seq)?).await?;
                    }
                    Ok::<_, Error>(())
                });
            }
            join_all(ctx, &mut tasks, &handled, u64::MAX).await?;
            let total = published.load(Ordering::Relaxed);
            let done = wait_for(ctx, &handled, total, Duration::from_secs(60)).await;
            let lost = total.saturating_sub(handled.load(Ordering::Relaxed));
            if lost > 0 {
                ctx.notes.push(format!("latency at saturation: {lost} of {total} entries were trimmed by MAXLEN ~ before the worker read them"));
            }
            done
        }
    };
    let elapsed = done.saturating_duration_since(started);
    stop.cancel();
    let _ = worker_task.await;
    let failures = failed.load(Ordering::Relaxed);
    if failures > 0 {
        ctx.notes
            .push(format!("latency {label}: {failures} publishes failed"));
    }
    let h = hist.lock().unwrap_or_else(|p| p.into_inner());
    let ms = |ns: u64| ns as f64 / 1e6;
    let row = Latency {
        key: format!("latency_{label}"),
        name: match rate {
            Some(r) => format!("publish → handler at {r} msg/s"),
            None => "publish → handler at saturation".to_owned(),
        },
        target_rate: rate.map(|r| r as f64),
        achieved_rate: handled.load(Ordering::Relaxed) as f64 / secs(elapsed).max(1e-9),
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    };
    ctx.say(&format!(
        "  p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        row.p50_ms, row.p99_ms, row.p999_ms, row.max_ms
    ));
    Ok(row)
}

/// Publishes `total` messages at `rate`/s from a thread of its own: tokio's
/// timers have millisecond resolution, too coarse for 20,000/s. Each message is
/// published by a task of its own, as independent callers would; its latency
/// counts from the moment that task makes the message.
fn pace(
    producer: Producer,
    stream: String,
    rate: u64,
    total: u64,
    published: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let runtime = tokio::runtime::Handle::current();
    let stream: Arc<str> = stream.into();
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0;
        while sent < total {
            let due = ((secs(start.elapsed()) * rate as f64) as u64 + 1).min(total);
            while sent < due {
                let (p, s, published, failed) = (
                    producer.clone(),
                    stream.clone(),
                    published.clone(),
                    failed.clone(),
                );
                let seq = sent;
                // Not joined: the phase waits for every message to be handled
                // (or counted as failed), which outlives these tasks.
                drop(runtime.spawn(async move {
                    let ok = match message(seq) {
                        Ok(m) => p.publish(&s, m).await.is_ok(),
                        Err(_) => false,
                    };
                    if ok {
                        published.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }));
                sent += 1;
            }
            let next = start + Duration::from_secs_f64(sent as f64 / rate as f64);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    })
}

/// Waits until `counter` reaches `total`, stops moving for a second (at
/// saturation `MAXLEN ~` trims entries the worker has not read yet: they never
/// come), or the deadline. Returns when it last moved.
async fn wait_for(ctx: &Ctx<'_>, counter: &AtomicU64, total: u64, limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    let mut last_tick = Instant::now();
    let mut last = (counter.load(Ordering::Relaxed), Instant::now());
    while last.0 < total && Instant::now() < deadline && last.1.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let now = counter.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            ctx.say(&format!("  {now}/{total}"));
        }
    }
    last.1
}

pub(crate) fn fmt_rate(r: f64) -> String {
    let n = r.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Where the cluster comparison publishes and consumes.
enum Dest {
    /// One stream key.
    Plain(String),
    /// A partitioned stream ([`streambus::partition`]).
    Parts(Partitions),
}

impl Dest {
    fn keys(&self) -> Vec<String> {
        match self {
            Dest::Plain(k) => vec![k.clone()],
            Dest::Parts(p) => p.keys().to_vec(),
        }
    }
}

/// Publish and consume throughput on one node (plain stream, then the same
/// partitioned stream as on the cluster) and on a private Redis Cluster of
/// `cluster_masters` masters. Each row's ratio is to the one-node plain row of
/// its kind.
async fn scaling(ctx: &mut Ctx<'_>) -> Result<Vec<Throughput>> {
    let n = ctx.opts.cluster_partitions.max(1);
    let masters = ctx.opts.cluster_masters.max(3);
    let single = ctx.client.clone();
    let mut rows = Vec::new();

    ctx.say("cluster comparison: 1 node, plain stream");
    let plain = Dest::Plain(ctx.key("scale-plain"));
    let (mut pub_1, mut con_1) =
        scale_run(ctx, &single, &plain, "1 node, 1 stream", "node").await?;
    let (base_pub, base_con) = (pub_1.rate, con_1.rate);
    pub_1.ratio = Some(1.0);
    con_1.ratio = Some(1.0);

    ctx.say(&format!("cluster comparison: 1 node, {n} partitions"));
    let parts = Partitions::new(&format!("{}scale-1node", ctx.prefix), n)?;
    for k in parts.keys() {
        ctx.keys.push(k.clone());
    }
    let (mut pub_p, mut con_p) = scale_run(
        ctx,
        &single,
        &Dest::Parts(parts),
        &format!("1 node, {n} partitions"),
        "node_partitions",
    )
    .await?;
    pub_p.ratio = Some(pub_p.rate / base_pub);
    con_p.ratio = Some(con_p.rate / base_con);

    ctx.say(&format!(
        "starting a private Redis Cluster of {masters} masters (no replicas)"
    ));
    let (server_bin, cli_bin) = (
        ctx.opts.redis_server_bin.clone(),
        ctx.opts.redis_cli_bin.clone(),
    );
    let cluster =
        tokio::task::spawn_blocking(move || EmbeddedCluster::start(&server_bin, &cli_bin, masters))
            .await
            .map_err(|e| Error::new(format!("cluster start: {e}")))??;
    let cluster_client = Client::open(&cluster.url())?;
    ctx.say(&format!(
        "cluster comparison: {masters} masters, {n} partitions"
    ));
    // A throw-away cluster: its keys go with it.
    let parts = Partitions::new("streambus-bench:scale-cluster", n)?;
    let (mut pub_c, mut con_c) = scale_run(
        ctx,
        &cluster_client,
        &Dest::Parts(parts),
        &format!("cluster of {masters} masters, {n} partitions"),
        "cluster",
    )
    .await?;
    pub_c.ratio = Some(pub_c.rate / base_pub);
    con_c.ratio = Some(con_c.rate / base_con);
    drop(cluster);

    rows.extend([pub_1, pub_p, pub_c, con_1, con_p, con_c]);
    Ok(rows)
}

/// One publish run (`cluster_messages`, 1000 per `publish_batch` call) and one
/// consume run (a worker per key, no-op handler, until every entry that
/// `MAXLEN ~` left is handled and acknowledged).
async fn scale_run(
    ctx: &mut Ctx<'_>,
    client: &Client,
    dest: &Dest,
    label: &str,
    tag: &str,
) -> Result<(Throughput, Throughput)> {
    let total = ctx.opts.cluster_messages;
    let batch = ctx.opts.batch_size.max(1) as u64;
    let keys = dest.keys();
    let producer = Producer::new(client, ctx.opts.producer.clone()).await?;
    let partitioned = match dest {
        Dest::Parts(p) => Some(producer.partitioned(p.clone())),
        Dest::Plain(_) => None,
    };
    let started = Instant::now();
    let mut seq = 0;
    while seq < total {
        let end = (seq + batch).min(total);
        let messages = (seq..end).map(message).collect::<Result<Vec<_>>>()?;
        match (&partitioned, dest) {
            (Some(p), _) => {
                p.publish_batch(messages).await?;
            }
            (None, Dest::Plain(k)) => {
                producer.publish_batch(k, messages).await?;
            }
            (None, Dest::Parts(_)) => unreachable!("partitioned producer made above"),
        }
        seq = end;
    }
    let publish = throughput_row(
        ctx,
        &format!("scale_publish_{tag}"),
        format!("publish_batch, {batch} per call: {label}"),
        total,
        started.elapsed(),
        None,
        "",
    );

    // What MAXLEN ~ left (all of it on partitions of fewer than maxlen each).
    let mut conn = client.connect().await?;
    let mut present = 0u64;
    for k in &keys {
        let len: u64 = redis::cmd("XLEN").arg(k).query_async(&mut conn).await?;
        present += len;
    }
    let handled = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let (handled, done) = (handled.clone(), done.clone());
        move |_d: Delivery| {
            if handled.fetch_add(1, Ordering::Relaxed) + 1 == present {
                done.notify_one();
            }
            std::future::ready(Outcome::Ack)
        }
    };
    let options = WorkerOptions {
        concurrency: ctx.opts.worker_concurrency.max(1),
        ..ctx.opts.worker.clone()
    };
    let stop = CancellationToken::new();
    let _stop_on_exit = stop.clone().drop_guard();
    let started = Instant::now();
    let task: tokio::task::JoinHandle<streambus::Result<WorkerReport>> = match dest {
        Dest::Plain(k) => tokio::spawn(
            Worker::new(
                client,
                k,
                "bench",
                WorkerOptions {
                    consumer_name: Some("bench".into()),
                    ..options
                },
            )
            .run(handler, stop.clone()),
        ),
        Dest::Parts(p) => tokio::spawn(
            PartitionedWorker::new(
                client,
                p.clone(),
                "bench",
                WorkerOptions {
                    consumer_name: Some("bench".into()),
                    ..options
                },
            )
            .run(handler, stop.clone()),
        ),
    };
    if tokio::time::timeout(Duration::from_secs(600), done.notified())
        .await
        .is_err()
    {
        return Err(Error::new("the worker did not finish within 10 minutes"));
    }
    // Handled is not done: wait until nothing is pending on any key.
    loop {
        let mut pending = 0;
        for k in &keys {
            let (n, _, _, _): (u64, redis::Value, redis::Value, redis::Value) =
                redis::cmd("XPENDING")
                    .arg(k)
                    .arg("bench")
                    .query_async(&mut conn)
                    .await?;
            pending += n;
        }
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    stop.cancel();
    let report = task
        .await
        .map_err(|e| Error::new(format!("worker task: {e}")))??;
    if report.acked < present {
        return Err(Error::new(format!(
            "{label}: the worker acknowledged {} of {present} entries",
            report.acked
        )));
    }
    let consume = throughput_row(
        ctx,
        &format!("scale_consume_{tag}"),
        format!("worker read+ack, no-op handler: {label}"),
        present,
        elapsed,
        None,
        "",
    );
    Ok((publish, consume))
}
