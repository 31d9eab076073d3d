//! The table for people, and the targets checked against a report.

use std::fmt::Write;

use crate::sys::mib;
use crate::{BenchReport, Target};

const MIB: u64 = 1024 * 1024;

/// The targets of the issue, each against this run's figure.
pub(crate) fn targets(r: &BenchReport) -> Vec<Target> {
    let row = |key: &str| r.throughput.iter().find(|t| t.key == key);
    let ratio = |key: &str| row(key)?.ratio;
    let saturation = |key: &str| row(key)?.ratio_saturation;
    let rss = |key: &str| row(key)?.peak_rss_bytes;
    let lat = |key: &str| r.latency.iter().find(|l| l.key == key);
    let mut out = Vec::new();
    let mut ratio_target = |what: &str, v: Option<f64>, goal: f64| {
        out.push(Target {
            what: what.into(),
            goal: format!("≥ {goal}"),
            value: v.map_or("-".into(), |v| format!("{v:.2}")),
            met: v.map(|v| v >= goal),
        });
    };
    ratio_target(
        "publish (library) / redis-benchmark -c 1",
        ratio("publish"),
        0.9,
    );
    ratio_target(
        "streambus publish (stdin) / redis-benchmark -c 1",
        ratio("cli_publish"),
        0.6,
    );
    ratio_target(
        "worker read+ack, concurrency N / redis-benchmark -c 1",
        ratio("worker_cN"),
        0.55,
    );
    // Issue 15's, against the server's saturation (redis-benchmark -c 50).
    for (what, key, goal) in [
        ("publish (library)", "publish", 0.8),
        ("publish_batch (library)", "publish_batch", 0.8),
        ("streambus publish (stdin)", "cli_publish", 0.7),
        ("worker read+ack, concurrency N", "worker_cN", 0.6),
        ("worker read+ack, concurrency 1", "worker_c1", 0.25),
        ("streambus consume > pipe", "cli_consume", 0.4),
    ] {
        ratio_target(
            &format!("{what} / redis-benchmark -c 50"),
            saturation(key),
            goal,
        );
    }
    // Against the Python libraries people use, when the run had them: never
    // slower, and the sequential worker about twice the Python loop.
    for (what, key, peer, goal) in [
        (
            "worker read+ack, concurrency 1 / walrus read + ack",
            "worker_c1",
            "peer_walrus_consume",
            2.0,
        ),
        (
            "streambus consume > pipe / walrus read + ack",
            "cli_consume",
            "peer_walrus_consume",
            1.0,
        ),
        (
            "streambus consume > pipe / redis-streams Consumer",
            "cli_consume",
            "peer_redis_streams_consume",
            1.0,
        ),
        (
            "publish_batch (library) / redis-py pipeline",
            "publish_batch",
            "peer_redis_py_publish",
            1.0,
        ),
        (
            "streambus publish (stdin) / redis-py pipeline",
            "cli_publish",
            "peer_redis_py_publish",
            1.0,
        ),
    ] {
        if let Some(p) = row(peer) {
            ratio_target(what, row(key).map(|t| t.rate / p.rate), goal);
        }
    }
    for (what, key, goal) in [
        (
            "streambus consume --pipe, Python handler",
            "cli_consume_pipe",
            50_000.0,
        ),
        (
            "streambus consume --exec true --concurrency 8",
            "cli_consume_exec",
            2_000.0,
        ),
    ] {
        let v = row(key).map(|t| t.rate);
        out.push(Target {
            what: what.into(),
            goal: format!("≥ {}/s", fmt_rate(goal)),
            value: v.map_or("-".into(), |v| format!("{}/s", fmt_rate(v))),
            met: v.map(|v| v >= goal),
        });
    }
    let mut ms_target = |what: &str, v: Option<f64>, goal: f64| {
        out.push(Target {
            what: what.into(),
            goal: format!("≤ {goal} ms"),
            value: v.map_or("-".into(), |v| format!("{v:.3} ms")),
            met: v.map(|v| v <= goal),
        });
    };
    ms_target(
        "latency p50 at 2,000 msg/s",
        lat("latency_2000").map(|l| l.p50_ms),
        0.2,
    );
    ms_target(
        "latency p99 at 2,000 msg/s",
        lat("latency_2000").map(|l| l.p99_ms),
        1.0,
    );
    ms_target(
        "latency p99 at 20,000 msg/s",
        lat("latency_20000").map(|l| l.p99_ms),
        2.0,
    );
    let mut rss_target = |what: &str, v: Option<u64>, goal_mib: u64| {
        out.push(Target {
            what: what.into(),
            goal: format!("≤ {goal_mib} MiB"),
            value: v.map_or("-".into(), mib),
            met: v.map(|v| v <= goal_mib * MIB),
        });
    };
    rss_target(
        "worker peak RSS at full speed",
        rss("worker_cN_process").or(rss("worker_cN")),
        15,
    );
    rss_target("streambus publish peak RSS", rss("cli_publish"), 50);
    out
}

pub(crate) fn table(r: &BenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "streambus bench, {}", r.date);
    let _ = writeln!(
        s,
        "machine: {} × {}, {} RAM, Linux {}; Redis {} ({})",
        r.machine.cpus,
        r.machine.cpu,
        mib(r.machine.memory_bytes),
        r.machine.kernel,
        r.redis_version,
        r.redis
    );
    s.push('\n');
    let standard = r.reference.is_some() || !r.throughput.is_empty() || !r.latency.is_empty();
    if standard {
        let mut rows: Vec<[String; 7]> = vec![[
            "throughput".into(),
            "messages".into(),
            "msg/s".into(),
            "rounds, msg/s".into(),
            "× -c 1".into(),
            "× -c 50".into(),
            "peak RSS".into(),
        ]];
        let ratio = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}"));
        let references = r.reference.iter().chain(&r.saturation_reference);
        for t in references.chain(&r.throughput) {
            rows.push([
                t.name.clone(),
                t.messages.to_string(),
                fmt_rate(t.rate),
                rounds(&t.rounds),
                ratio(t.ratio),
                ratio(t.ratio_saturation),
                t.peak_rss_bytes.map_or("-".into(), mib),
            ]);
        }
        grid(&mut s, &rows, &[false, true, true, true, true, true, true]);
        s.push('\n');
        let mut rows: Vec<[String; 7]> = vec![[
            "latency publish → handler".into(),
            "handled/s".into(),
            "count".into(),
            "p50 ms".into(),
            "p99 ms".into(),
            "p99.9 ms".into(),
            "max ms".into(),
        ]];
        for l in &r.latency {
            rows.push([
                l.name.clone(),
                fmt_rate(l.achieved_rate),
                l.count.to_string(),
                format!("{:.3}", l.p50_ms),
                format!("{:.3}", l.p99_ms),
                format!("{:.3}", l.p999_ms),
                format!("{:.3}", l.max_ms),
            ]);
        }
        grid(&mut s, &rows, &[false, true, true, true, true, true, true]);
        s.push('\n');
    }
    if !r.scaling.is_empty() {
        let mut rows: Vec<[String; 4]> = vec![[
            "Redis Cluster scaling".into(),
            "messages".into(),
            "msg/s".into(),
            "× 1 node".into(),
        ]];
        for t in &r.scaling {
            rows.push([
                t.name.clone(),
                t.messages.to_string(),
                fmt_rate(t.rate),
                t.ratio.map_or("-".into(), |x| format!("{x:.2}")),
            ]);
        }
        grid(&mut s, &rows, &[false, true, true, true]);
        s.push('\n');
    }
    if !standard {
        for n in &r.notes {
            let _ = writeln!(s, "note: {n}");
        }
        return s;
    }
    let mut rows: Vec<[String; 4]> =
        vec![["target".into(), "goal".into(), "this run".into(), "".into()]];
    for t in &r.targets {
        rows.push([
            t.what.clone(),
            t.goal.clone(),
            t.value.clone(),
            match t.met {
                Some(true) => "met".into(),
                Some(false) => "MISSED".into(),
                None => "not run".into(),
            },
        ]);
    }
    grid(&mut s, &rows, &[false, true, true, false]);
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}

/// Every round's rate in thousands (`212k 198k 230k`); empty for one round.
fn rounds(rates: &[f64]) -> String {
    if rates.len() < 2 {
        return String::new();
    }
    let k: Vec<String> = rates
        .iter()
        .map(|r| format!("{:.0}k", r / 1000.0))
        .collect();
    k.join(" ")
}

/// Columns padded to their widest cell; the first row is the header.
fn grid<const N: usize>(s: &mut String, rows: &[[String; N]], right: &[bool; N]) {
    let mut width = [0; N];
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for (i, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let pad = width[c] - cell.chars().count();
            if c > 0 {
                line.push_str("  ");
            }
            if right[c] {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        let _ = writeln!(s, "{}", line.trim_end());
        if i == 0 {
            let total: usize = width.iter().sum::<usize>() + 2 * (N - 1);
            let _ = writeln!(s, "{}", "-".repeat(total));
        }
    }
}

/// A rate as a whole number with thousands separators (`1,234,567`).
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
