//! The reference every throughput is a ratio to: `redis-benchmark -c 1 -P 64`
//! XADD of the same envelope (`MAXLEN ~ maxlen`), one connection with 64
//! commands in flight, the rate read from its `--csv` output.
//!
//! Skipped with a note (and then no ratios) when no binary is given, it is not
//! installed, it fails, or the Redis is not a plain `redis://` one.

use std::process::Stdio;

use super::Ctx;
use crate::payload;
use crate::render::fmt_rate;
use crate::Throughput;

/// `redis-benchmark -c 1 -P 64 -n N XADD <key> MAXLEN ~ <maxlen> * <envelope>`.
pub(super) async fn reference(ctx: &mut Ctx<'_>) -> Option<Throughput> {
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
