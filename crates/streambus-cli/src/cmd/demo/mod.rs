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
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use streambus::config::format_duration;
use streambus::group::{create_group, list_groups};
use streambus::{
    CancellationToken, Client, Connection, Delivery, Handler, Producer, ProducerOptions, Worker,
    WorkerOptions, WorkerReport,
};
use streambus_server::{AppState, ServerConfig};
use streambus_testkit::FaultProxy;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use self::pipeline::{lock, Ctx, Stats, ALERTS, CPS_ALERTS, STAGES};
use crate::cli::DemoArgs;
use crate::shutdown;
use crate::topology::Topology;

mod pipeline;

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
            .map(|s| s.retention.0)
            .unwrap_or_default();
        let options = ProducerOptions {
            retention,
            ..Default::default()
        };
        producers.insert(stage.stream, Producer::new(conn.clone(), options));
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
        let listen = args
            .listen
            .or(file.service.listen)
            .unwrap_or_else(|| ServerConfig::default().listen);
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
    summary.print()?;
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
                self.client.clone(),
                self.stage.stream,
                self.stage.group,
                self.options.clone(),
            )
            .consumer_name(self.name.as_str());
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

/// This run's dead letters, by stream: (alert ids, reasons seen).
struct DeadLetters {
    ids: pipeline::IdSet,
    /// Dead letters of this run in `{aurora:alerts}:dlq`.
    in_alerts_dlq: u64,
    /// One reason, as an example.
    example_reason: Option<String>,
}

async fn dead_letters(conn: &mut Connection, run: &str) -> Result<DeadLetters> {
    let mut out = DeadLetters {
        ids: pipeline::IdSet::default(),
        in_alerts_dlq: 0,
        example_reason: None,
    };
    for stage in STAGES {
        let mut after = None;
        loop {
            let page = streambus::dead_letter::list(conn, stage.stream, after, DLQ_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for dl in &page {
                let Some(data) = dl.fields.get_str("data") else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                    continue;
                };
                if v["run"] != run {
                    continue;
                }
                if let Some(id) = v["alert_id"].as_u64() {
                    out.ids.insert(id);
                }
                if stage.stream == ALERTS {
                    out.in_alerts_dlq += 1;
                }
                if out.example_reason.is_none() {
                    out.example_reason = dl.reason.clone();
                }
            }
            if page.len() < DLQ_PAGE {
                break;
            }
        }
    }
    Ok(out)
}

struct Summary {
    lines: Vec<String>,
    lost: u64,
}

impl Summary {
    fn new(
        stats: &Stats,
        reports: &[WorkerReport],
        dead: &DeadLetters,
        cut_skipped: Option<&str>,
        elapsed: Duration,
        drained: bool,
    ) -> Summary {
        let published_ids = lock(&stats.published_ids);
        let final_ids = lock(&stats.final_ids);
        let lost = published_ids
            .iter()
            .filter(|id| !final_ids.contains(*id) && !dead.ids.contains(*id))
            .count() as u64;
        let reclaimed: u64 = reports.iter().map(|r| r.reclaimed).sum();
        let retried: u64 = reports.iter().map(|r| r.retried).sum();
        let security = stats.security_published.load(Ordering::Relaxed);
        let cps = stats.cps_published.load(Ordering::Relaxed);
        let malformed = stats.malformed_published.load(Ordering::Relaxed);
        let mut lines = vec![
            format!("demo summary ({}):", format_duration(elapsed)),
            format!(
                "  published:     {} alerts ({security} security, {cps} CPS)",
                published_ids.len()
            ),
            format!(
                "  processed:     {}",
                STAGES
                    .iter()
                    .enumerate()
                    .map(|(i, s)| format!("{} {}", s.group, stats.processed(i)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!(
                "  redelivered:   {} (reclaimed {reclaimed}, retried {retried})",
                reclaimed + retried
            ),
            format!(
                "  dead-lettered: {} ({} in {{{ALERTS}}}:dlq{})",
                dead.ids.len(),
                dead.in_alerts_dlq,
                dead.example_reason
                    .as_deref()
                    .map(|r| format!("; e.g. {}", crate::output::cell(r, 100)))
                    .unwrap_or_default()
            ),
            format!("  malformed:     {malformed} sent"),
            format!(
                "  network cut:   {}",
                cut_summary(cut_skipped, &stats.cut, drained)
            ),
        ];
        let failures = stats.publish_failures.load(Ordering::Relaxed);
        if failures > 0 {
            lines.push(format!(
                "  publish errors: {failures} alerts (not counted as published)"
            ));
        }
        if !drained {
            lines.push(format!(
                "  not drained within {}: alerts still in flight count as lost",
                format_duration(DRAIN_DEADLINE)
            ));
        }
        lines.push(format!("lost: {lost}"));
        match stats.latency_quantiles(&[0.5, 0.99]) {
            Some(q) => lines.push(format!(
                "latency alert → result: p50 {}, p99 {} ({} samples)",
                format_duration(q[0]),
                format_duration(q[1]),
                lock(&stats.latencies).len()
            )),
            None => lines.push("latency alert → result: no results".to_owned()),
        }
        Summary { lines, lost }
    }

    fn print(&self) -> Result<()> {
        let mut out = crate::output::Lines::stdout();
        for l in &self.lines {
            out.line(l)?;
        }
        out.flush()?;
        Ok(())
    }
}

/// The summary's word on the network cut.
fn cut_summary(skipped: Option<&str>, cut: &pipeline::CutTimes, drained: bool) -> String {
    let Some(length) = cut.length() else {
        return match skipped {
            Some(why) => format!("skipped ({why})"),
            None => "none (the run ended before it)".to_owned(),
        };
    };
    let length = format_duration(length);
    match cut.resumed_after() {
        Some(after) => format!(
            "{length} black hole; work resumed {} after healing",
            format_duration(after)
        ),
        // Drained: every alert was handled, so none was published during it.
        None if drained => {
            format!("{length} black hole; no alert published during it to time the recovery")
        }
        None => format!("{length} black hole; work had not resumed by the end"),
    }
}

/// The workers' way to Redis: through a proxy that the demo can cut.
struct Route {
    /// Like the demo's client, but connecting to the proxy.
    client: Client,
    /// Shared with [`cut_network`]; it lives as long as the workers do.
    proxy: Arc<FaultProxy>,
}

/// A [`FaultProxy`] in front of the Redis server, and a client through it;
/// `Err` says why there is none (the workers then connect directly and the
/// network is not cut).
async fn proxy_route(client: &Client) -> Result<Route, String> {
    // The URL as given, with its password masked (see below).
    let url = client.display_url();
    let parts = match UrlParts::split(url) {
        Some(p) if !client.is_cluster() => p,
        _ => return Err("only for plain redis:// URLs".to_owned()),
    };
    if parts.userinfo.contains("***") {
        // The client keeps the password to itself; the demo is only given
        // the client.
        return Err("the Redis URL has a password, which the demo cannot pass on to the proxy's connections".to_owned());
    }
    let upstream = reachable(parts.host, parts.port, client.options().connect_timeout).await?;
    let proxy = FaultProxy::start(upstream)
        .await
        .map_err(|e| format!("cannot start the proxy: {e}"))?;
    let client = Client::open_with(&parts.with_addr(proxy.addr()), client.options().clone())
        .map_err(|e| e.to_string())?;
    Ok(Route {
        client,
        proxy: Arc::new(proxy),
    })
}

/// The first address of `host:port` that accepts a TCP connection (a name
/// may resolve to an IPv6 and an IPv4 address, of which Redis listens on one).
async fn reachable(host: &str, port: u16, timeout: Duration) -> Result<SocketAddr, String> {
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let mut failure = "no address".to_owned();
    for addr in addrs {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_probe)) => return Ok(addr),
            Ok(Err(e)) => failure = e.to_string(),
            Err(_) => failure = format!("no answer within {}", format_duration(timeout)),
        }
    }
    Err(format!("cannot reach {host}:{port} ({failure})"))
}

/// A single-server `redis://` URL, split where the proxy's address goes.
#[derive(Debug, PartialEq)]
struct UrlParts<'a> {
    /// `user:password@`, or empty.
    userinfo: &'a str,
    /// Without the brackets of an IPv6 address.
    host: &'a str,
    port: u16,
    /// Everything after the port: `/db`, `?query`.
    rest: &'a str,
}

impl<'a> UrlParts<'a> {
    /// `None` unless `url` is `redis://[userinfo@]host[:port][/db][?query]`
    /// (not TLS, a unix socket or a cluster).
    fn split(url: &'a str) -> Option<Self> {
        let after = url.strip_prefix("redis://")?;
        // A password may hold a '/': the host starts after the last '@' (as
        // in `streambus::connection::mask_password`).
        let (userinfo, after) = after.split_at(after.rfind('@').map_or(0, |at| at + 1));
        let (hostport, rest) = after.split_at(after.find(['/', '?', '#']).unwrap_or(after.len()));
        let (host, port) = match hostport.strip_prefix('[') {
            Some(v6) => {
                let (host, port) = v6.split_once(']')?;
                (
                    host,
                    port.strip_prefix(':').or(port.is_empty().then_some(""))?,
                )
            }
            None => hostport.split_once(':').unwrap_or((hostport, "")),
        };
        let port = if port.is_empty() {
            6379
        } else {
            port.parse().ok()?
        };
        (!host.is_empty()).then_some(UrlParts {
            userinfo,
            host,
            port,
            rest,
        })
    }

    /// The same URL with `addr` for the host and port.
    fn with_addr(&self, addr: SocketAddr) -> String {
        format!("redis://{}{addr}{}", self.userinfo, self.rest)
    }
}

/// Cuts the workers' network at `at` for `length` (healing at once if the
/// run ends first), then says when the first alert published during the cut
/// has been processed: the workers noticed that their connections were dead
/// and dialled new ones. Runs until then, unless its owner drops it first.
async fn cut_network(
    proxy: Arc<FaultProxy>,
    at: Instant,
    length: Duration,
    ctx: Arc<Ctx>,
    out: Out,
    run_over: CancellationToken,
) {
    tokio::select! {
        () = tokio::time::sleep_until(at) => {}
        () = run_over.cancelled() => return,
    }
    let cut = &ctx.stats.cut;
    proxy.black_hole();
    // After the black hole: an alert published from now on can reach a
    // worker only on a connection dialled after the heal.
    cut.started_us.store(pipeline::now_us(), Ordering::Release);
    out.say(format!(
        "network cut: workers' connections to Redis black-holed for {}",
        format_duration(length)
    ));
    tokio::select! {
        () = tokio::time::sleep(length) => {}
        () = run_over.cancelled() => {}
    }
    // Before the heal, so that the time to resume is never under-measured.
    cut.healed_us.store(pipeline::now_us(), Ordering::Release);
    proxy.heal();
    let after = loop {
        if let Some(after) = cut.resumed_after() {
            break after;
        }
        tokio::time::sleep(RESUME_POLL).await;
    };
    out.say(format!(
        "network healed: work resumed after {}",
        format_duration(after)
    ));
}

/// The dashboard, served in this process.
struct Dashboard {
    stop: CancellationToken,
    task: AbortOnDropHandle<std::io::Result<()>>,
}

impl Dashboard {
    async fn stop(self) {
        self.stop.cancel();
        match self.task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "the dashboard ended with an error"),
            Err(e) => tracing::warn!(error = %e, "the dashboard task failed"),
            Ok(Ok(())) => {}
        }
    }
}

/// Serves the dashboard on `listen`. A taken port is an error when the address
/// was asked for; otherwise the demo runs without the dashboard and says so.
async fn start_dashboard(
    client: &Client,
    listen: SocketAddr,
    explicit: bool,
) -> Result<Option<Dashboard>> {
    let config = ServerConfig {
        listen,
        streams: STAGES.iter().map(|s| s.stream.to_owned()).collect(),
        ..Default::default()
    };
    config.validate()?;
    let listener = match super::serve::bind(listen).await {
        Ok(l) => l,
        Err(e) if !explicit => {
            eprintln!("{e:#}; running without the dashboard (or use --no-serve)");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let addr = listener.local_addr()?;
    let state = AppState::new(config, client.clone()).await?;
    let stop = CancellationToken::new();
    let signal = stop.clone();
    let task = tokio::spawn(streambus_server::serve(listener, state, async move {
        signal.cancelled().await;
    }));
    eprintln!("dashboard: http://{addr}/");
    Ok(Some(Dashboard {
        stop,
        task: AbortOnDropHandle::new(task),
    }))
}

/// Where progress and notes go: a redrawn line on a terminal, plain lines
/// otherwise. Clones share the line.
#[derive(Clone)]
struct Out {
    bar: Option<indicatif::ProgressBar>,
}

impl Out {
    fn new() -> Out {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::stderr_with_hz(4),
            );
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar
        });
        Out { bar }
    }

    /// A note above the progress line.
    fn say(&self, text: impl AsRef<str>) {
        match &self.bar {
            Some(bar) => bar.println(text.as_ref()),
            None => eprintln!("{}", text.as_ref()),
        }
    }
}

/// The live numbers: published, processed, lag, pending, dead letters, rates.
struct Progress<'a> {
    out: &'a Out,
    started: Instant,
    last_at: Instant,
    last_published: u64,
    last_processed: u64,
    last_plain: Instant,
}

impl<'a> Progress<'a> {
    fn new(out: &'a Out, started: Instant) -> Self {
        Progress {
            out,
            started,
            last_at: started,
            last_published: 0,
            last_processed: 0,
            last_plain: started,
        }
    }

    /// Redraws (or, without a terminal, prints a line every few seconds).
    /// `backlog`: already read by the caller, or `None` to read it here.
    async fn update(&mut self, conn: &mut Connection, stats: &Stats, backlog: Option<(u64, u64)>) {
        let now = Instant::now();
        if self.out.bar.is_none() && now.duration_since(self.last_plain) < PLAIN_EVERY {
            return;
        }
        let backlog = match backlog {
            Some(b) => Some(b),
            None => self::backlog(conn).await,
        };
        let dead = streambus::dead_letter::count(conn, ALERTS).await.ok();
        let published = stats.published();
        // Alerts through their whole pipeline: results persisted + CPS handled.
        let processed = stats.processed(3) + stats.processed(1);
        let secs = now.duration_since(self.last_at).as_secs_f64().max(1e-3);
        let line = format!(
            "{:>6}  published {published} ({:.0}/s)  processed {processed} ({:.0}/s)  lag {}  pending {}  dead letters {}",
            format_duration(now.duration_since(self.started)),
            published.saturating_sub(self.last_published) as f64 / secs,
            processed.saturating_sub(self.last_processed) as f64 / secs,
            backlog.map_or("?".to_owned(), |b| b.0.to_string()),
            backlog.map_or("?".to_owned(), |b| b.1.to_string()),
            dead.map_or("?".to_owned(), |d| d.to_string()),
        );
        self.last_at = now;
        self.last_published = published;
        self.last_processed = processed;
        match &self.out.bar {
            Some(bar) => {
                bar.set_message(line);
                bar.tick();
            }
            None => {
                self.last_plain = now;
                eprintln!("{line}");
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.out.bar {
            bar.finish_and_clear();
        }
    }
}

/// An id for this run, carried in every payload.
fn run_id() -> String {
    let nanos = pipeline::now_us();
    format!("{:x}-{:x}", nanos, std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(userinfo: &'a str, host: &'a str, port: u16, rest: &'a str) -> UrlParts<'a> {
        UrlParts {
            userinfo,
            host,
            port,
            rest,
        }
    }

    #[test]
    fn splits_plain_redis_urls_where_the_proxy_goes() {
        let cases = [
            ("redis://127.0.0.1:40123", parts("", "127.0.0.1", 40123, "")),
            ("redis://localhost", parts("", "localhost", 6379, "")),
            ("redis://h:7000/2", parts("", "h", 7000, "/2")),
            (
                "redis://bob:s/cr@t@h:1/0?protocol=resp3",
                parts("bob:s/cr@t@", "h", 1, "/0?protocol=resp3"),
            ),
            ("redis://[::1]:6380/1", parts("", "::1", 6380, "/1")),
            ("redis://[::1]", parts("", "::1", 6379, "")),
        ];
        for (url, want) in cases {
            assert_eq!(UrlParts::split(url), Some(want), "{url}");
        }
        let proxy: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        assert_eq!(
            UrlParts::split("redis://:pw@redis.internal:6379/3")
                .unwrap()
                .with_addr(proxy),
            "redis://:pw@127.0.0.1:5555/3"
        );
    }

    #[test]
    fn other_urls_are_not_split() {
        for url in [
            "rediss://h:6380",
            "redis+unix:///tmp/redis.sock",
            "unix:///tmp/redis.sock",
            "redis+cluster://h1:7000,h2:7001",
            "redis://",
            "redis://h:port",
            "redis://[::1",
        ] {
            assert_eq!(UrlParts::split(url), None, "{url}");
        }
    }
}
