//! One copy of a `--pipe` command: started, fed and restarted by a task of its
//! own, so that the handler only sends a line and waits for its answer.
//!
//! The task owns the child. It writes the entries' lines to the child's stdin
//! (through a writer task, so that a child that stops reading never keeps us
//! from reading its answers), reads the answers from its stdout, and hands
//! each to the delivery waiting for that entry id. When the child exits, or
//! writes a line that is not an answer, every entry it held is retried and
//! the child is started again (after a backoff while it keeps failing).
//! Entries that arrive meanwhile wait for the new child: they are not charged
//! a delivery for the crash.

use std::collections::{HashMap, VecDeque};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use streambus::{Backoff, CancellationToken, EntryId, Outcome};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

use super::protocol::{self, EXPECTED};

/// One entry for the command: its line (with the newline) and where its
/// answer goes.
pub struct Request {
    pub id: EntryId,
    pub line: String,
    pub answer: oneshot::Sender<Outcome>,
}

/// How to start a copy.
pub struct Spec {
    pub command: String,
    pub env: Vec<(&'static str, String)>,
}

/// Restarts of a failing command: 100 ms doubling to 5 s; a copy that ran
/// [`HEALTHY_RUN`] before it ended starts again at once.
fn restart_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
}
const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// After its input is closed, how long a copy may take to exit before it is
/// killed.
pub const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Why a child stopped being used.
enum Ended {
    /// Its stdout ended or failed (it exited, or closed it).
    Closed,
    /// It wrote something that is not an answer.
    Garbage(String),
    /// No more entries will come (the worker stopped).
    Done,
}

/// Runs copy number `copy` of the command until `requests` ends.
pub async fn supervise(
    copy: usize,
    spec: Arc<Spec>,
    mut requests: mpsc::Receiver<Request>,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        let ended = match spawn(&spec, copy) {
            Ok(child) => run(copy, child, &mut requests).await,
            Err(e) => {
                eprintln!("error: cannot start the pipe command (copy {copy}): sh -c: {e}");
                Ended::Closed
            }
        };
        match ended {
            Ended::Done => return,
            Ended::Closed => eprintln!("warning: the pipe command (copy {copy}) exited; its unanswered entries will be retried"),
            Ended::Garbage(why) => eprintln!("error: the pipe command (copy {copy}) {why} ({EXPECTED}); restarted it, and its unanswered entries will be retried"),
        }
        if started.elapsed() >= HEALTHY_RUN {
            failures = 0;
        }
        let pause = restart_backoff().delay(failures);
        failures = failures.saturating_add(1);
        // Once the worker is stopping, a dead copy is not started again: what
        // still comes is answered "retry" (it stays pending).
        tokio::select! {
            () = tokio::time::sleep(pause), if !stop.is_cancelled() => {}
            () = stop.cancelled() => {
                requests.close();
                while let Some(r) = requests.recv().await {
                    let _ = r.answer.send(Outcome::retry("the pipe command had exited at shutdown"));
                }
                return;
            }
        }
    }
}

fn spawn(spec: &Spec, copy: usize) -> std::io::Result<Child> {
    let mut command = Command::new("sh");
    // A Ctrl-C at the terminal reaches streambus only: it closes the copies'
    // input once their entries are answered, and they exit by themselves.
    #[cfg(unix)]
    command.process_group(0);
    command
        .arg("-c")
        .arg(&spec.command)
        .envs(spec.env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("STREAMBUS_COPY", copy.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
}

/// Feeds one child and takes its answers until it ends or no more entries
/// come. Every entry it held and did not answer is answered "retry".
async fn run(copy: usize, mut child: Child, requests: &mut mpsc::Receiver<Request>) -> Ended {
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Ended::Closed;
    };
    let (lines, to_write) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_lines(stdin, to_write));
    let mut stdout = BufReader::with_capacity(64 * 1024, stdout);
    let mut waiting: HashMap<EntryId, VecDeque<oneshot::Sender<Outcome>>> = HashMap::new();
    let mut line = Vec::with_capacity(256);
    let mut open = true;
    let ended = loop {
        tokio::select! {
            read = stdout.read_until(b'\n', &mut line) => {
                match read {
                    Ok(0) | Err(_) => break if open { Ended::Closed } else { Ended::Done },
                    Ok(_) => {}
                }
                let text = line.strip_suffix(b"\n").unwrap_or(&line);
                match protocol::parse(text) {
                    Ok(a) => match waiting.get_mut(&a.id).and_then(VecDeque::pop_front) {
                        Some(waiter) => {
                            let _ = waiter.send(a.outcome);
                            if waiting.get(&a.id).is_some_and(VecDeque::is_empty) {
                                waiting.remove(&a.id);
                            }
                        }
                        None => break Ended::Garbage(format!("answered for entry {}, which it does not hold", a.id)),
                    },
                    Err(why) => {
                        let shown = String::from_utf8_lossy(&text[..text.len().min(200)]).into_owned();
                        break Ended::Garbage(format!("wrote a line that is not an answer ({why}): {shown:?}"));
                    }
                }
                line.clear();
            }
            request = requests.recv(), if open => match request {
                Some(r) => {
                    waiting.entry(r.id).or_default().push_back(r.answer);
                    if lines.send(r.line).is_err() {
                        break Ended::Closed;
                    }
                }
                // The worker has stopped: close the child's input and let it
                // finish what it holds.
                None => {
                    open = false;
                    if waiting.is_empty() {
                        break Ended::Done;
                    }
                }
            },
        }
        if !open && waiting.is_empty() {
            break Ended::Done;
        }
    };
    // Its input ends: a well-behaved command exits at the end of its input.
    drop(lines);
    let _ = writer.await;
    let reason = match &ended {
        Ended::Garbage(_) => "the pipe command wrote a line that is not an answer",
        _ => "the pipe command exited before answering",
    };
    for waiter in waiting.into_values().flatten() {
        let _ = waiter.send(Outcome::retry(reason));
    }
    match ended {
        Ended::Garbage(_) => {
            let _ = child.start_kill();
        }
        _ => {
            if tokio::time::timeout(EXIT_GRACE, child.wait())
                .await
                .is_err()
            {
                eprintln!("warning: the pipe command (copy {copy}) did not exit within {EXIT_GRACE:?} of the end of its input: killed it");
                let _ = child.start_kill();
            }
        }
    }
    let _ = child.wait().await;
    ended
}

/// Writes the lines to the child's stdin as they come, flushing whenever no
/// more are waiting (one write for many lines under load).
async fn write_lines(stdin: ChildStdin, mut lines: mpsc::UnboundedReceiver<String>) {
    let mut out = BufWriter::with_capacity(64 * 1024, stdin);
    while let Some(line) = lines.recv().await {
        if out.write_all(line.as_bytes()).await.is_err() {
            return;
        }
        while let Ok(line) = lines.try_recv() {
            if out.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
        if out.flush().await.is_err() {
            return;
        }
    }
    let _ = out.shutdown().await;
}
