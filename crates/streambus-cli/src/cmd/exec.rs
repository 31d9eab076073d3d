//! `streambus consume --exec CMD`: a [`Worker`] that runs a shell command per entry.
//!
//! Guarantee: at-least-once, the worker's. An entry is acknowledged only after its
//! command exited 0, and dead-lettered (atomically, with a reason) only after the
//! command said the entry is bad (exit 65) or failed `--max-deliveries` times.
//! Anything else (another exit code, a signal, a shell that cannot start, a
//! shutdown while it runs) leaves the entry pending, to be run again. So a command
//! may run more than once for one entry: make it idempotent
//! (`STREAMBUS_ENTRY_ID` names the entry).
//!
//! The command gets the entry's JSON line (as `consume` prints it) on stdin. Its
//! stdout is ours; its stderr is passed through to ours as it comes, and its last
//! line is kept as the reason when the entry fails.
//!
//! Each command runs in a process group of its own: a Ctrl-C at the terminal
//! reaches streambus only, which then lets running commands finish (within
//! `--grace`); when the grace runs out, the whole group is killed, so that
//! nothing the command started keeps working on an entry left pending.

use std::collections::HashMap;
use std::pin::pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use streambus::default_consumer_name;
use streambus::partition::{PartitionedWorker, Partitions};
use streambus::{
    Backoff, CancellationToken, Client, Delivery, Handler, Outcome, Worker, WorkerOptions,
    WorkerReport,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::settings::{self, FileGroup, BATCH_SIZE, MAX_WAIT};
use crate::cli::ConsumeArgs;
use crate::shutdown;

/// Defaults of the `--exec` flags (their help texts state them).
const CONCURRENCY: usize = 1;
const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_DELIVERIES: u32 = 5;
const GRACE: Duration = Duration::from_secs(30);
fn default_backoff() -> Backoff {
    Backoff::new(Duration::from_secs(1), Duration::from_secs(300))
}

/// The pending list is scanned for due retries at the backoff's base, so that a
/// short backoff means a quick retry; but not more often than this (each scan is
/// an XPENDING) ...
const MIN_SCAN_INTERVAL: Duration = Duration::from_millis(20);
/// ... and at least this often (the worker's own default).
const MAX_SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// sysexits.h: the input data was incorrect. The entry is dead-lettered at once.
const EX_DATAERR: i32 = 65;
/// sysexits.h: a temporary failure. The entry is retried (as for any other code).
const EX_TEMPFAIL: i32 = 75;

/// After the command exited, how long its stderr may stay open (held by something
/// it started in the background) before we stop reading it.
const STDERR_DRAIN: Duration = Duration::from_millis(200);
/// The longest stderr line kept for a reason, in bytes.
const MAX_REASON_LINE: usize = 300;

pub async fn run(
    client: &Client,
    args: ConsumeArgs,
    command: String,
    file: FileGroup<'_>,
    partitions: Option<Partitions>,
) -> Result<()> {
    // Built-in defaults, then the topology file's group settings, then flags.
    let mut options = settings::worker_options(
        &args,
        file,
        WorkerOptions {
            concurrency: CONCURRENCY,
            batch_size: BATCH_SIZE,
            block: MAX_WAIT,
            visibility_timeout: VISIBILITY_TIMEOUT,
            max_deliveries: MAX_DELIVERIES,
            retry_backoff: default_backoff(),
            shutdown_grace: GRACE,
            ..Default::default()
        },
    );
    let o = &mut options;
    o.reclaim_interval = o
        .retry_backoff
        .base
        .clamp(MIN_SCAN_INTERVAL, MAX_SCAN_INTERVAL);
    let max_deliveries = o.max_deliveries;
    if args.count == Some(0) {
        return Ok(());
    }
    let consumer = args.consumer.unwrap_or_else(default_consumer_name);

    let (stop, _signals) = shutdown::on_signal();
    let logical = partitions.as_ref().map(|p| Logical {
        stream: args.stream.clone(),
        index: p
            .keys()
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect(),
    });
    let handler = Exec {
        command,
        group: args.group.clone(),
        consumer: consumer.clone(),
        logical,
        max_deliveries,
        stop_after: args.count.map(|target| StopAfter {
            target,
            done: AtomicU64::new(0),
            stop: stop.clone(),
        }),
    };
    tracing::info!(stream = %args.stream, group = %args.group, %consumer, "running a command per entry");
    let options = WorkerOptions {
        consumer_name: Some(consumer),
        ..options
    };
    let report = match partitions {
        None => {
            Worker::new(client, &args.stream, &args.group, options)
                .run(handler, stop)
                .await?
        }
        Some(p) => {
            let mut worker = PartitionedWorker::new(client, p, &args.group, options);
            if let Some((i, n)) = args.member {
                worker = worker.member(i, n);
            }
            worker.run(handler, stop).await?
        }
    };
    eprintln!("consumed: {}", summary(&report));
    Ok(())
}

/// `delivered 10, acked 9, retried 1, dead-lettered 0, reclaimed 0`, plus what
/// was left unfinished when the grace ran out, if anything.
fn summary(r: &WorkerReport) -> String {
    let mut line = format!(
        "delivered {}, acked {}, retried {}, dead-lettered {}, reclaimed {}",
        r.delivered, r.acked, r.retried, r.dead_lettered, r.reclaimed
    );
    if r.unfinished > 0 {
        line.push_str(&format!(", unfinished {} (left pending)", r.unfinished));
    }
    line
}

/// The handler: runs the command for one delivery.
struct Exec {
    command: String,
    group: String,
    consumer: String,
    /// A partitioned stream: its name and each partition key's index.
    logical: Option<Logical>,
    /// To tell a last failed attempt (the worker dead-letters it) from one that
    /// will be retried.
    max_deliveries: u32,
    /// With `--count`.
    stop_after: Option<StopAfter>,
}

/// The logical stream a partitioned worker reads.
struct Logical {
    stream: String,
    /// Partition key to partition index.
    index: HashMap<String, usize>,
}

/// Stops the worker once `target` entries are done with (acknowledged or
/// dead-lettered).
struct StopAfter {
    target: u64,
    done: AtomicU64,
    stop: CancellationToken,
}

impl Handler for Exec {
    async fn handle(&self, delivery: Delivery) -> Outcome {
        let outcome = self.run_command(&delivery).await;
        let done = match &outcome {
            Outcome::Ack | Outcome::DeadLetter { .. } => true,
            // The worker dead-letters a failure at the last allowed delivery.
            Outcome::Retry { .. } => delivery.deliveries >= self.max_deliveries,
            _ => false,
        };
        if let (true, Some(s)) = (done, &self.stop_after) {
            if s.done.fetch_add(1, Ordering::Relaxed) + 1 >= s.target {
                // In-flight commands still finish; the worker then flushes the
                // acknowledgements (this one's included) and returns.
                s.stop.cancel();
            }
        }
        outcome
    }
}

impl Exec {
    async fn run_command(&self, d: &Delivery) -> Outcome {
        let entry = &d.entry;
        let mut command = Command::new("sh");
        #[cfg(unix)]
        command.process_group(0);
        // A partitioned stream: the logical stream's name, the partition's
        // index in the environment and the input line.
        let partition = self
            .logical
            .as_ref()
            .and_then(|l| Some((l.stream.as_str(), *l.index.get(&*entry.stream)?)));
        if let Some((_, i)) = partition {
            command
                .env("STREAMBUS_PARTITION", i.to_string())
                .env("STREAMBUS_PARTITION_KEY", &*entry.stream);
        }
        let mut child = match command
            .arg("-c")
            .arg(&self.command)
            .env(
                "STREAMBUS_STREAM",
                partition.map_or(&*entry.stream, |(s, _)| s),
            )
            .env("STREAMBUS_ENTRY_ID", entry.id.to_string())
            .env("STREAMBUS_DELIVERIES", d.deliveries.to_string())
            .env("STREAMBUS_GROUP", &self.group)
            .env("STREAMBUS_CONSUMER", &self.consumer)
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            // Dropped when the shutdown grace runs out: the command must not
            // outlive the decision to leave its entry pending. (`group` below
            // also gets what the shell started.)
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(e) => return Outcome::retry(format!("cannot run sh -c: {e}")),
        };
        let mut group = KillGroupOnDrop(child.id());
        let mut input = match partition {
            Some((stream, i)) => crate::output::partition_entry_json(entry, stream, i).to_string(),
            None => entry.to_json().to_string(),
        };
        input.push('\n');
        let stdin = child.stdin.take();
        let stderr = child.stderr.take();
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A command may exit without reading its input: that is its choice,
                // and its exit status is what counts.
                let _ = stdin.write_all(input.as_bytes()).await;
                // Dropping stdin closes it: the command sees the end of its input.
            }
        };
        let mut last = LastLine::default();
        let status = {
            // Input, exit and stderr at the same time: a command may exit without
            // reading, or fill its stderr pipe before it exits.
            let mut exit = pin!(async { tokio::join!(child.wait(), feed).0 });
            let mut tee = pin!(tee_stderr(stderr, &mut last));
            tokio::select! {
                status = &mut exit => {
                    // stderr normally ends with the command; something it left
                    // running in the background may keep it open.
                    let _ = tokio::time::timeout(STDERR_DRAIN, &mut tee).await;
                    status
                }
                () = &mut tee => exit.await,
            }
        };
        // The shell has exited and been reaped: what it left running in the
        // background was meant to keep running.
        group.0 = None;
        match status {
            Ok(status) => {
                #[cfg(unix)]
                let signal = std::os::unix::process::ExitStatusExt::signal(&status);
                #[cfg(not(unix))]
                let signal = None;
                outcome(status.code(), signal, last.get().as_deref())
            }
            Err(e) => Outcome::retry(format!("cannot wait for the command: {e}")),
        }
    }
}

/// Kills the process group of a command (`process_group(0)`: its id is the
/// shell's pid) unless the shell was waited for.
struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pgid) = self.0.and_then(|id| libc::pid_t::try_from(id).ok()) {
            // SAFETY: kill(2) takes no pointers. The shell has not been reaped
            // (the guard is disarmed once it was), so its pid, which is the group
            // id, cannot have been reused. A failure (the group is already gone)
            // leaves nothing to do.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

/// What an exit status means for the entry. `last` is the command's last line
/// of stderr, appended to the reason.
fn outcome(code: Option<i32>, signal: Option<i32>, last: Option<&str>) -> Outcome {
    let reason = |what: String| match last {
        Some(line) => format!("{what}: {line}"),
        None => what,
    };
    match (code, signal) {
        (Some(0), _) => Outcome::Ack,
        (Some(EX_DATAERR), _) => {
            Outcome::dead_letter(reason(format!("command exited {EX_DATAERR} (EX_DATAERR)")))
        }
        (Some(EX_TEMPFAIL), _) => Outcome::retry(reason(format!(
            "command exited {EX_TEMPFAIL} (EX_TEMPFAIL)"
        ))),
        (Some(code), _) => Outcome::retry(reason(format!("command exited {code}"))),
        (None, Some(signal)) => {
            Outcome::retry(reason(format!("command killed by signal {signal}")))
        }
        (None, None) => Outcome::retry(reason("command ended without an exit code".to_owned())),
    }
}

/// Copies the command's stderr to ours as it comes, remembering its last line.
async fn tee_stderr(stderr: Option<impl AsyncRead + Unpin>, last: &mut LastLine) {
    let Some(mut stderr) = stderr else { return };
    let mut out = tokio::io::stderr();
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                last.push(&buf[..n]);
                // Our stderr gone is no reason to fail the entry.
                let _ = out.write_all(&buf[..n]).await;
            }
        }
    }
}

/// The last non-blank line of a byte stream fed in pieces, at most
/// [`MAX_REASON_LINE`] bytes of it.
#[derive(Debug, Default)]
struct LastLine {
    /// The line being read (no newline yet).
    current: Vec<u8>,
    /// The last complete non-blank line.
    last: Vec<u8>,
}

impl LastLine {
    fn push(&mut self, mut bytes: &[u8]) {
        while let Some(i) = bytes.iter().position(|&b| b == b'\n') {
            self.extend(&bytes[..i]);
            if is_blank(&self.current) {
                self.current.clear();
            } else {
                self.last = std::mem::take(&mut self.current);
            }
            bytes = &bytes[i + 1..];
        }
        self.extend(bytes);
    }

    fn extend(&mut self, bytes: &[u8]) {
        let room = MAX_REASON_LINE.saturating_sub(self.current.len());
        self.current
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// The last line, an unfinished one included; `None` if there was none.
    fn get(&self) -> Option<String> {
        let line = if is_blank(&self.current) {
            &self.last
        } else {
            &self.current
        };
        let text = String::from_utf8_lossy(line).trim().to_owned();
        (!text.is_empty()).then_some(text)
    }
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_decide_the_outcome() {
        assert_eq!(outcome(Some(0), None, Some("noise")), Outcome::Ack);
        assert_eq!(
            outcome(Some(65), None, Some("bad field x")),
            Outcome::dead_letter("command exited 65 (EX_DATAERR): bad field x")
        );
        assert_eq!(
            outcome(Some(65), None, None),
            Outcome::dead_letter("command exited 65 (EX_DATAERR)")
        );
        assert_eq!(
            outcome(Some(75), None, None),
            Outcome::retry("command exited 75 (EX_TEMPFAIL)")
        );
        assert_eq!(
            outcome(Some(1), None, None),
            Outcome::retry("command exited 1")
        );
        assert_eq!(
            outcome(None, Some(9), None),
            Outcome::retry("command killed by signal 9")
        );
    }

    #[test]
    fn last_line_across_pieces() {
        let mut l = LastLine::default();
        assert_eq!(l.get(), None);
        l.push(b"first\nsec");
        assert_eq!(l.get().as_deref(), Some("sec"));
        l.push(b"ond\n\n  \n");
        assert_eq!(l.get().as_deref(), Some("second"));
        l.push(&[b'x'; 1000]);
        assert_eq!(l.get().map(|s| s.len()), Some(MAX_REASON_LINE));
        l.push(b"\nlast\r\n");
        assert_eq!(l.get().as_deref(), Some("last"));
    }

    #[test]
    fn summary_mentions_unfinished_only_when_some() {
        let mut r = WorkerReport::default();
        assert_eq!(
            summary(&r),
            "delivered 0, acked 0, retried 0, dead-lettered 0, reclaimed 0"
        );
        r.unfinished = 2;
        assert!(summary(&r).ends_with(", unfinished 2 (left pending)"));
    }
}
