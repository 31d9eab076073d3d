//! The references every throughput is a ratio to: `redis-benchmark -c 1 -P 64`
//! XADD of the same envelope (`MAXLEN ~ maxlen`), one connection with 64
//! commands in flight, and the same with `-c 50` (fifty connections: the
//! server's saturation, what issue 15's targets are stated against); the rate
//! is read from its `--csv` output.
//!
//! Skipped with a note (and then no ratios to it) when no binary is given, it
//! is not installed, it fails, or the Redis is not a plain `redis://` one.

use std::process::Stdio;

use super::Ctx;
use crate::payload;
use crate::render::fmt_rate;
use crate::Throughput;

/// The one-connection reference (the 1.0 of the `ratio` column).
pub(super) const ONE: u32 = 1;
/// The saturation reference (the 1.0 of the `ratio_saturation` column).
pub(super) const SATURATION: u32 = 50;

/// `redis-benchmark -c <clients> -P 64 -n N XADD <key> MAXLEN ~ <maxlen> * <envelope>`.
pub(super) async fn reference(ctx: &mut Ctx<'_>, clients: u32) -> Option<Throughput> {
    let bin = ctx.opts.redis_benchmark_bin.clone()?;
    let Some(url) = redis::parse_redis_url(&ctx.url).filter(|u| u.scheme() == "redis") else {
        ctx.notes.push(format!(
            "redis-benchmark skipped: it cannot reach {} (plain redis:// only); no ratios",
            ctx.client.display_url()
        ));
        return None;
    };
    let key = ctx.key(&format!("redis-benchmark-c{clients}"));
    let name = format!("redis-benchmark -c {clients} -P 64 XADD");
    // Without the -c 1 row no row has a ratio; without the -c 50 one, only
    // its column is empty.
    let consequence = if clients == ONE {
        "no ratios"
    } else {
        "no ratios to it"
    };
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
    cmd.args([
        "-c",
        &clients.to_string(),
        "-P",
        "64",
        "-n",
        &n.to_string(),
        "--csv",
    ])
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
    ctx.say(&format!("reference: {name}, {n} messages"));
    let out = match cmd.stdin(Stdio::null()).output().await {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            ctx.notes.push(format!(
                "{name} failed ({}): {}; {consequence}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            return None;
        }
        Err(e) => {
            ctx.notes
                .push(format!("{name} not run ({bin}: {e}); {consequence}"));
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
        key: if clients == ONE {
            "redis_benchmark".into()
        } else {
            format!("redis_benchmark_c{clients}")
        },
        name,
        messages: n,
        seconds: n as f64 / rate,
        rate,
        rounds: vec![rate],
        // Set with the medians, once both references are known.
        ratio: None,
        ratio_saturation: None,
        peak_rss_bytes: None,
        rss_note: None,
    })
}
