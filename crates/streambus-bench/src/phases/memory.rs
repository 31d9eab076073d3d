//! The worker's peak memory alone: the concurrency-N consume run again in a
//! process of its own ([`crate::child`]), which reports its VmHWM. In the bench
//! process the figure would include the publishers, the histograms and what
//! earlier phases left in the allocator (an upper bound only).

use std::process::Stdio;
use std::time::Duration;

use super::{throughput_row, Ctx};
use crate::child::{self, ChildResult, ChildSpec};
use crate::{Error, Result, Throughput};

/// The same worker run in a process of its own, for its memory alone.
pub(super) async fn consume_in_child(
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
