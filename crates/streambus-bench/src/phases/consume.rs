//! Consume throughput: a [`streambus::Worker`] with a no-op handler (read +
//! ack) over a stream filled beforehand, at concurrency 1 and N, and next to
//! it the plain redis-rs loop it is compared with (`XREADGROUP COUNT 100` and
//! the XACK of the previous batch in one pipeline, no library).
//!
//! Filling is not timed; a run is timed from the worker's start until nothing
//! is pending ([`crate::noop`]). At concurrency N the same worker is run again
//! in a process of its own for its memory ([`super::memory`]).

use std::time::Instant;

use streambus::WorkerOptions;

use super::{fill, memory, throughput_row, Ctx};
use crate::noop;
use crate::sys;
use crate::{Error, Result, Throughput};

/// The worker with a no-op handler (read + ack) over a full stream.
pub(super) async fn consume(ctx: &mut Ctx<'_>) -> Result<Vec<Throughput>> {
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
        let (elapsed, report) = noop::consume(&ctx.client, &stream, "bench", options, n).await?;
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
            if let Some(row) = memory::consume_in_child(ctx, &stream, n_conc, n).await? {
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
