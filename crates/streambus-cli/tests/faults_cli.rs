//! The printing `streambus consume`, `tail --follow` and `monitor --watch`
//! through network faults and Redis restarts: a real `redis-server` behind
//! the testkit's `FaultProxy`, entries published straight to Redis (not
//! through the proxy) while the fault lasts.
//!
//! Each test checks that every entry published was printed exactly once (no
//! loss, no duplicate), that the group has nothing pending at the end, and
//! measures the time from the end of the fault to the first entry printed
//! after it (printed with `eprintln!`: `cargo test --test faults_cli --
//! --nocapture`). The commands run with 500 ms timeouts
//! (`--response-timeout 500ms --connect-timeout 500ms`) and, for consume,
//! `--max-wait 500ms`: an attempt under way when the network heals then
//! fails within about 1 s, and the backoff adds at most 2 s, so every
//! recovery is asserted within [`RECOVERY`].
//!
//! Conditions are polled with a deadline; the only fixed waits are the
//! lengths of the faults themselves.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use streambus_testkit::{Appendfsync, FaultProxy, RedisServer, ServerOptions};

use common::{eventually, pending, sb_url, wait_until};

/// How long any one step may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(15);
/// The bound asserted on the time from heal (or restart) to the first entry
/// printed: the in-flight attempt fails within about 1 s at 500 ms timeouts,
/// the backoff adds at most 2 s, the rest is round trips.
const RECOVERY: Duration = Duration::from_secs(5);
/// The short timeouts of every command under test.
const TIMEOUTS: [&str; 4] = ["--response-timeout", "500ms", "--connect-timeout", "500ms"];

/// A Redis server (AOF `always` when asked), the proxy in front of it, and
/// the runtime the proxy runs on.
struct Setup {
    redis: RedisServer,
    proxy: FaultProxy,
    // Last: the proxy's tasks run on it.
    _rt: tokio::runtime::Runtime,
}

fn setup(aof: bool) -> Setup {
    setup_with(ServerOptions {
        appendonly: aof,
        appendfsync: Appendfsync::Always,
        ..Default::default()
    })
}

fn setup_with(opts: ServerOptions) -> Setup {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis = RedisServer::start_with(opts);
    let upstream = format!("127.0.0.1:{}", redis.port()).parse().unwrap();
    let proxy = rt.block_on(FaultProxy::start(upstream)).unwrap();
    Setup {
        redis,
        proxy,
        _rt: rt,
    }
}

/// Adds `n` entries (`n` = `from`, `from + 1`, ...) to `stream` in one call,
/// straight to Redis; returns their ids.
fn add(redis: &RedisServer, stream: &str, from: u32, n: u32) -> Vec<String> {
    let out = redis.cli(&[
        "EVAL",
        "local ids = {} for i = 0, tonumber(ARGV[2]) - 1 do ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'n', tonumber(ARGV[1]) + i) end return ids",
        "1",
        stream,
        &from.to_string(),
        &n.to_string(),
    ]);
    let ids: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(ids.len(), n as usize, "XADD: {out}");
    ids
}

/// Adds `n` entries with a 2 KiB payload each (see [`add`]).
fn add_big(redis: &RedisServer, stream: &str, from: u32, n: u32) -> Vec<String> {
    let payload = "x".repeat(2048);
    let out = redis.cli(&[
        "EVAL",
        "local ids = {} for i = 0, tonumber(ARGV[2]) - 1 do ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'n', tonumber(ARGV[1]) + i, 'payload', ARGV[3]) end return ids",
        "1",
        stream,
        &from.to_string(),
        &n.to_string(),
        &payload,
    ]);
    let ids: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(ids.len(), n as usize, "XADD: {out}");
    ids
}

/// A running `streambus` whose stdout lines are collected with the time each
/// arrived.
struct Running {
    child: Child,
    /// While set, stdout is not read: the pipe fills and the command blocks
    /// in a write (between printing a batch and acknowledging it).
    paused: Arc<AtomicBool>,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd.spawn().expect("spawn streambus");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let l = Arc::clone(&lines);
        let e = Arc::clone(&stderr);
        let paused = Arc::new(AtomicBool::new(false));
        let p = Arc::clone(&paused);
        let readers = vec![
            std::thread::spawn(move || {
                let mut out = BufReader::new(out);
                loop {
                    while p.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    let mut line = String::new();
                    match out.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = line.trim_end_matches('\n').to_owned();
                            l.lock().unwrap().push((Instant::now(), line));
                        }
                    }
                }
            }),
            std::thread::spawn(move || {
                let mut err = err;
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    e.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }),
        ];
        Running {
            child,
            paused,
            lines,
            stderr,
            readers,
        }
    }

    fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until at least `n` lines were printed.
    #[track_caller]
    fn wait_lines(&self, n: usize, what: &str) {
        if !eventually(DEADLINE, || self.count() >= n) {
            panic!(
                "timed out waiting for {what}: {} of {n} lines; stderr:\n{}",
                self.count(),
                self.stderr()
            );
        }
    }

    /// The time from `t` to the first line that arrived after it.
    fn first_after(&self, t: Instant) -> Option<Duration> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find(|(at, _)| *at >= t)
            .map(|(at, _)| *at - t)
    }

    /// Waits for the process to exit by itself.
    #[track_caller]
    fn exit(mut self) -> (ExitStatus, Vec<String>, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > DEADLINE {
                self.child.kill().ok();
                self.child.wait().ok();
                panic!(
                    "streambus did not exit within {DEADLINE:?}: {} lines; stderr:\n{}",
                    self.count(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.finish(status)
    }

    /// Stops the process (SIGTERM) and waits for it.
    fn stop(mut self) -> (ExitStatus, Vec<String>, String) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > DEADLINE {
                self.child.kill().ok();
                break self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.finish(status)
    }

    fn finish(mut self, status: ExitStatus) -> (ExitStatus, Vec<String>, String) {
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        let lines = self
            .lines
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.clone())
            .collect();
        (status, lines, self.stderr())
    }
}

/// `streambus consume STREAM --group g --consumer c1 --count N` through the
/// proxy, with the short timeouts.
fn consume(url: &str, stream: &str, count: usize, extra: &[&str]) -> Running {
    let count = count.to_string();
    let mut args: Vec<&str> = TIMEOUTS.to_vec();
    args.extend([
        "consume",
        stream,
        "--group",
        "g",
        "--consumer",
        "c1",
        "--max-wait",
        "500ms",
        "--count",
        &count,
    ]);
    args.extend(extra);
    Running::spawn(sb_url(url, &args))
}

/// The entry ids of printed lines, in order.
fn ids(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            v["entry_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Every published entry printed exactly once (in any order).
#[track_caller]
fn assert_exactly_once(printed: &[String], published: &[String]) {
    let set: HashSet<&String> = printed.iter().collect();
    assert_eq!(set.len(), printed.len(), "an entry was printed twice");
    let want: HashSet<&String> = published.iter().collect();
    let lost = want.difference(&set).count();
    let extra = set.difference(&want).count();
    assert_eq!(
        (lost, extra),
        (0, 0),
        "lost {lost}, printed {extra} never published"
    );
}

/// One warning when Redis went away and a line when it came back.
#[track_caller]
fn assert_outage_noted(stderr: &str) {
    let warnings = stderr.matches("Redis unreachable").count();
    assert_eq!(warnings, 1, "one warning per outage; stderr:\n{stderr}");
    assert!(
        stderr.contains("Redis is back after"),
        "no recovery line; stderr:\n{stderr}"
    );
}

#[test]
fn consume_through_a_black_hole_prints_every_entry_once() {
    let s = setup(false);
    let stream = "bh";
    let mut published = add(&s.redis, stream, 0, 50);
    let run = consume(&s.proxy.url(), stream, 150, &[]);
    run.wait_lines(50, "the entries before the fault");

    s.proxy.black_hole();
    let cut = Instant::now();
    published.extend(add(&s.redis, stream, 50, 50));
    // The fault lasts 3 s, whatever happens meanwhile.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(cut.elapsed()));
    assert_eq!(run.count(), 50, "nothing gets through a black hole");
    s.proxy.heal();
    let healed = Instant::now();
    published.extend(add(&s.redis, stream, 100, 50));

    run.wait_lines(51, "the first entry after heal");
    let recovery = run.first_after(healed).unwrap();
    let (status, lines, stderr) = run.exit();
    eprintln!("consume, black hole 3 s: first entry {recovery:?} after heal");
    assert!(status.success(), "{status:?}: {stderr}");
    assert_exactly_once(&ids(&lines), &published);
    assert_eq!(pending(&s.redis, stream, "g"), 0);
    assert_outage_noted(&stderr);
    assert!(recovery <= RECOVERY, "recovered after {recovery:?}");
}

/// The fault strikes between printing a batch and acknowledging it: stdout
/// is not read until the network is cut, so consume is held in its write
/// with a batch delivered and not acknowledged; its acknowledgement then
/// goes into the black hole and has to be retried after heal. No entry may
/// be printed twice (a consumer that re-read its pending entries and printed
/// them again would), and nothing may stay pending.
#[test]
fn consume_retries_an_ack_lost_in_a_black_hole_without_printing_twice() {
    let s = setup(false);
    let stream = "lostack";
    let mut published = add_big(&s.redis, stream, 0, 100);
    let run = consume(&s.proxy.url(), stream, 150, &["--batch-size", "10"]);
    run.paused.store(true, Ordering::Relaxed);
    // Held in its write: a batch stays delivered and unacknowledged.
    let mut held = 0;
    wait_until(DEADLINE, "consume held with a batch pending", || {
        let summary = s.redis.cli(&["XPENDING", stream, "g"]);
        held = if summary.lines().next() == Some("10") {
            held + 1
        } else {
            0
        };
        held >= 5
    });
    s.proxy.black_hole();
    let cut = Instant::now();
    run.paused.store(false, Ordering::Relaxed);
    published.extend(add_big(&s.redis, stream, 100, 50));
    std::thread::sleep(Duration::from_secs(3).saturating_sub(cut.elapsed()));
    let before_heal = run.count();
    assert_eq!(
        pending(&s.redis, stream, "g"),
        10,
        "the ack went into the black hole"
    );
    s.proxy.heal();
    let healed = Instant::now();

    run.wait_lines(before_heal + 1, "the first entry after heal");
    let recovery = run.first_after(healed).unwrap();
    let (status, lines, stderr) = run.exit();
    eprintln!("consume, ack lost in a black hole of 3 s: first entry {recovery:?} after heal");
    assert!(status.success(), "{status:?}: {stderr}");
    assert_exactly_once(&ids(&lines), &published);
    assert_eq!(pending(&s.redis, stream, "g"), 0);
    assert_outage_noted(&stderr);
    assert!(
        stderr.contains("cannot acknowledge"),
        "the acknowledgement failed first: {stderr}"
    );
    assert!(recovery <= RECOVERY, "recovered after {recovery:?}");
}

#[test]
fn consume_through_a_reset_storm_prints_every_entry_once() {
    let s = setup(false);
    let stream = "storm";
    let mut published = add(&s.redis, stream, 0, 50);
    let run = consume(&s.proxy.url(), stream, 200, &[]);
    run.wait_lines(50, "the entries before the fault");

    // A reset every 500 ms for 3 s, entries arriving all the while.
    let mut last_reset = Instant::now();
    for i in 0..6 {
        s.proxy.reset_all();
        last_reset = Instant::now();
        published.extend(add(&s.redis, stream, 50 + i * 20, 20));
        std::thread::sleep(Duration::from_millis(500).saturating_sub(last_reset.elapsed()));
    }
    published.extend(add(&s.redis, stream, 170, 30));

    let (status, lines, stderr) = {
        run.wait_lines(200, "every entry");
        let recovery = run.first_after(last_reset).unwrap();
        eprintln!("consume, reset storm (6 resets 500 ms apart): first entry {recovery:?} after the last reset");
        assert!(recovery <= RECOVERY, "recovered after {recovery:?}");
        run.exit()
    };
    assert!(status.success(), "{status:?}: {stderr}");
    assert_exactly_once(&ids(&lines), &published);
    assert_eq!(pending(&s.redis, stream, "g"), 0);
}

#[test]
fn consume_through_latency_spikes_neither_reconnects_nor_duplicates() {
    let s = setup(false);
    let stream = "slow";
    let mut published = add(&s.redis, stream, 0, 50);
    // Well above a round trip under 1 s of latency each way (2 s).
    let mut args: Vec<&str> = vec!["--response-timeout", "4s", "--connect-timeout", "4s"];
    args.extend([
        "consume",
        stream,
        "--group",
        "g",
        "--consumer",
        "c1",
        "--max-wait",
        "500ms",
        "--count",
        "150",
    ]);
    let run = Running::spawn(sb_url(&s.proxy.url(), &args));
    run.wait_lines(50, "the entries before the fault");
    let accepted = s.proxy.connections_accepted();

    s.proxy.latency(Duration::from_secs(1));
    let start = Instant::now();
    published.extend(add(&s.redis, stream, 50, 50));
    std::thread::sleep(Duration::from_secs(3).saturating_sub(start.elapsed()));
    s.proxy.pass_through();
    let healed = Instant::now();
    published.extend(add(&s.redis, stream, 100, 50));

    run.wait_lines(150, "every entry");
    let recovery = run.first_after(healed).unwrap();
    let after = s.proxy.connections_accepted();
    let (status, lines, stderr) = run.exit();
    eprintln!(
        "consume, 1 s latency for 3 s: {} new connections; first entry {recovery:?} after the latency ended",
        after - accepted
    );
    assert!(status.success(), "{status:?}: {stderr}");
    assert_exactly_once(&ids(&lines), &published);
    assert_eq!(pending(&s.redis, stream, "g"), 0);
    assert!(
        after - accepted <= 1,
        "a reconnect storm: {} new connections under latency; stderr:\n{stderr}",
        after - accepted
    );
    assert!(
        !stderr.contains("Redis unreachable"),
        "latency below the timeout is no outage; stderr:\n{stderr}"
    );
    assert!(recovery <= RECOVERY, "recovered after {recovery:?}");
}

#[test]
fn consume_through_a_redis_crash_with_aof_prints_every_entry_once() {
    let mut s = setup(true);
    let stream = "crash";
    let mut published = add(&s.redis, stream, 0, 50);
    let run = consume(&s.proxy.url(), stream, 150, &[]);
    run.wait_lines(30, "some entries before the crash");

    // SIGKILL in the middle of the backlog, then a restart on the same port.
    s.redis.kill();
    let killed = Instant::now();
    s.redis.restart();
    let restarted = Instant::now();
    published.extend(add(&s.redis, stream, 50, 100));

    run.wait_lines(51, "entries after the restart");
    let recovery = run.first_after(restarted).unwrap();
    let (status, lines, stderr) = run.exit();
    eprintln!(
        "consume, SIGKILL + restart (AOF always, down {:?}): first entry {recovery:?} after the restart",
        restarted - killed
    );
    assert!(status.success(), "{status:?}: {stderr}");
    assert_exactly_once(&ids(&lines), &published);
    assert_eq!(pending(&s.redis, stream, "g"), 0);
    assert!(recovery <= RECOVERY, "recovered after {recovery:?}");
}

#[test]
fn consume_recreates_the_group_after_a_restart_without_persistence() {
    let mut s = setup(false);
    let stream = "amnesia";
    let before = add(&s.redis, stream, 0, 50);
    let run = consume(&s.proxy.url(), stream, 100, &[]);
    // All of them: what is not printed before the restart is gone with it.
    run.wait_lines(50, "the entries before the restart");

    s.redis.kill();
    s.redis.restart();
    let restarted = Instant::now();
    assert_eq!(common::xlen(&s.redis, stream), 0, "no persistence");
    let after = add(&s.redis, stream, 50, 50);

    run.wait_lines(51, "entries after the restart");
    let recovery = run.first_after(restarted).unwrap();
    let (status, lines, stderr) = run.exit();
    eprintln!("consume, restart without persistence: first entry {recovery:?} after the restart");
    assert!(status.success(), "{status:?}: {stderr}");
    let published: Vec<String> = before.into_iter().chain(after).collect();
    assert_exactly_once(&ids(&lines), &published);
    assert_eq!(pending(&s.redis, stream, "g"), 0);
    assert!(
        stderr.contains("recreated it from the start of the stream"),
        "stderr:\n{stderr}"
    );
    assert!(recovery <= RECOVERY, "recovered after {recovery:?}");
}

#[test]
fn consume_with_no_create_stops_when_the_group_vanishes() {
    let mut s = setup(false);
    let stream = "strict";
    add(&s.redis, stream, 0, 10);
    s.redis.cli(&["XGROUP", "CREATE", stream, "g", "0"]);
    let run = consume(&s.proxy.url(), stream, 100, &["--no-create"]);
    run.wait_lines(10, "the entries before the restart");
    s.redis.kill();
    s.redis.restart();
    add(&s.redis, stream, 10, 10);
    let (status, lines, stderr) = run.exit();
    assert!(!status.success(), "it must stop: {stderr}");
    assert_eq!(lines.len(), 10);
    assert!(
        stderr.contains("--no-create forbids creating it"),
        "{stderr}"
    );
}

/// `streambus tail STREAM --from 0 --count N --follow` through the proxy.
fn tail(url: &str, stream: &str, count: usize) -> Running {
    let count = count.to_string();
    let mut args: Vec<&str> = TIMEOUTS.to_vec();
    args.extend(["tail", stream, "--from", "0", "--count", &count, "--follow"]);
    Running::spawn(sb_url(url, &args))
}

#[test]
fn tail_follows_through_a_black_hole_without_gap_or_duplicate() {
    let s = setup(false);
    let stream = "tbh";
    let mut published = add(&s.redis, stream, 0, 50);
    let run = tail(&s.proxy.url(), stream, 150);
    run.wait_lines(50, "the history");

    s.proxy.black_hole();
    let cut = Instant::now();
    published.extend(add(&s.redis, stream, 50, 50));
    std::thread::sleep(Duration::from_secs(3).saturating_sub(cut.elapsed()));
    assert_eq!(run.count(), 50, "nothing gets through a black hole");
    s.proxy.heal();
    let healed = Instant::now();
    published.extend(add(&s.redis, stream, 100, 50));

    run.wait_lines(51, "the first entry after heal");
    let recovery = run.first_after(healed).unwrap();
    let (status, lines, stderr) = run.exit();
    eprintln!("tail --follow, black hole 3 s: first entry {recovery:?} after heal");
    assert!(status.success(), "{status:?}: {stderr}");
    assert_eq!(ids(&lines), published, "exactly the entries, in order");
    assert_outage_noted(&stderr);
    assert!(recovery <= RECOVERY, "recovered after {recovery:?}");
}

#[test]
fn tail_follows_through_a_redis_crash_with_aof_without_gap_or_duplicate() {
    let mut s = setup(true);
    let stream = "tcrash";
    let mut published = add(&s.redis, stream, 0, 50);
    let run = tail(&s.proxy.url(), stream, 150);
    run.wait_lines(50, "the history");

    s.redis.kill();
    s.redis.restart();
    let restarted = Instant::now();
    published.extend(add(&s.redis, stream, 50, 100));

    run.wait_lines(51, "entries after the restart");
    let recovery = run.first_after(restarted).unwrap();
    let (status, lines, stderr) = run.exit();
    eprintln!(
        "tail --follow, SIGKILL + restart (AOF always): first entry {recovery:?} after the restart"
    );
    assert!(status.success(), "{status:?}: {stderr}");
    assert_eq!(ids(&lines), published, "exactly the entries, in order");
    assert!(recovery <= RECOVERY, "recovered after {recovery:?}");
}

/// What a `monitor --json` line is: a snapshot (with its length) or an error.
fn monitor_line(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn monitor_watch_says_redis_is_unreachable_and_recovers() {
    let s = setup(false);
    let stream = "mon";
    add(&s.redis, stream, 0, 5);
    let mut args: Vec<&str> = TIMEOUTS.to_vec();
    args.extend(["monitor", stream, "--watch=200ms", "--json"]);
    let run = Running::spawn(sb_url(&s.proxy.url(), &args));
    run.wait_lines(1, "the first snapshot");

    // Open connections go silent, new ones are refused.
    s.proxy.black_hole();
    s.proxy.refuse();
    let cut = Instant::now();
    wait_until(DEADLINE, "an error line", || {
        let lines = run.lines.lock().unwrap();
        lines
            .iter()
            .filter(|(at, _)| *at >= cut)
            .any(|(_, l)| monitor_line(l).get("error").is_some())
    });
    let noticed = cut.elapsed();
    // Sure to be down for a while: a few more error lines.
    let n = run.count();
    run.wait_lines(n + 2, "more error lines");
    s.proxy.heal();
    let healed = Instant::now();
    add(&s.redis, stream, 5, 5);
    wait_until(DEADLINE, "a snapshot after heal", || {
        let lines = run.lines.lock().unwrap();
        lines
            .iter()
            .filter(|(at, _)| *at >= healed)
            .any(|(_, l)| monitor_line(l)["length"] == 10)
    });
    let recovery = {
        let lines = run.lines.lock().unwrap();
        lines
            .iter()
            .find(|(at, l)| *at >= healed && monitor_line(l)["length"] == 10)
            .map(|(at, _)| *at - healed)
            .unwrap()
    };
    let (_status, lines, stderr) = run.stop();
    eprintln!(
        "monitor --watch=200ms: unreachable shown {noticed:?} after the cut, a snapshot {recovery:?} after heal"
    );
    let errors: Vec<Value> = lines
        .iter()
        .map(|l| monitor_line(l))
        .filter(|v| v.get("error").is_some())
        .collect();
    assert!(!errors.is_empty());
    for e in &errors {
        let text = e["error"].as_str().unwrap();
        assert!(text.starts_with("redis unreachable: "), "{e}");
        assert!(e["since"].as_u64().is_some(), "{e}");
        assert_eq!(e["stream"], stream, "{e}");
    }
    // One `since` for the whole outage.
    let since: HashSet<u64> = errors
        .iter()
        .map(|e| e["since"].as_u64().unwrap())
        .collect();
    assert_eq!(since.len(), 1, "{errors:?}");
    assert_outage_noted(&stderr);
    assert!(recovery <= RECOVERY, "recovered after {recovery:?}");
}

#[test]
fn monitor_watch_text_says_redis_is_unreachable() {
    let s = setup(false);
    let stream = "montext";
    add(&s.redis, stream, 0, 5);
    let mut args: Vec<&str> = TIMEOUTS.to_vec();
    args.extend(["monitor", stream, "--watch=200ms"]);
    let run = Running::spawn(sb_url(&s.proxy.url(), &args));
    run.wait_lines(1, "the first snapshot");
    s.proxy.refuse();
    s.proxy.reset_all();
    let has = |what: &str| {
        run.lines
            .lock()
            .unwrap()
            .iter()
            .any(|(_, l)| l.contains(what))
    };
    wait_until(DEADLINE, "the unreachable line", || {
        has("Redis unreachable for ")
    });
    s.proxy.pass_through();
    let healed = Instant::now();
    wait_until(DEADLINE, "a snapshot after heal", || {
        run.lines
            .lock()
            .unwrap()
            .iter()
            .any(|(at, l)| *at >= healed && l.starts_with("stream montext: length 5"))
    });
    let (_status, _lines, stderr) = run.stop();
    assert_outage_noted(&stderr);
}

#[test]
fn consume_with_a_wrong_password_fails_at_once() {
    let s = setup_with(ServerOptions {
        password: Some("right".to_owned()),
        ..Default::default()
    });
    let url = format!("redis://:wrong@{}", s.proxy.addr());
    let start = Instant::now();
    let run = consume(&url, "locked", 10, &[]);
    let (status, _lines, stderr) = run.exit();
    eprintln!(
        "consume, wrong password: exited after {:?}",
        start.elapsed()
    );
    assert!(!status.success());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("password"), "{stderr}");
}

#[test]
fn consume_of_a_key_that_is_not_a_stream_fails_at_once() {
    let s = setup(false);
    s.redis.cli(&["SET", "plain", "x"]);
    let start = Instant::now();
    let run = consume(&s.proxy.url(), "plain", 10, &[]);
    let (status, _lines, stderr) = run.exit();
    assert!(!status.success());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("not a stream"), "{stderr}");

    // And with --no-create, a missing group.
    s.redis.cli(&["XADD", "nogroup", "*", "n", "1"]);
    let run = consume(&s.proxy.url(), "nogroup", 10, &["--no-create"]);
    let (status, _lines, stderr) = run.exit();
    assert!(!status.success());
    assert!(stderr.contains("--no-create"), "{stderr}");
}
