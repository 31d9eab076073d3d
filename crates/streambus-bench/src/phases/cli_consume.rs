//! `streambus consume` as people run it: the `streambus` binary
//! (`BenchOptions::streambus_bin`) started as a child with `consume STREAM
//! --group G -n N` on a stream filled beforehand (not timed), and timed from
//! its start to its exit:
//!
//! - printing, default flags, to a pipe the bench reads and throws away
//!   (counting lines);
//! - `--pipe 'python3 HANDLER'`: one Python process answering `ack ID` for
//!   every line ([`HANDLER`]);
//! - `--exec true --concurrency 8`: a process per entry.
//!
//! A run must leave nothing pending and nothing dead-lettered: a rate of
//! entries that were not acknowledged would be a false one. The children run
//! in a temporary directory and without `STREAMBUS_CONFIG`, so that no
//! topology file changes their defaults; their peak RSS (the `streambus`
//! process alone) is polled from `/proc` until they exit.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::{ChildStdout, Command};

use super::{fill, pending, python_check, throughput_row, Ctx, TICK};
use crate::noop::LIMIT;
use crate::sys;
use crate::{Error, Result, Throughput};

/// The group every child reads through (each stream is its own).
const GROUP: &str = "bench";

/// `--concurrency` of the `--exec` row: processes running at once.
const EXEC_CONCURRENCY: usize = 8;

/// The `--pipe` handler: reads what the pipe holds (`os.read` returns at once
/// with what is there, up to 64 KiB), answers every whole line of it with one
/// write and one flush, and reads again; so no answer waits for input that
/// has not come, and a busy pipe costs one write per read, not per line. The
/// id is cut out of the line without parsing the JSON (`consume` prints
/// `entry_id` as a plain string). Here it did 100,000 entries in 2.1 s, where
/// `for line in sys.stdin: print("ack " + id, flush=True)` took 2.6–3.1 s.
const HANDLER: &str = r#"import os, sys

out = sys.stdout.buffer
rest = b""
while True:
    chunk = os.read(0, 1 << 16)
    if not chunk:
        break
    *lines, rest = (rest + chunk).split(b"\n")
    acks = []
    for line in lines:
        i = line.index(b'"entry_id":"') + 12
        acks.append(b"ack " + line[i:line.index(b'"', i)] + b"\n")
    out.write(b"".join(acks))
    out.flush()
"#;

/// The three `streambus consume` rows, or none (with a note) without a binary.
pub(super) async fn cli_consume(ctx: &mut Ctx<'_>) -> Result<Vec<Throughput>> {
    let Some(bin) = ctx.opts.streambus_bin.clone() else {
        ctx.notes
            .push("`streambus consume` phases skipped: no streambus binary given".into());
        return Ok(Vec::new());
    };
    let dir = tempfile::tempdir().map_err(|e| Error::new(format!("temporary directory: {e}")))?;
    let mut n = ctx.opts.cli_consume_messages;
    if n > ctx.opts.maxlen {
        ctx.notes.push(format!(
            "cli_consume_messages lowered to {} (MAXLEN ~ trims the rest)",
            ctx.opts.maxlen
        ));
        n = ctx.opts.maxlen;
    }
    let mut rows = Vec::new();

    ctx.say(&format!(
        "streambus consume > pipe, default flags: {n} entries"
    ));
    let stream = fill(ctx, "cli-consume", n).await?;
    let run = run_consume(ctx, &bin, dir.path(), &stream, n, &[], true).await?;
    if run.lines != n {
        return Err(Error::new(format!(
            "streambus consume printed {} lines, not {n}",
            run.lines
        )));
    }
    all_acked(ctx, &stream, "streambus consume").await?;
    rows.push(run.row(
        ctx,
        "cli_consume",
        "streambus consume > pipe, default flags",
        n,
    ));

    if python_runs(ctx).await {
        let handler = dir.path().join("ack.py");
        std::fs::write(&handler, HANDLER)
            .map_err(|e| Error::new(format!("cannot write {}: {e}", handler.display())))?;
        ctx.say(&format!(
            "streambus consume --pipe, Python handler: {n} entries"
        ));
        let stream = fill(ctx, "cli-pipe", n).await?;
        // `sh -c` runs it; the file name is ours, without anything to quote.
        let command = format!("{} {}", ctx.opts.python_bin, handler.display());
        let args = ["--pipe", command.as_str()];
        let run = run_consume(ctx, &bin, dir.path(), &stream, n, &args, false).await?;
        all_acked(ctx, &stream, "streambus consume --pipe").await?;
        rows.push(run.row(
            ctx,
            "cli_consume_pipe",
            "streambus consume --pipe, Python handler acking each line",
            n,
        ));
    }

    let n = ctx.opts.exec_messages.clamp(1, ctx.opts.maxlen);
    ctx.say(&format!(
        "streambus consume --exec true --concurrency {EXEC_CONCURRENCY}: {n} entries"
    ));
    let stream = fill(ctx, "cli-exec", n).await?;
    let concurrency = EXEC_CONCURRENCY.to_string();
    let args = ["--exec", "true", "--concurrency", concurrency.as_str()];
    let run = run_consume(ctx, &bin, dir.path(), &stream, n, &args, false).await?;
    all_acked(ctx, &stream, "streambus consume --exec").await?;
    rows.push(run.row(
        ctx,
        "cli_consume_exec",
        &format!("streambus consume --exec true --concurrency {EXEC_CONCURRENCY}"),
        n,
    ));
    Ok(rows)
}

/// Whether the handler's Python runs at all; a note says why not.
async fn python_runs(ctx: &mut Ctx<'_>) -> bool {
    let Err(why) = python_check(ctx, "pass").await else {
        return true;
    };
    ctx.notes.push(format!(
        "`streambus consume --pipe` (Python handler) skipped: {}: {why}",
        ctx.opts.python_bin
    ));
    false
}

/// What one child run gave.
struct Run {
    elapsed: Duration,
    /// Lines it printed (0 unless they were read).
    lines: u64,
    /// Its VmHWM, polled; 0 when unknown.
    peak_rss: u64,
}

impl Run {
    fn row(&self, ctx: &Ctx<'_>, key: &str, name: &str, n: u64) -> Throughput {
        throughput_row(
            ctx,
            key,
            name.to_owned(),
            n,
            self.elapsed,
            (self.peak_rss > 0).then_some(self.peak_rss),
            "streambus consume process",
        )
    }
}

/// `streambus --redis URL consume STREAM --group GROUP -n N EXTRA...`, from
/// its start to its exit; its stdout read and its lines counted when
/// `read_stdout`, else thrown away.
async fn run_consume(
    ctx: &Ctx<'_>,
    bin: &Path,
    dir: &Path,
    stream: &str,
    n: u64,
    extra: &[&str],
    read_stdout: bool,
) -> Result<Run> {
    let tmp = |e: std::io::Error| Error::new(format!("temporary file: {e}"));
    let mut stderr = tempfile::tempfile().map_err(tmp)?;
    let mut cmd = Command::new(bin);
    cmd.args(["--redis", &ctx.url, "consume", stream, "--group", GROUP])
        .args(["-n", &n.to_string()])
        .args(extra)
        .current_dir(dir)
        .env_remove("STREAMBUS_CONFIG")
        .stdin(Stdio::null())
        .stdout(if read_stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(stderr.try_clone().map_err(tmp)?)
        // A run given up on (LIMIT) must not outlive the bench.
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::new(format!("cannot run {}: {e}", bin.display())))?;
    let pid = child.id();
    let stdout = child.stdout.take();
    let lines = AtomicU64::new(0);
    let work = async { tokio::join!(count_lines(stdout, &lines), child.wait()) };
    tokio::pin!(work);
    let limit = tokio::time::sleep(LIMIT);
    tokio::pin!(limit);
    let mut tick = tokio::time::interval(TICK);
    tick.tick().await;
    // VmHWM only grows, so polling it until the exit misses at most the last
    // few milliseconds.
    let mut poll = tokio::time::interval(Duration::from_millis(5));
    let mut peak_rss = 0;
    let (read, status) = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = poll.tick() => {
                if let Some(p) = pid.and_then(|p| sys::peak_rss(Some(p))) {
                    peak_rss = peak_rss.max(p);
                }
            }
            _ = tick.tick() => {
                let secs = started.elapsed().as_secs_f64();
                if read_stdout {
                    let done = lines.load(Ordering::Relaxed);
                    ctx.say(&format!("  {done}/{n} lines, {secs:.0} s"));
                } else {
                    ctx.say(&format!("  running for {secs:.0} s"));
                }
            }
            _ = &mut limit => {
                return Err(Error::new(format!(
                    "streambus consume did not finish within {} s",
                    LIMIT.as_secs()
                )));
            }
        }
    };
    let elapsed = started.elapsed();
    let status = status.map_err(|e| Error::new(format!("waiting for streambus consume: {e}")))?;
    if !status.success() {
        use std::io::{Read, Seek};
        let mut text = String::new();
        // Best effort: the status alone still says it failed.
        let _ = stderr.rewind();
        let _ = stderr.read_to_string(&mut text);
        return Err(Error::new(format!(
            "streambus consume {} failed ({status}): {}",
            extra.join(" "),
            text.trim()
        )));
    }
    read.map_err(|e| Error::new(format!("reading streambus consume's output: {e}")))?;
    Ok(Run {
        elapsed,
        lines: lines.load(Ordering::Relaxed),
        peak_rss,
    })
}

/// Counts the newlines of `out` until it closes, into `lines`.
async fn count_lines(out: Option<ChildStdout>, lines: &AtomicU64) -> std::io::Result<()> {
    let Some(mut out) = out else { return Ok(()) };
    let mut buf = vec![0; 1 << 16];
    loop {
        let k = out.read(&mut buf).await?;
        if k == 0 {
            return Ok(());
        }
        let newlines = buf[..k].iter().filter(|&&b| b == b'\n').count();
        lines.fetch_add(newlines as u64, Ordering::Relaxed);
    }
}

/// After a child's exit: its group has nothing pending on `stream`, and
/// nothing went to the dead-letter stream (which is deleted with the run's
/// keys).
async fn all_acked(ctx: &mut Ctx<'_>, stream: &str, what: &str) -> Result<()> {
    let dead_letter = streambus::keys::dead_letter(stream);
    ctx.keys.push(dead_letter.clone());
    let pending = pending(ctx, stream, GROUP).await?;
    let mut conn = ctx.client.connect().await?;
    let dead: u64 = redis::cmd("XLEN")
        .arg(&dead_letter)
        .query_async(&mut conn)
        .await?;
    if pending > 0 || dead > 0 {
        return Err(Error::new(format!(
            "{what} left {pending} entries pending and dead-lettered {dead}"
        )));
    }
    Ok(())
}
