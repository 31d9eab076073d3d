//! Publish throughput: [`streambus::Producer::publish`] from many concurrent
//! callers (one message per call), [`streambus::Producer::publish_batch`] one
//! call at a time, and `streambus publish` with JSON lines on stdin (a child
//! process fed through a pipe, its peak RSS polled from `/proc` until it exits).
//!
//! Each phase times the publishing alone, from the first call to the last
//! reply, into a fresh stream trimmed with `MAXLEN ~ maxlen`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::{join_all, message, messages_for, producer, throughput_row, Ctx, TICK};
use crate::payload;
use crate::sys;
use crate::{Error, Result, Throughput};

/// Many tasks calling `publish` at once, one message per call.
pub(super) async fn publish_concurrent(ctx: &mut Ctx<'_>) -> Result<Throughput> {
    publish_concurrent_as(ctx, "publish", "").await
}

/// [`publish_concurrent`] as row `key`, its name ending with `what` (for the
/// same phase with other producer options).
pub(super) async fn publish_concurrent_as(
    ctx: &mut Ctx<'_>,
    key: &str,
    what: &str,
) -> Result<Throughput> {
    let stream = ctx.key(key);
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
        key,
        format!("publish, {callers} concurrent callers (library){what}"),
        total,
        elapsed,
        rss_reset.then(|| sys::peak_rss(None)).flatten(),
        "bench process",
    ))
}

/// `publish_batch` with `batch_size` messages per call, one call at a time.
pub(super) async fn publish_batches(ctx: &mut Ctx<'_>) -> Result<Throughput> {
    publish_batches_as(ctx, "publish_batch", "").await
}

/// [`publish_batches`] from two callers at once sharing the producer (and its
/// one connection), each one call at a time: one caller waits for each call's
/// replies before it builds the next call's messages, so Redis idles in
/// between; a second caller fills those gaps (examples/lean_xadd.rs measures
/// the same against a hand-written sender).
pub(super) async fn publish_batches_two(ctx: &mut Ctx<'_>) -> Result<Throughput> {
    publish_batches_from(ctx, "publish_batch_2", ", 2 callers", 2).await
}

/// [`publish_batches`] as row `key`, its name ending with `what`.
pub(super) async fn publish_batches_as(
    ctx: &mut Ctx<'_>,
    key: &str,
    what: &str,
) -> Result<Throughput> {
    publish_batches_from(ctx, key, what, 1).await
}

/// `callers` tasks each calling `publish_batch` one call at a time, taking
/// the next call's sequence numbers from a shared counter.
async fn publish_batches_from(
    ctx: &mut Ctx<'_>,
    key: &str,
    what: &str,
    callers: usize,
) -> Result<Throughput> {
    let stream = ctx.key(key);
    let total = ctx.opts.publish_messages;
    let batch = ctx.opts.batch_size.max(1) as u64;
    ctx.say(&format!(
        "publish_batch (library): {total} messages, {batch} per call, {callers} caller(s)"
    ));
    let producer = producer(ctx).await?;
    let next = Arc::new(AtomicU64::new(0));
    let rss_reset = sys::reset_peak_rss();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..callers.max(1) {
        let (p, next, stream) = (producer.clone(), next.clone(), stream.clone());
        tasks.spawn(async move {
            loop {
                let seq = next.fetch_add(batch, Ordering::Relaxed);
                if seq >= total {
                    return Ok::<_, Error>(());
                }
                let messages = messages_for(seq..(seq + batch).min(total))?;
                p.publish_batch(&stream, messages).await?;
            }
        });
    }
    join_all(ctx, &mut tasks, &next, total).await?;
    let elapsed = started.elapsed();
    Ok(throughput_row(
        ctx,
        key,
        format!("publish_batch, {batch} per call (library){what}"),
        total,
        elapsed,
        rss_reset.then(|| sys::peak_rss(None)).flatten(),
        "bench process",
    ))
}

/// `streambus publish STREAM --maxlen N` with JSON lines on stdin.
pub(super) async fn cli_publish(ctx: &mut Ctx<'_>) -> Result<Option<Throughput>> {
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
