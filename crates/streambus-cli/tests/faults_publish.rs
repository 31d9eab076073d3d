//! `streambus publish` reading JSON lines from stdin through faults: a Redis
//! SIGKILL and restart, a black hole, a reset storm, OOM, and Redis gone for
//! good. Each test feeds numbered lines through a pipe while the fault happens
//! and checks that the ids on stdout are exactly the stream's entries, in
//! input order, with no envelope id twice; and measures the recovery.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::faults::{aof_always, fast, proxied, runtime};
use common::{eventually, exit_within, wait_until};
use streambus::{Client, EntryId};
use streambus_testkit::{unique_prefix, RedisServer, ServerOptions};
/// Bound for "publish works again" after a fault ends: a timeout (0.5 s) on
/// the dead socket, a dial (up to 0.5 s), and at most 1 s between retries,
/// with margin for a loaded 2-core machine.
const RECOVERY_BOUND: Duration = Duration::from_secs(5);

/// A `streambus publish` with stdin fed by a thread and stdout and stderr
/// collected line by line as they come.
struct Publisher {
    child: Child,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
    feeder: Option<JoinHandle<()>>,
    /// Lines written to stdin so far.
    fed: Arc<AtomicUsize>,
    /// Set to make the feeder stop early (and close stdin).
    stop: Arc<AtomicBool>,
    /// Lines the feeder may write so far (it waits for more).
    allowed: Arc<AtomicUsize>,
}

/// One line of input: `{"n":N,...}`, about 100 bytes.
fn line(n: usize) -> String {
    format!("{{\"n\":{n},\"pad\":\"{}\"}}\n", "x".repeat(80))
}

impl Publisher {
    /// Starts `streambus publish STREAM EXTRA...` against `url` with short
    /// timeouts, and feeds it lines at `pace`.
    fn start(url: &str, stream: &str, extra: &[&str], pace: Pace) -> Publisher {
        let mut cmd = fast(url, &["publish", stream]);
        cmd.args(extra);
        let mut child = cmd.stdin(Stdio::piped()).spawn().expect("spawn streambus");
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), out.clone()),
            collect(child.stderr.take().unwrap(), err.clone()),
        ];
        let fed = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let allowed = Arc::new(AtomicUsize::new(pace.total));
        let stdin = child.stdin.take().unwrap();
        let feeder = {
            let (fed, stop, allowed) = (fed.clone(), stop.clone(), allowed.clone());
            std::thread::spawn(move || feed(stdin, pace, &fed, &stop, &allowed))
        };
        Publisher {
            child,
            out,
            err,
            readers,
            feeder: Some(feeder),
            fed,
            stop,
            allowed,
        }
    }

    /// Lets the feeder write only the first `n` lines until told more.
    fn allow(&self, n: usize) {
        self.allowed.store(n, Ordering::Relaxed);
    }

    /// Ids printed so far.
    fn printed(&self) -> usize {
        self.out.lock().unwrap().len()
    }

    fn stderr(&self) -> String {
        self.err.lock().unwrap().join("\n")
    }

    /// Waits until `n` ids are printed.
    #[track_caller]
    fn wait_printed(&self, n: usize, deadline: Duration) {
        assert!(
            eventually(deadline, || self.printed() >= n),
            "only {} of {n} ids printed within {deadline:?} ({} lines fed); stderr:\n{}",
            self.printed(),
            self.fed.load(Ordering::Relaxed),
            self.stderr()
        );
    }

    /// The time until more than `before` ids are printed.
    #[track_caller]
    fn time_to_progress(&self, before: usize, deadline: Duration) -> Duration {
        let start = Instant::now();
        assert!(
            eventually(deadline, || self.printed() > before),
            "no progress within {deadline:?} (still {before} ids); stderr:\n{}",
            self.stderr()
        );
        start.elapsed()
    }

    /// Waits for the exit (killed and failed after `deadline`): status,
    /// stdout lines, stderr lines.
    #[track_caller]
    fn finish(mut self, deadline: Duration) -> (ExitStatus, Vec<String>, Vec<String>) {
        let Some(status) = exit_within(&mut self.child, deadline) else {
            self.child.kill().ok();
            self.child.wait().ok();
            panic!(
                "streambus did not exit within {deadline:?}; stderr:\n{}",
                self.stderr()
            );
        };
        self.stop.store(true, Ordering::Relaxed);
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        if let Some(f) = self.feeder.take() {
            f.join().unwrap();
        }
        let out = std::mem::take(&mut *self.out.lock().unwrap());
        let err = std::mem::take(&mut *self.err.lock().unwrap());
        (status, out, err)
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // A failed test must not leave the process behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(
    r: impl std::io::Read + Send + 'static,
    into: Arc<Mutex<Vec<String>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines() {
            let Ok(l) = l else { break };
            into.lock().unwrap().push(l);
        }
    })
}

/// How the feeder writes: `total` lines, `batch` at a time, `pause` between
/// batches; stdin stays open after the last one with `keep_open`.
#[derive(Clone, Copy)]
struct Pace {
    total: usize,
    batch: usize,
    pause: Duration,
    keep_open: bool,
}

impl Pace {
    /// `total` lines, 20 every 10 ms (about 2,000 a second), then stdin
    /// closed: a steady stream that a fault interrupts.
    fn steady(total: usize) -> Pace {
        Pace {
            total,
            batch: 20,
            pause: Duration::from_millis(10),
            keep_open: false,
        }
    }

    /// `total` lines as fast as they are read, `batch` at a time; stdin
    /// stays open, so that only an error ends the run.
    fn flood(total: usize, batch: usize) -> Pace {
        Pace {
            total,
            batch,
            pause: Duration::ZERO,
            keep_open: true,
        }
    }
}

fn feed(
    mut stdin: ChildStdin,
    pace: Pace,
    fed: &AtomicUsize,
    stop: &AtomicBool,
    allowed: &AtomicUsize,
) {
    let Pace {
        total,
        batch,
        pause,
        keep_open,
    } = pace;
    let mut n = 0;
    while n < total && !stop.load(Ordering::Relaxed) {
        let end = (n + batch).min(total).min(allowed.load(Ordering::Relaxed));
        if end <= n {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let text: String = (n..end).map(line).collect();
        // Blocks while streambus reads no further (Redis away): back-pressure.
        // A broken pipe means streambus exited: the test then says why.
        if stdin.write_all(text.as_bytes()).is_err() {
            return;
        }
        n = end;
        fed.store(n, Ordering::Relaxed);
        std::thread::sleep(pause);
    }
    while keep_open && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every entry of `stream`: (entry id, envelope id, n).
fn stream_entries(
    rt: &tokio::runtime::Runtime,
    url: &str,
    stream: &str,
) -> Vec<(EntryId, String, u64)> {
    rt.block_on(async {
        let client = Client::open(url).unwrap();
        let mut conn = client.connect().await.unwrap();
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = streambus::read::range_after(&mut conn, stream, after, 1000)
                .await
                .unwrap();
            for e in &page {
                let env = e.envelope().unwrap().expect("an envelope");
                let n = env.data_value().unwrap()["n"].as_u64().unwrap();
                all.push((e.id, env.id.clone(), n));
            }
            if page.len() < 1000 {
                return all;
            }
            after = page.last().map(|e| e.id);
        }
    })
}

/// The stream holds exactly the lines whose ids were printed, in input
/// order, each once; returns how many.
#[track_caller]
fn assert_exact(entries: &[(EntryId, String, u64)], out: &[String]) -> usize {
    let ids: Vec<String> = entries.iter().map(|e| e.0.to_string()).collect();
    assert_eq!(ids.len(), out.len(), "entries in the stream vs ids printed");
    assert!(
        ids == out,
        "the ids printed are not the stream's entries in order"
    );
    let ns: Vec<u64> = entries.iter().map(|e| e.2).collect();
    let expected: Vec<u64> = (0..ns.len() as u64).collect();
    if ns != expected {
        let first = ns.iter().zip(&expected).position(|(a, b)| a != b);
        panic!("lines are not in input order, or missing, from position {first:?}");
    }
    let unique: HashSet<&str> = entries.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(
        unique.len(),
        entries.len(),
        "an envelope id is in the stream twice"
    );
    entries.len()
}

/// The run succeeded, and the stream holds exactly the lines whose ids were
/// printed, all `total` of them, in input order, each once.
#[track_caller]
fn assert_all_published(
    rt: &tokio::runtime::Runtime,
    url: &str,
    stream: &str,
    (status, out, err): (&ExitStatus, &[String], &[String]),
    total: usize,
) {
    let err = err.join("\n");
    assert!(status.success(), "status {status:?}, stderr:\n{err}");
    let n = assert_exact(&stream_entries(rt, url, stream), out);
    assert_eq!(n, total, "stderr:\n{err}");
}

/// Our own warning lines (not the library's logs).
fn warnings(err: &[String]) -> Vec<&String> {
    err.iter()
        .filter(|l| l.starts_with("warning: Redis at"))
        .collect()
}

/// Resets every connection through `proxy` every `every`, for `length`.
fn reset_storm_for(proxy: &streambus_testkit::FaultProxy, length: Duration, every: Duration) {
    let storm = Instant::now();
    while storm.elapsed() < length {
        proxy.reset_all();
        // The storm's rhythm: a fault, not a wait for something.
        std::thread::sleep(every);
    }
}

#[test]
fn redis_sigkill_and_restart_with_aof_always() {
    let mut server = RedisServer::start_with(aof_always());
    let rt = runtime();
    let stream = unique_prefix("pubkill");
    let total = 6000;
    let p = Publisher::start(&server.url(), &stream, &[], Pace::steady(total));
    p.wait_printed(1000, Duration::from_secs(10));
    server.kill();
    // Down until publish has noticed and said so (it then waits, retrying),
    // as a restart of a real server would be.
    wait_until(
        Duration::from_secs(20),
        "publish warning that Redis is away",
        || p.stderr().contains("warning: Redis at"),
    );
    server.restart();
    let before = p.printed();
    let recovered = p.time_to_progress(before, RECOVERY_BOUND);
    let healed_at = Instant::now() - recovered;
    let (status, out, err) = p.finish(Duration::from_secs(30));
    let all_done = healed_at.elapsed();
    assert_all_published(&rt, &server.url(), &stream, (&status, &out, &err), total);
    let w = warnings(&err);
    assert!(!w.is_empty() && w.len() <= 2, "warnings: {w:#?}");
    eprintln!(
        "restart: first id {recovered:?} after Redis was back, all {total} lines {all_done:?} after (feed-paced); stderr:\n{}",
        err.join("\n")
    );
    assert!(recovered < RECOVERY_BOUND);
}

#[test]
fn black_hole_then_heal_new_connections_only() {
    let s = proxied(false);
    let stream = unique_prefix("pubhole");
    let total = 6000;
    let p = Publisher::start(&s.proxy.url(), &stream, &[], Pace::steady(total));
    p.wait_printed(1000, Duration::from_secs(10));
    let accepted = s.proxy.connections_accepted();
    s.proxy.black_hole();
    let cut = Instant::now();
    // Until the publisher has given up the silent connection and dialed
    // anew twice (the new connections are swallowed too).
    s.wait_for_dials(accepted, 2, "two dials into the black hole");
    let during = p.printed();
    s.proxy.heal();
    let recovered = p.time_to_progress(during, RECOVERY_BOUND);
    let (status, out, err) = p.finish(Duration::from_secs(30));
    assert_all_published(&s.rt, &s.redis.url(), &stream, (&status, &out, &err), total);
    let w = warnings(&err);
    // One at the first failure, then at most one per 5 s.
    assert!(!w.is_empty() && w.len() <= 2, "warnings: {w:#?}");
    eprintln!(
        "black hole until two redials: first id {recovered:?} after heal ({:?} after the cut); stderr:\n{}",
        cut.elapsed(),
        err.join("\n")
    );
    assert!(recovered < RECOVERY_BOUND);
}

#[test]
fn reset_storm() {
    let s = proxied(false);
    let stream = unique_prefix("pubreset");
    let total = 12000;
    let p = Publisher::start(&s.proxy.url(), &stream, &[], Pace::steady(total));
    p.wait_printed(500, Duration::from_secs(10));
    reset_storm_for(&s.proxy, Duration::from_secs(3), Duration::from_millis(500));
    let after = p.printed();
    let recovered = p.time_to_progress(after, RECOVERY_BOUND);
    let (status, out, err) = p.finish(Duration::from_secs(30));
    assert_all_published(&s.rt, &s.redis.url(), &stream, (&status, &out, &err), total);
    eprintln!(
        "reset storm 3 s: next id {recovered:?} after it; {} accepted connections; stderr:\n{}",
        s.proxy.connections_accepted(),
        err.join("\n")
    );
    assert!(recovered < RECOVERY_BOUND);
}

/// With `--json`, lines settled by reading the stream back after a reset
/// report the envelope id they were written with, like the others.
#[test]
fn reset_storm_with_json_reports_the_envelope_ids_written() {
    let s = proxied(false);
    let stream = unique_prefix("pubjson");
    let total = 6000;
    let p = Publisher::start(&s.proxy.url(), &stream, &["--json"], Pace::steady(total));
    p.wait_printed(500, Duration::from_secs(10));
    reset_storm_for(
        &s.proxy,
        Duration::from_millis(1500),
        Duration::from_millis(300),
    );
    let (status, out, err) = p.finish(Duration::from_secs(30));
    assert!(status.success(), "{status:?}, stderr:\n{}", err.join("\n"));
    let entries = stream_entries(&s.rt, &s.redis.url(), &stream);
    let printed: Vec<(String, String)> = out
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["stream"], stream.as_str(), "{l}");
            let field = |name: &str| v[name].as_str().unwrap().to_owned();
            (field("entry_id"), field("envelope_id"))
        })
        .collect();
    let ids: Vec<String> = printed.iter().map(|p| p.0.clone()).collect();
    assert_eq!(assert_exact(&entries, &ids), total);
    for (e, (_, envelope_id)) in entries.iter().zip(&printed) {
        assert_eq!(&e.1, envelope_id, "entry {}", e.0);
    }
    eprintln!(
        "reset storm 1.5 s with --json: {} accepted connections; stderr:\n{}",
        s.proxy.connections_accepted(),
        err.join("\n")
    );
}

#[test]
fn out_of_memory_stops_with_the_first_unpublished_line() {
    let server = RedisServer::start_with(ServerOptions {
        extra_args: ["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]
            .map(String::from)
            .to_vec(),
        ..ServerOptions::default()
    });
    let rt = runtime();
    let stream = unique_prefix("puboom");
    let start = Instant::now();
    let p = Publisher::start(&server.url(), &stream, &[], Pace::flood(200_000, 1000));
    let (status, out, err) = p.finish(Duration::from_secs(30));
    let took = start.elapsed();
    assert!(!status.success(), "it must fail at maxmemory");
    let n = assert_exact(&stream_entries(&rt, &server.url(), &stream), &out);
    assert!(n > 0, "something fits before maxmemory");
    let last = err.last().expect("an error line");
    let first_unpublished = format!("error: line {} not published: ", n + 1);
    assert!(last.starts_with(&first_unpublished), "{last}");
    assert!(last.contains("OOM"), "{last}");
    assert!(
        last.ends_with(&format!(
            "resume with: tail -n +{} FILE | streambus publish {stream}",
            n + 1
        )),
        "{last}"
    );
    assert!(
        warnings(&err).is_empty(),
        "a permanent error is not waited for: {err:#?}"
    );
    eprintln!("OOM: {n} lines in, stopped after {took:?}: {last}");
    assert!(took < Duration::from_secs(10));
}

#[test]
fn gives_up_after_retry_for_when_redis_is_gone() {
    let mut server = RedisServer::start();
    let stream = unique_prefix("pubgone");
    let p = Publisher::start(
        &server.url(),
        &stream,
        &["--retry-for", "2s"],
        Pace::flood(150, 50),
    );
    p.allow(100);
    p.wait_printed(100, Duration::from_secs(10));
    server.kill();
    // More input once Redis is gone; stdin stays open, so only giving up
    // ends the run.
    let gone = Instant::now();
    p.allow(150);
    let (status, out, err) = p.finish(Duration::from_secs(15));
    let took = gone.elapsed();
    assert!(!status.success());
    assert_eq!(out.len(), 100, "the first 100 lines' ids");
    let last = err.last().expect("an error line");
    assert!(
        last.starts_with("error: line 101 not published: "),
        "{last}"
    );
    assert!(last.contains("--retry-for of 2.0s"), "{last}");
    assert!(last.contains("tail -n +101 FILE"), "{last}");
    eprintln!(
        "gone for good: gave up {took:?} after the kill; stderr:\n{}",
        err.join("\n")
    );
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "{took:?}"
    );
}
