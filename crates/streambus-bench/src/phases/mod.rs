//! The measurements, run in a fixed order by [`run_all`]: one file per kind of
//! phase, and here what they share.
//!
//! Each round of [`measure`] runs, one after the other, the two redis-benchmark
//! [`reference`](mod@reference)s (`-c 1` and `-c 50`), the library and CLI
//! [`publish`] phases, the [`consume`] phases (with the worker's memory in its
//! own process, [`memory`]) and the `streambus consume` phases
//! ([`cli_consume`]); the rounds' medians are the throughput rows. Then come the
//! [`latency`] phases, and last, when asked for, the cluster comparison
//! ([`scaling`]).
//!
//! Every phase writes only keys made by [`Ctx::key`], under the run's random
//! prefix; they are deleted after each round and at the end.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use streambus::{Client, Connection, Message, Producer};
use tokio::task::JoinSet;

use crate::payload::{self, now_ns};
use crate::render::fmt_rate;
use crate::server::EmbeddedServer;
use crate::sys::{self, secs};
use crate::{BenchOptions, BenchReport, Error, Latency, Result, Throughput};

mod cli_consume;
mod consume;
mod latency;
mod memory;
mod peers;
mod publish;
mod reference;
mod replicas;
mod scaling;

/// How often long phases report progress.
const TICK: Duration = Duration::from_secs(1);

/// What every phase is given: the options, the Redis, and where its keys,
/// notes and progress lines go.
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
        Ok(_) if ctx.opts.cluster_compare || ctx.opts.cluster_only => {
            scaling::scaling(&mut ctx).await
        }
        _ => Ok(Vec::new()),
    };
    // Leave nothing behind on a Redis that is not ours (on the private one too,
    // though it goes away anyway).
    drop_keys(&mut ctx).await;
    drop(server);
    let measured = measured?;
    let scaling = scaling?;
    let mut report = BenchReport {
        date,
        machine,
        redis: shown,
        redis_version,
        reference: measured.reference,
        saturation_reference: measured.saturation,
        throughput: measured.throughput,
        latency: measured.latency,
        targets: Vec::new(),
        notes: ctx.notes,
        scaling,
    };
    report.targets = crate::render::targets(&report);
    Ok(report)
}

/// What [`measure`] gives the report.
#[derive(Default)]
struct Measured {
    /// redis-benchmark `-c 1 -P 64`: the 1.0 of `ratio`.
    reference: Option<Throughput>,
    /// redis-benchmark `-c 50 -P 64`: the 1.0 of `ratio_saturation`.
    saturation: Option<Throughput>,
    throughput: Vec<Throughput>,
    latency: Vec<Latency>,
}

/// The phase list: the rounds of the references and the throughput phases,
/// then the latency phases.
async fn measure(ctx: &mut Ctx<'_>) -> Result<Measured> {
    if ctx.opts.cluster_only {
        return Ok(Measured::default());
    }
    let rounds = ctx.opts.rounds.max(1);
    let mut references = Vec::new();
    let mut saturations = Vec::new();
    let mut measured: Vec<Vec<Throughput>> = Vec::new();
    for round in 1..=rounds {
        if rounds > 1 {
            ctx.say(&format!("round {round} of {rounds}"));
        }
        let mut rows = Vec::new();
        if let Some(r) = reference::reference(ctx, reference::ONE).await {
            references.push(r);
            // Not tried when the first failed: the same cause, a second note.
            if let Some(r) = reference::reference(ctx, reference::SATURATION).await {
                saturations.push(r);
            }
        }
        rows.push(publish::publish_concurrent(ctx).await?);
        rows.push(publish::publish_batches(ctx).await?);
        rows.push(publish::publish_batches_two(ctx).await?);
        rows.extend(replicas::min_replicas(ctx).await?);
        rows.extend(publish::cli_publish(ctx).await?);
        rows.extend(consume::consume(ctx).await?);
        rows.extend(cli_consume::cli_consume(ctx).await?);
        rows.extend(peers::peers(ctx).await?);
        // Keys of a round are not needed by the next: drop them now, so the
        // server's memory stays that of one round.
        drop_keys(ctx).await;
        measured.push(rows);
    }
    let mut reference = median(references);
    let mut saturation = median(saturations);
    let base = reference.as_ref().map(|r| r.rate);
    let top = saturation.as_ref().map(|r| r.rate);
    let with_ratios = |mut t: Throughput| {
        t.ratio = base.map(|b| t.rate / b);
        t.ratio_saturation = top.map(|s| t.rate / s);
        t
    };
    reference = reference.map(with_ratios);
    saturation = saturation.map(with_ratios);
    let mut throughput = Vec::new();
    for i in 0..measured[0].len() {
        let runs = measured.iter().filter_map(|r| r.get(i).cloned()).collect();
        if let Some(t) = median(runs) {
            throughput.push(with_ratios(t));
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
        latency.push(latency::latency_phase(ctx, Some(rate)).await?);
    }
    if ctx.opts.saturation {
        latency.push(latency::latency_phase(ctx, None).await?);
    }
    Ok(Measured {
        reference,
        saturation,
        throughput,
        latency,
    })
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

async fn producer(ctx: &Ctx<'_>) -> streambus::Result<Producer> {
    Producer::new(&ctx.client, ctx.opts.producer.clone()).await
}

/// Runs `python -c code` with the bench's Python: `Err` says why it did not
/// succeed (the phase that needs it is then skipped with a note).
async fn python_check(ctx: &Ctx<'_>, code: &str) -> std::result::Result<(), String> {
    let status = tokio::process::Command::new(&ctx.opts.python_bin)
        .args(["-c", code])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("`{code}` exits with {s}")),
        Err(e) => Err(e.to_string()),
    }
}

/// How many entries `group` has pending on `stream`.
async fn pending(ctx: &Ctx<'_>, stream: &str, group: &str) -> Result<u64> {
    let mut conn = ctx.client.connect().await?;
    let (pending, _, _, _): (u64, redis::Value, redis::Value, redis::Value) =
        redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .query_async(&mut conn)
            .await?;
    Ok(pending)
}

/// Fills a stream with exactly `n` messages (not timed), for a consume phase.
async fn fill(ctx: &mut Ctx<'_>, name: &str, n: u64) -> Result<String> {
    let stream = ctx.key(name);
    ctx.say(&format!("  filling {name} with {n} messages"));
    let producer = producer(ctx).await?;
    let mut seq = 0;
    while seq < n {
        let end = (seq + 1000).min(n);
        let messages = messages_for(seq..end)?;
        producer.publish_batch(&stream, messages).await?;
        seq = end;
    }
    Ok(stream)
}

/// The reference payload as a message, stamped with its send time now.
fn message(seq: u64) -> Result<Message> {
    Ok(Message::json_text(payload::data(now_ns(), seq))?)
}

/// The messages of sequence numbers `seqs`, for one `publish_batch` call.
fn messages_for(seqs: Range<u64>) -> Result<Vec<Message>> {
    seqs.map(message).collect()
}

/// A throughput row of one run (and its progress line).
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
        ratio_saturation: None,
        peak_rss_bytes,
        rss_note: peak_rss_bytes.map(|_| rss_note.to_owned()),
    }
}

/// Waits for every publisher task, reporting `counter` (out of `total`, or
/// alone when `total` is `u64::MAX`) each [`TICK`]; the first failure ends it.
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
