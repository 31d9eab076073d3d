//! `streambus publish` (JSON lines from stdin), `streambus consume` and
//! `streambus tail --follow` on a `redis+sentinel://` URL through a planned
//! failover (`SENTINEL FAILOVER`) and an unplanned one (`SIGKILL` of the
//! primary), against real processes: a primary, a replica and three
//! sentinels started by the testkit.
//!
//! The commands run with 500 ms timeouts. A feeder writes a line to
//! publish's stdin every 5 ms throughout; each entry id publish prints is a
//! write Redis acknowledged. Checked at the end:
//!
//! - every id publish printed outside the failover window, and every entry
//!   the new primary's stream holds, was printed by consume (see the
//!   library's `tests/sentinel.rs` for the window: without `WAIT`, writes the
//!   old primary took after the replica left it are lost);
//! - every entry the new primary keeps was printed by `tail --from 0 --follow`;
//! - publish exits successfully once its input ends; nothing stays pending.
//!
//! The longest pause of publish and of consume around the fault, and when
//! each resumed, are printed (`cargo test -p streambus-cli --test sentinel --
//! --nocapture`).
//!
//! The one-shot commands (publish arguments, `groups`, `monitor`, `dlq list`,
//! `tail`) and `serve`'s API are checked through a planned failover too.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::faults::{fast, runtime, Running};
use common::{eventually, exit_within};
use streambus::Client;
use streambus_testkit::{unique_prefix, RedisSentinel};

/// As in the library's test: what a SIGKILL may take with it (acknowledged,
/// not yet replicated), and how long after the sentinels name the new primary
/// a socket may still be on the old one.
const REPLICATION_ALLOWANCE: Duration = Duration::from_secs(1);
const SWITCH_ALLOWANCE: Duration = Duration::from_secs(1);
const DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn publish_and_consume_follow_a_planned_failover() {
    let set = RedisSentinel::start();
    let run = CliRun::start(&set, "planned");
    let fault = Instant::now();
    let old = set.failover();
    let new = set.wait_for_failover(old, DEADLINE).unwrap();
    run.finish(
        &set,
        fault,
        Instant::now(),
        "SENTINEL FAILOVER",
        Duration::ZERO,
    );
    assert_ne!(old, new);
}

#[test]
fn publish_and_consume_follow_an_unplanned_failover() {
    let mut set = RedisSentinel::start();
    let run = CliRun::start(&set, "unplanned");
    // Found before the fault: asking the sentinels takes a few milliseconds.
    let old = set.primary().port();
    let fault = Instant::now();
    set.server_mut(old).kill();
    let new = set.wait_for_failover(old, DEADLINE).unwrap();
    run.finish(
        &set,
        fault,
        Instant::now(),
        "SIGKILL of the primary",
        REPLICATION_ALLOWANCE,
    );
    assert_ne!(old, new);
}

/// The one-shot commands take their connections from the same `Client`:
/// publish arguments, `groups`, `monitor`, `dlq list`, `tail` through Sentinel,
/// also after a failover.
#[test]
fn one_shot_commands_work_through_sentinel() {
    let set = RedisSentinel::start();
    let url = set.url();
    let stream = format!("{}s", unique_prefix("oneshot"));
    let ids = common::ok(&common::run(
        common::sb_url(&url, &["publish", &stream, "{\"a\":1}", "{\"a\":2}"]),
        DEADLINE,
    ));
    assert_eq!(ids.lines().count(), 2, "{ids}");
    common::ok(&common::run(
        common::sb_url(&url, &["groups", &stream, "--create", "g"]),
        DEADLINE,
    ));
    let old = set.failover();
    set.wait_for_failover(old, DEADLINE).unwrap();
    let groups = common::ok(&common::run(
        common::sb_url(&url, &["groups", &stream, "--json"]),
        DEADLINE,
    ));
    assert!(groups.contains("\"g\""), "{groups}");
    let monitor = common::ok(&common::run(
        common::sb_url(&url, &["monitor", &stream]),
        DEADLINE,
    ));
    assert!(monitor.contains(&stream), "{monitor}");
    common::ok(&common::run(
        common::sb_url(&url, &["dlq", "list", &stream]),
        DEADLINE,
    ));
    let tail = common::ok(&common::run(
        common::sb_url(&url, &["tail", &stream, "--from", "0"]),
        DEADLINE,
    ));
    let tailed: Vec<String> = tail.lines().map(entry_id).collect();
    assert_eq!(tailed, ids.lines().collect::<Vec<_>>());
}

/// `streambus serve` on a Sentinel URL answers its API before and after a
/// failover.
#[test]
fn serve_follows_a_failover() {
    const TOKEN: &str = "test-token-0123456789";
    let set = RedisSentinel::start();
    let stream = format!("{}s", unique_prefix("serve"));
    common::ok(&common::run(
        common::sb_url(&set.url(), &["publish", &stream, "{\"a\":1}"]),
        DEADLINE,
    ));
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = common::sb(
        dir.path(),
        &[
            "--redis",
            &set.url(),
            "--response-timeout",
            "500ms",
            "--connect-timeout",
            "500ms",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--streams",
            &stream,
        ],
    );
    cmd.env("STREAMBUS_TOKEN", TOKEN);
    let (child, _, addr) = common::serve::start(cmd);
    let mut child = common::lines::KillOnDrop(child);
    let answers = || {
        matches!(
            common::http_get(addr, "/api/streams", Some(TOKEN)),
            Ok((200, body)) if body.contains(&stream)
        )
    };
    assert!(
        eventually(DEADLINE, answers),
        "no answer before the failover"
    );
    let old = set.failover();
    set.wait_for_failover(old, DEADLINE).unwrap();
    common::ok(&common::run(
        common::sb_url(&set.url(), &["publish", &stream, "{\"a\":2}"]),
        DEADLINE,
    ));
    assert!(
        eventually(DEADLINE, || matches!(
            common::http_get(addr, "/api/streams", Some(TOKEN)),
            Ok((200, body)) if body.contains(&stream) && body.contains("\"length\":2")
        )),
        "no answer with both entries after the failover: {:?}",
        common::http_get(addr, "/api/streams", Some(TOKEN))
    );
    common::sigterm(&child.0);
    let status = exit_within(&mut child.0, DEADLINE).expect("serve stops on SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// The longest pause between two of `times` that ends after `fault`: its
/// length, and when it ended (after the fault).
fn longest_pause(times: impl Iterator<Item = Instant>, fault: Instant) -> (Duration, Duration) {
    let mut times: Vec<Instant> = times.collect();
    times.sort();
    let mut longest = (Duration::ZERO, Duration::ZERO);
    for pair in times.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        if after >= fault && after - before > longest.0 {
            longest = (after - before, after - fault);
        }
    }
    longest
}

/// Lines with the time each arrived.
type Timed = Arc<Mutex<Vec<(Instant, String)>>>;

/// `streambus consume` and `streambus publish` fed from a thread.
struct CliRun {
    stream: String,
    url: String,
    consume: Running,
    /// `tail --from 0 --follow`: every entry the stream keeps is printed.
    tail: Running,
    publish: Child,
    /// publish's stdout: one entry id per acknowledged write.
    acked: Timed,
    /// When each line was written to publish's stdin.
    fed: Timed,
    stop_feeding: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Before anything was printed.
    started: Instant,
}

/// The entry id of a line printed by consume.
#[track_caller]
fn entry_id(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    v["entry_id"].as_str().unwrap().to_owned()
}

impl CliRun {
    /// Starts both, and returns once 1.5 s of publishes were consumed.
    fn start(set: &RedisSentinel, label: &str) -> CliRun {
        let url = set.url();
        let started = Instant::now();
        let stream = format!("{}s", unique_prefix(label));
        let consume = Running::fast(
            &url,
            &[
                "consume",
                &stream,
                "--group",
                "g",
                "--consumer",
                "c1",
                "--max-wait",
                "500ms",
            ],
        );
        let tail = Running::fast(&url, &["tail", &stream, "--from", "0", "--follow"]);
        let mut cmd = fast(&url, &["publish", &stream]);
        let mut publish = cmd.stdin(Stdio::piped()).spawn().expect("spawn publish");
        let mut stdin = publish.stdin.take().unwrap();
        let (acked, fed) = (Timed::default(), Timed::default());
        let stop_feeding = Arc::new(AtomicBool::new(false));
        let feeder = {
            let (fed, stop) = (fed.clone(), stop_feeding.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let line = format!("{{\"n\":{n}}}\n");
                    if stdin.write_all(line.as_bytes()).is_err() {
                        break;
                    }
                    fed.lock().unwrap().push((Instant::now(), line));
                    n += 1;
                    // The pace of a steady producer, not a wait for anything.
                    std::thread::sleep(Duration::from_millis(5));
                }
                // Dropping stdin ends publish's input.
            })
        };
        let reader = {
            let out = BufReader::new(publish.stdout.take().unwrap());
            let acked = acked.clone();
            std::thread::spawn(move || {
                for line in out.lines() {
                    let Ok(line) = line else { break };
                    acked.lock().unwrap().push((Instant::now(), line));
                }
            })
        };
        let run = CliRun {
            stream,
            url,
            consume,
            tail,
            publish,
            acked,
            fed,
            stop_feeding,
            threads: vec![feeder, reader],
            started,
        };
        run.consume
            .wait_lines(300, "entries consumed before the fault");
        run
    }

    fn finish(
        mut self,
        set: &RedisSentinel,
        fault: Instant,
        switched: Instant,
        what: &str,
        allowance: Duration,
    ) {
        let window = (fault - allowance, switched + SWITCH_ALLOWANCE);
        let in_window = |t: Instant| t >= window.0 && t <= window.1;
        let after = |lines: &Timed| {
            let lines = lines.lock().unwrap();
            lines.iter().filter(|(t, _)| *t > window.1).count()
        };
        assert!(
            eventually(DEADLINE, || after(&self.acked) >= 200),
            "{what}: publish printed no ids after the failover; stderr of consume: {}",
            self.consume.stderr()
        );
        self.stop_feeding.store(true, Ordering::Relaxed);
        let status = exit_within(&mut self.publish, DEADLINE).expect("publish exits");
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        assert!(status.success(), "{what}: publish failed: {status:?}");
        let acked = self.acked.lock().unwrap().clone();
        assert_eq!(
            acked.len(),
            self.fed.lock().unwrap().len(),
            "{what}: one id per line fed"
        );

        // Everything outside the window, and everything the stream holds,
        // printed by consume; nothing pending.
        let rt = runtime();
        let client = Client::open(&self.url).unwrap();
        let kept = |rt: &tokio::runtime::Runtime| -> Option<HashSet<String>> {
            rt.block_on(async {
                let mut conn = client.connect().await.ok()?;
                let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                    .arg(&self.stream)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                Some(reply.ids.into_iter().map(|e| e.id).collect())
            })
        };
        let printed = |run: &Running| -> HashSet<String> {
            // Every line so far passes through the predicate, which never matches.
            let ids = std::cell::RefCell::new(HashSet::new());
            run.first_after_matching(self.started, |l| {
                ids.borrow_mut().insert(entry_id(l));
                false
            });
            ids.into_inner()
        };
        let mut unprinted = Vec::new();
        let settled = eventually(DEADLINE, || {
            let Some(kept) = kept(&rt) else { return false };
            let (consumed, tailed) = (printed(&self.consume), printed(&self.tail));
            unprinted = acked
                .iter()
                .filter(|(t, id)| !in_window(*t) || kept.contains(id))
                .filter(|(_, id)| !consumed.contains(id))
                .cloned()
                .collect();
            unprinted.extend(
                acked
                    .iter()
                    .filter(|(_, id)| kept.contains(id) && !tailed.contains(id))
                    .cloned(),
            );
            unprinted.is_empty()
                && set
                    .primary()
                    .cli(&["XPENDING", &self.stream, "g"])
                    .starts_with('0')
        });
        assert!(
            settled,
            "{what}: {} acknowledged ids never printed by consume (or, kept, by tail), first \
             {:?}; stderr:\n{}",
            unprinted.len(),
            unprinted
                .first()
                .map(|(t, id)| (t.checked_duration_since(fault), id)),
            self.consume.stderr()
        );

        let kept = kept(&rt).unwrap();
        let vanished: Vec<&(Instant, String)> =
            acked.iter().filter(|(_, id)| !kept.contains(id)).collect();
        for (t, id) in &vanished {
            assert!(
                in_window(*t),
                "{what}: id {id} printed by publish {:?} after the fault is not on the new \
                 primary, outside the window ({allowance:?} before the fault to \
                 {SWITCH_ALLOWANCE:?} after the switch at {:?})",
                t.checked_duration_since(fault),
                switched - fault
            );
        }
        // Work as publish and consume saw it: the longest pause in what the
        // new primary keeps (printed by publish, then by consume) that ends
        // after the fault, and when it ended.
        let kept_acked: Vec<&(Instant, String)> =
            acked.iter().filter(|(_, id)| kept.contains(id)).collect();
        let (publish_pause, publish_resumed) =
            longest_pause(kept_acked.iter().map(|(t, _)| *t), fault);
        let since = fault - Duration::from_secs(1);
        let consumed_at = kept_acked
            .iter()
            .filter(|(t, _)| *t >= since)
            .filter_map(|(_, id)| {
                let quoted = format!("\"{id}\"");
                self.consume
                    .first_after_matching(since, |l| l.contains(&quoted))
                    .map(|d| since + d)
            });
        let (consume_pause, consume_resumed) = longest_pause(consumed_at, fault);
        let out = self.consume.stop();
        assert!(out.status.success(), "{what}: consume: {}", out.stderr);
        let tail = self.tail.stop();
        assert!(tail.status.success(), "{what}: tail: {}", tail.stderr);
        eprintln!(
            "CLI, {what}: the sentinels named the new primary {:?} after the fault; publish \
             paused {publish_pause:?} and resumed {publish_resumed:?} after the fault, consume \
             paused {consume_pause:?} and resumed {consume_resumed:?} after it; {} ids printed \
             by publish, {} of them not on the new primary; consume printed {} lines",
            switched - fault,
            acked.len(),
            vanished.len(),
            out.lines.len()
        );
    }
}
