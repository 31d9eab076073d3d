//! End-to-end latency, publish call → handler start, of a worker at its
//! default settings: at each fixed rate of `latency_rates` (a pacing thread
//! starts one publishing task per message on time) and at saturation
//! (`publish_callers` publishers as fast as they can).
//!
//! Every message carries its send time ([`crate::payload`]); the handler
//! records now − then in an HDR histogram, except during the warm-up. A phase
//! ends when every published message was handled, or when the count stops
//! moving (at saturation `MAXLEN ~` trims entries before the worker reads them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use streambus::{CancellationToken, Delivery, Outcome, Producer, Worker, WorkerOptions};
use tokio::task::JoinSet;

use super::{join_all, message, producer, Ctx, TICK};
use crate::payload::{self, now_ns};
use crate::sys::secs;
use crate::{Error, Latency, Result};

/// End-to-end latency, publish call → handler, at a fixed rate or (`None`) at
/// saturation, with the worker at its default settings.
pub(super) async fn latency_phase(ctx: &mut Ctx<'_>, rate: Option<u64>) -> Result<Latency> {
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
