//! `streambus demo`: the reference's SOC pipeline in one process, on real Redis
//! traffic, with the dashboard; then the proof that nothing was lost.
//!
//! Sensors publish security and CPS alerts at `--rate`; five consumer groups
//! process them ([`pipeline`]); one alert-processor worker is killed mid-run
//! (zero grace: its in-flight alerts stay pending) and restarted under the same
//! name, which takes them back. Later the workers' network to Redis is cut:
//! they reach Redis through a [`FaultProxy`], which black-holes their
//! connections for a few seconds (sockets open, nothing comes back: the
//! hardest case) and then heals for new connections only, while the producers
//! and the dashboard keep their direct connection (so alerts queue up); the
//! demo says how long after the heal work resumed. At the end (duration over,
//! or Ctrl-C) the producers stop, the groups drain (lag and pending 0), the
//! workers stop gracefully, and the summary compares the alert ids published
//! with those seen by the final stages plus those in the dead-letter streams:
//! `lost` must be 0 (the exit status says so).
//!
//! Settings come from the topology file if given, else from the built-in one
//! (`streambus.example.toml`, embedded).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use streambus::admin::group::{create_group, list_groups};
use streambus::config::format_duration;
use streambus::{
    CancellationToken, Client, Connection, Delivery, Handler, Producer, ProducerOptions, Worker,
    WorkerOptions, WorkerReport,
};
use streambus_server::ServerConfig;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use self::pipeline::{lock, Ctx, Stats, ALERTS, CPS_ALERTS, STAGES};
use crate::cli::DemoArgs;
use crate::shutdown;
use crate::topology::Topology;

mod display;
mod network;
mod pipeline;
mod summary;

use self::display::{start_dashboard, Out, Progress};
use self::network::{cut_network, proxy_route};
use self::summary::{dead_letters, Summary};

/// Workers of the alert-processor group; the second one is killed mid-run.
const ALERT_WORKERS: usize = 3;
const KILLED: usize = 1;
/// Without --duration: when the worker is killed, and how long it stays down.
const KILL_AFTER: Duration = Duration::from_secs(10);
const MAX_DOWNTIME: Duration = Duration::from_secs(2);
/// Without --duration: when the workers' network is cut (after the kill and
/// the restart), and how long the cut lasts at most.
const CUT_AFTER: Duration = Duration::from_secs(20);
const MAX_CUT: Duration = Duration::from_secs(3);
/// How often the end of the cut's recovery is checked.
const RESUME_POLL: Duration = Duration::from_millis(20);
/// Share of the rate that is security alerts (the rest: CPS alerts), percent.
const SECURITY_SHARE: u64 = 75;
/// Producers publish what is due this often.
const PUBLISH_TICK: Duration = Duration::from_millis(20);
/// Progress redraw interval on a terminal; plain lines otherwise.
const REDRAW: Duration = Duration::from_millis(250);
const PLAIN_EVERY: Duration = Duration::from_secs(2);
/// How long the groups may take to drain at the end.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);
/// Dead letters read per XRANGE at the end.
const DLQ_PAGE: usize = 1000;

pub async fn run(client: &Client, args: DemoArgs, topology: Option<&Topology>) -> Result<()> {
    let builtin = Topology::example();
    let file = topology.unwrap_or(&builtin);
    let mut conn = client.connect().await.context("the demo needs Redis")?;

    // One producer per stream, trimming by the stream's retention.
    let mut producers = HashMap::new();
    for stage in STAGES {
        let retention = file
            .stream(stage.stream)
            .or_else(|| builtin.stream(stage.stream))
            .map(|s| s.retention)
            .unwrap_or_default();
        let options = ProducerOptions {
            retention: retention.retention,
            keep_unacked: retention.keep_unacked,
            ..Default::default()
        };
        producers.insert(stage.stream, Producer::new(client, options).await?);
    }
    let ctx = Arc::new(Ctx {
        run: run_id(),
        stats: Stats::default(),
        producers,
    });

    // Groups first, so that the first alerts are not missed whatever the start.
    let mut options = Vec::new();
    for stage in STAGES {
        let spec = file
            .group(stage.stream, stage.group)
            .or_else(|| builtin.group(stage.stream, stage.group))
            .cloned()
            .unwrap_or_default();
        let dlq_maxlen = file
            .stream(stage.stream)
            .or_else(|| builtin.stream(stage.stream))
            .and_then(|s| s.dead_letter.as_ref())
            .and_then(|d| d.max_len);
        let o = spec.apply(WorkerOptions {
            // Quick to notice the end of the run.
            block: Duration::from_millis(500),
            reclaim_interval: Duration::from_millis(250),
            shutdown_grace: Duration::from_secs(5),
            dead_letter_maxlen: dlq_maxlen,
            ..Default::default()
        });
        create_group(&mut conn, stage.stream, stage.group, o.start).await?;
        options.push(o);
    }

    let (signal, _signals) = shutdown::on_signal();
    let dashboard = if args.no_serve {
        None
    } else {
        let listen = super::settings::layered(
            args.listen,
            file.service.listen,
            ServerConfig::default().listen,
        );
        start_dashboard(client, listen, args.listen.is_some()).await?
    };

    let out = Out::new();
    out.say(format!(
        "demo: {} alerts/s into {ALERTS} and {CPS_ALERTS} ({}); Redis {}",
        args.rate,
        match args.duration {
            Some(d) => format!("for {}", format_duration(d)),
            None => "until Ctrl-C".to_owned(),
        },
        client.display_url()
    ));
    // The workers' own way to Redis, which is cut later; the producers and
    // the dashboard keep `client`.
    let (route, skipped) = match proxy_route(client).await {
        Ok(route) => {
            out.say(format!(
                "workers connect through a fault proxy on {}, to cut their network later",
                route.proxy.addr()
            ));
            (Some(route), None)
        }
        Err(why) => {
            out.say(format!("network cut skipped: {why}"));
            (None, Some(why))
        }
    };
    let worker_client = route.as_ref().map_or(client, |r| &r.client);

    // Workers.
    let stop_workers = CancellationToken::new();
    let mut workers: Vec<AbortOnDropHandle<streambus::Result<WorkerReport>>> = Vec::new();
    for (i, stage) in STAGES.iter().enumerate() {
        let count = if i == 0 { ALERT_WORKERS } else { 1 };
        for n in 0..count {
            if i == 0 && n == KILLED {
                continue;
            }
            workers.push(spawn_worker(
                worker_client,
                *stage,
                n,
                options[i].clone(),
                &ctx,
                stop_workers.clone(),
            ));
        }
    }
    // The worker to be killed has its own token, and no grace: killing it
    // leaves its in-flight alerts pending, as a crash would.
    let victim_stop = CancellationToken::new();
    let victim_options = WorkerOptions {
        shutdown_grace: Duration::ZERO,
        ..options[0].clone()
    };
    let mut victim = Victim::Running(spawn_worker(
        worker_client,
        STAGES[0],
        KILLED,
        victim_options,
        &ctx,
        victim_stop.clone(),
    ));
    let mut reports = Vec::new();
    // The killed worker comes back under its own name, with the others' options
    // (and grace), to take its pending alerts back.
    let restart_victim = || {
        spawn_worker(
            worker_client,
            STAGES[0],
            KILLED,
            options[0].clone(),
            &ctx,
            stop_workers.clone(),
        )
    };

    // Producers.
    let stop_producers = CancellationToken::new();
    let seq = Arc::new(AtomicU64::new(0));
    let security_rate = (u64::from(args.rate) * SECURITY_SHARE).div_ceil(100);
    let cps_rate = u64::from(args.rate).saturating_sub(security_rate);
    let producers = [
        spawn_producer(&ctx, &seq, ALERTS, security_rate, stop_producers.clone()),
        spawn_producer(&ctx, &seq, CPS_ALERTS, cps_rate, stop_producers.clone()),
    ];

    // Run: progress, the kill and the restart, the network cut, until the end.
    let started = Instant::now();
    let (kill_at, downtime) = match args.duration {
        Some(d) => (d / 3, (d / 6).min(MAX_DOWNTIME)),
        None => (KILL_AFTER, MAX_DOWNTIME),
    };
    // After the restart (at most at half the duration).
    let (cut_at, cut_length) = match args.duration {
        Some(d) => (d * 2 / 3, (d / 6).min(MAX_CUT)),
        None => (CUT_AFTER, MAX_CUT),
    };
    let run_over = CancellationToken::new();
    let cut = route.as_ref().map(|r| {
        AbortOnDropHandle::new(tokio::spawn(cut_network(
            r.proxy.clone(),
            started + cut_at,
            cut_length,
            ctx.clone(),
            out.clone(),
            run_over.clone(),
        )))
    });
    let end = args.duration.map(|d| started + d);
    let mut progress = Progress::new(&out, started);
    let mut tick = tokio::time::interval(REDRAW);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = signal.cancelled() => break,
        }
        let now = Instant::now();
        if end.is_some_and(|e| now >= e) {
            break;
        }
        victim = match victim {
            Victim::Running(handle) if now >= started + kill_at => {
                victim_stop.cancel();
                let report = handle.await.context("the killed worker")??;
                out.say(format!(
                    "killed worker {}-{} ({} alerts in flight left pending); restarting it in {}",
                    STAGES[0].group,
                    KILLED + 1,
                    report.unfinished,
                    format_duration(downtime)
                ));
                reports.push(report);
                Victim::Down {
                    restart_at: now + downtime,
                }
            }
            Victim::Down { restart_at } if now >= restart_at => {
                workers.push(restart_victim());
                out.say(format!(
                    "restarted worker {}-{} under the same name: it takes its pending alerts back",
                    STAGES[0].group,
                    KILLED + 1
                ));
                Victim::Restarted
            }
            other => other,
        };
        progress.update(&mut conn, &ctx.stats, None).await;
    }

    // The end: stop the producers, heal the network if it is still cut, bring
    // the killed worker back if it is still down (its pending alerts need an
    // owner), drain, stop the workers.
    stop_producers.cancel();
    run_over.cancel();
    for p in producers {
        p.await.context("a producer")?;
    }
    if let Victim::Down { .. } = victim {
        workers.push(restart_victim());
    }
    let published = ctx.stats.published();
    out.say(format!(
        "stopping: {published} alerts published; waiting for every group to drain (at most {})",
        format_duration(DRAIN_DEADLINE)
    ));
    let drained = drain(&mut conn, &ctx.stats, &mut progress).await;
    stop_workers.cancel();
    if let Victim::Running(handle) = victim {
        // Ended before the kill: drained, so its zero grace leaves nothing.
        victim_stop.cancel();
        workers.push(handle);
    }
    for w in workers {
        reports.push(w.await.context("a worker")??);
    }
    progress.finish();
    // Ends the cut's task if it still waits for an alert published during
    // the cut (there was none).
    drop(cut);
    if let Some(d) = dashboard {
        d.stop().await;
    }

    let dead = dead_letters(&mut conn, &ctx.run).await?;
    let summary = Summary::new(
        &ctx.stats,
        &reports,
        &dead,
        skipped.as_deref(),
        started.elapsed(),
        drained,
    );
    summary.print(args.json)?;
    if summary.lost > 0 {
        bail!(
            "{} published alerts were neither handled nor dead-lettered",
            summary.lost
        );
    }
    Ok(())
}

/// The alert-processor worker that is killed and restarted.
enum Victim {
    Running(AbortOnDropHandle<streambus::Result<WorkerReport>>),
    Down { restart_at: Instant },
    Restarted,
}

fn spawn_worker(
    client: &Client,
    stage: pipeline::Stage,
    n: usize,
    options: WorkerOptions,
    ctx: &Arc<Ctx>,
    stop: CancellationToken,
) -> AbortOnDropHandle<streambus::Result<WorkerReport>> {
    let worker = StartingWorker {
        client: client.clone(),
        stage,
        name: format!("{}-{}", stage.group, n + 1),
        options,
    };
    let ctx = ctx.clone();
    let task: JoinHandle<streambus::Result<WorkerReport>> = match stage.group {
        "alert-processor" => tokio::spawn(worker.run(
            move |d: Delivery| pipeline::process_alert(ctx.clone(), d),
            stop,
        )),
        "cps-alert-handler" => tokio::spawn(worker.run(
            move |d: Delivery| pipeline::handle_cps(ctx.clone(), d),
            stop,
        )),
        "orchestrator" => tokio::spawn(worker.run(
            move |d: Delivery| pipeline::orchestrate(ctx.clone(), d),
            stop,
        )),
        "api-persistence" => {
            tokio::spawn(worker.run(move |d: Delivery| pipeline::persist(ctx.clone(), d), stop))
        }
        _ => tokio::spawn(worker.run(move |d: Delivery| pipeline::log_audit(ctx.clone(), d), stop)),
    };
    AbortOnDropHandle::new(task)
}

/// A worker to start, and to start again if Redis cannot be reached at its
/// start, as a supervisor (systemd, Kubernetes) would: the network cut can
/// catch a worker starting (the restarted one, on a busy machine), and
/// [`Worker::run`] fails then, since a worker that never reached Redis may
/// have a wrong address. Once running, a worker rides out faults by itself.
struct StartingWorker {
    client: Client,
    stage: pipeline::Stage,
    name: String,
    options: WorkerOptions,
}

impl StartingWorker {
    async fn run<H: Handler + Clone>(
        self,
        handler: H,
        stop: CancellationToken,
    ) -> streambus::Result<WorkerReport> {
        let mut failures = 0;
        loop {
            let worker = Worker::new(
                &self.client,
                self.stage.stream,
                self.stage.group,
                WorkerOptions {
                    consumer_name: Some(self.name.as_str().into()),
                    ..self.options.clone()
                },
            );
            match worker.run(handler.clone(), stop.clone()).await {
                Err(e) if e.is_retryable() && !stop.is_cancelled() => {
                    failures += 1;
                    tracing::warn!(worker = self.name, error = %e, "worker could not start; trying again");
                    tokio::select! {
                        () = tokio::time::sleep(self.options.reconnect_backoff.delay(failures)) => {}
                        () = stop.cancelled() => {}
                    }
                }
                // Ran and stopped; or a permanent error; or stopped before it
                // could start: then the error is the result.
                result => return result,
            }
        }
    }
}

/// Publishes `rate` alerts per second to `stream` until `stop`, in small
/// pipelined batches of what is due.
fn spawn_producer(
    ctx: &Arc<Ctx>,
    seq: &Arc<AtomicU64>,
    stream: &'static str,
    rate: u64,
    stop: CancellationToken,
) -> AbortOnDropHandle<()> {
    let ctx = ctx.clone();
    let seq = seq.clone();
    AbortOnDropHandle::new(tokio::spawn(async move {
        if rate == 0 {
            return;
        }
        let producer = ctx.producers[stream].clone();
        let start = Instant::now();
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(PUBLISH_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            let n = due.saturating_sub(sent).min(rate.max(1));
            if n == 0 {
                continue;
            }
            let mut ids = Vec::with_capacity(n as usize);
            let mut messages = Vec::with_capacity(n as usize);
            let mut malformed = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let id = seq.fetch_add(1, Ordering::Relaxed);
                let (m, bad) = if stream == ALERTS {
                    pipeline::security_alert(&ctx.run, id)
                } else {
                    (pipeline::cps_alert(&ctx.run, id), false)
                };
                ids.push(id);
                messages.push(m);
                malformed.push(bad);
            }
            sent += n;
            let stats = &ctx.stats;
            match producer.publish_batch(stream, messages).await {
                Ok(_) => {
                    let mut set = lock(&stats.published_ids);
                    for id in &ids {
                        set.insert(*id);
                    }
                    drop(set);
                    let counter = if stream == ALERTS {
                        &stats.security_published
                    } else {
                        &stats.cps_published
                    };
                    counter.fetch_add(n, Ordering::Relaxed);
                    let bad = malformed.iter().filter(|b| **b).count() as u64;
                    stats.malformed_published.fetch_add(bad, Ordering::Relaxed);
                }
                Err(e) => {
                    // Maybe written, maybe not: not counted as published (a
                    // handled one is still found by the final stage).
                    tracing::warn!(stream, error = %e, "publishing alerts failed");
                    stats.publish_failures.fetch_add(n, Ordering::Relaxed);
                }
            }
        }
    }))
}

/// Waits until every group has lag 0 and nothing pending (upstream first, so
/// that one pass with all zeros means the whole pipeline is empty), or the
/// deadline (a second Ctrl-C exits at once). Returns whether it drained.
async fn drain(conn: &mut Connection, stats: &Stats, progress: &mut Progress<'_>) -> bool {
    let deadline = Instant::now() + DRAIN_DEADLINE;
    loop {
        let backlog = backlog(conn).await;
        progress.update(conn, stats, backlog).await;
        if backlog == Some((0, 0)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Total (lag, pending) over the demo's groups, upstream first; `None` if a
/// group cannot be read or its lag is unknown.
async fn backlog(conn: &mut Connection) -> Option<(u64, u64)> {
    let (mut lag, mut pending) = (0, 0);
    for stage in STAGES {
        let groups = list_groups(conn, stage.stream).await.ok()?;
        let g = groups.iter().find(|g| g.name == stage.group)?;
        lag += g.lag?;
        pending += g.pending;
    }
    Some((lag, pending))
}

/// An id for this run, carried in every payload.
fn run_id() -> String {
    let nanos = pipeline::now_us();
    format!("{:x}-{:x}", nanos, std::process::id())
}
