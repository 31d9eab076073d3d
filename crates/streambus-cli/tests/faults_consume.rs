//! The printing `streambus consume` through network faults and Redis
//! restarts: a real `redis-server` behind the testkit's `FaultProxy`, entries
//! published straight to Redis (not through the proxy) while the fault lasts;
//! and the errors that no retry can mend, which stop it at once.
//!
//! Each fault test checks that every entry published was printed exactly
//! once (no loss, no duplicate), that the group has nothing pending at the
//! end, and measures the time from the end of the fault to the first entry
//! printed after it (printed with `eprintln!`: `cargo test --test
//! faults_consume -- --nocapture`). The commands run with 500 ms timeouts
//! (`--response-timeout 500ms --connect-timeout 500ms`) and `--max-wait
//! 500ms`: an attempt under way when the network heals then fails within
//! about 1 s, and the backoff adds at most 2 s, so every recovery is asserted
//! within [`RECOVERY`].
//!
//! Conditions are polled with a deadline; the only fixed waits are the
//! lengths of the faults themselves.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use streambus_testkit::ServerOptions;

use common::data::{add, add_big, pending, xlen};
use common::faults::{
    assert_outage_noted, ids, proxied, Exited, Proxied, Running, DEADLINE, RECOVERY, TIMEOUTS,
};
use common::{sb_url, wait_until};

/// `streambus consume STREAM --group g --consumer c1 --count N` through the
/// proxy, with the short timeouts.
fn consume(url: &str, stream: &str, count: usize, extra: &[&str]) -> Running {
    consume_after(&TIMEOUTS, url, stream, count, extra)
}

/// The same, with the options `global` in place of the short timeouts.
fn consume_after(
    global: &[&str],
    url: &str,
    stream: &str,
    count: usize,
    extra: &[&str],
) -> Running {
    let count = count.to_string();
    let mut cmd = sb_url(url, global);
    cmd.args([
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
    ])
    .args(extra);
    Running::spawn(cmd)
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

/// Waits until consume (its stdout paused, `--batch-size 10`) is held in its
/// write: group `g`'s pending count stays the same, at 10 or more, for five
/// polls in a row. Returns it: the batch being printed, and at most the one
/// read ahead while it was.
#[track_caller]
fn held_pending(s: &Proxied, stream: &str) -> u64 {
    let (mut held, mut steady) = (0, 0);
    wait_until(DEADLINE, "consume held with a batch pending", || {
        // XPENDING's count; none before consume has created the group.
        let summary = s.redis.cli(&["XPENDING", stream, "g"]);
        let now = summary.lines().next().and_then(|l| l.trim().parse().ok());
        let now: u64 = now.unwrap_or(0);
        steady = if now >= 10 && now == held {
            steady + 1
        } else {
            0
        };
        held = now;
        steady >= 5
    });
    assert!(
        held == 10 || held == 20,
        "{held} pending: a batch, and at most one read ahead"
    );
    held
}

/// The run succeeded, printed every entry published exactly once, and left
/// nothing pending in group `g`.
#[track_caller]
fn assert_consumed_once(s: &Proxied, stream: &str, out: &Exited, published: &[String]) {
    assert!(out.status.success(), "{:?}: {}", out.status, out.stderr);
    assert_exactly_once(&ids(&out.lines), published);
    assert_eq!(pending(&s.redis, stream, "g"), 0);
}

#[test]
fn consume_through_a_black_hole_prints_every_entry_once() {
    let s = proxied(false);
    let stream = "bh";
    let mut published = add(&s.redis, stream, 0, 50);
    let run = consume(&s.proxy.url(), stream, 150, &[]);
    run.wait_lines(50, "the entries before the fault");

    let (during, healed) = s.black_hole_until_redialed(&run, stream, 50, 50);
    published.extend(during);
    published.extend(add(&s.redis, stream, 100, 50));

    let recovery = run.recovered_after(healed, 51, "the first entry after heal");
    let out = run.exit();
    eprintln!("consume, black hole until two redials: first entry {recovery:?} after heal");
    assert_consumed_once(&s, stream, &out, &published);
    assert_outage_noted(&out.stderr);
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
    let s = proxied(false);
    let stream = "lostack";
    let mut published = add_big(&s.redis, stream, 0, 100);
    let run = consume(&s.proxy.url(), stream, 150, &["--batch-size", "10"]);
    run.paused.store(true, Ordering::Relaxed);
    // Held in its write: a batch stays delivered and unacknowledged (and the
    // next one, read ahead while it was being printed).
    let held = held_pending(&s, stream);
    let accepted = s.proxy.connections_accepted();
    s.proxy.black_hole();
    run.paused.store(false, Ordering::Relaxed);
    published.extend(add_big(&s.redis, stream, 100, 50));
    // Until consume has given up silent connections and dialed anew twice.
    s.wait_for_dials(accepted, 2, "two dials into the black hole");
    let before_heal = run.count();
    assert_eq!(
        pending(&s.redis, stream, "g"),
        held,
        "the ack went into the black hole"
    );
    s.proxy.heal();
    let healed = Instant::now();

    let recovery = run.recovered_after(healed, before_heal + 1, "the first entry after heal");
    let out = run.exit();
    eprintln!(
        "consume, ack lost in a black hole until two redials: first entry {recovery:?} after heal"
    );
    assert_consumed_once(&s, stream, &out, &published);
    assert_outage_noted(&out.stderr);
    assert!(
        out.stderr.contains("cannot acknowledge"),
        "the acknowledgement failed first: {}",
        out.stderr
    );
    assert!(recovery <= RECOVERY, "recovered after {recovery:?}");
}

/// Stopped (SIGTERM) while a batch is being printed and the next one, read
/// ahead, is delivered: consume prints both before it ends, acknowledges
/// them, and leaves nothing pending; a second run prints the rest, so that
/// every entry is printed exactly once.
#[test]
fn consume_stopped_with_a_read_ahead_prints_it_and_leaves_nothing_pending() {
    let s = proxied(false);
    let stream = "stopahead";
    let published = add_big(&s.redis, stream, 0, 200);
    let run = consume(&s.proxy.url(), stream, 1000, &["--batch-size", "10"]);
    run.paused.store(true, Ordering::Relaxed);
    held_pending(&s, stream);
    run.terminate();
    run.paused.store(false, Ordering::Relaxed);
    let first = run.exit();
    assert!(
        first.status.success(),
        "{:?}: {}",
        first.status,
        first.stderr
    );
    assert_eq!(pending(&s.redis, stream, "g"), 0, "{}", first.stderr);
    assert!(first.lines.len() < published.len(), "stopped early");
    let rest = consume(
        &s.proxy.url(),
        stream,
        published.len() - first.lines.len(),
        &[],
    )
    .exit();
    let mut printed = ids(&first.lines);
    printed.extend(ids(&rest.lines));
    assert_exactly_once(&printed, &published);
    assert_eq!(pending(&s.redis, stream, "g"), 0);
}

#[test]
fn consume_through_a_reset_storm_prints_every_entry_once() {
    let s = proxied(false);
    let stream = "storm";
    let mut published = add(&s.redis, stream, 0, 50);
    let run = consume(&s.proxy.url(), stream, 200, &[]);
    run.wait_lines(50, "the entries before the fault");

    // Six resets, each once consume has reconnected since the one before,
    // entries arriving all the while.
    let mut last_reset = Instant::now();
    for i in 0..6 {
        let accepted = s.proxy.connections_accepted();
        s.proxy.reset_all();
        last_reset = Instant::now();
        published.extend(add(&s.redis, stream, 50 + i * 20, 20));
        s.wait_for_dials(accepted, 1, "a reconnect after the reset");
    }
    published.extend(add(&s.redis, stream, 170, 30));

    let recovery = run.recovered_after(last_reset, 200, "every entry");
    eprintln!(
        "consume, reset storm (6 resets, each after a reconnect): first entry {recovery:?} after the last reset"
    );
    assert!(recovery <= RECOVERY, "recovered after {recovery:?}");
    let out = run.exit();
    assert_consumed_once(&s, stream, &out, &published);
}

/// A backlog read ahead (full batches: the next batch read as two halves on
/// the consumer's two connections) through connection resets: a reset strikes
/// while both halves are under way, and whatever one of them took stays
/// pending and is re-read with the other's. Every entry is printed exactly
/// once, and in stream order. The resets follow consume's progress (one
/// every 250 more lines printed), so each lands mid-backlog. (With the
/// half of a failed pair that worked printed, this failed in 3 of 5 runs.)
#[test]
fn consume_of_a_backlog_through_resets_prints_in_stream_order() {
    let s = proxied(false);
    let stream = "backlog";
    let published = add(&s.redis, stream, 0, 12_000);
    let run = consume(&s.proxy.url(), stream, 12_000, &["--batch-size", "40"]);
    let mut resets = 0;
    for i in 1..=40 {
        run.wait_lines(i * 250, "more of the backlog");
        s.proxy.reset_all();
        resets += 1;
    }
    let out = run.exit();
    assert_consumed_once(&s, stream, &out, &published);
    let printed = ids(&out.lines);
    let key = |id: &String| -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap();
        (ms.parse().unwrap(), seq.parse().unwrap())
    };
    let out_of_order = printed
        .windows(2)
        .filter(|w| key(&w[0]) >= key(&w[1]))
        .count();
    eprintln!(
        "consume, {resets} resets through a backlog of {}: {out_of_order} out of order",
        printed.len()
    );
    assert_eq!(out_of_order, 0, "printed out of stream order");
}

#[test]
fn consume_through_latency_spikes_neither_reconnects_nor_duplicates() {
    let s = proxied(false);
    let stream = "slow";
    let mut published = add(&s.redis, stream, 0, 50);
    // Well above a round trip under 1 s of latency each way (2 s).
    let slow = ["--response-timeout", "4s", "--connect-timeout", "4s"];
    let run = consume_after(&slow, &s.proxy.url(), stream, 150, &[]);
    run.wait_lines(50, "the entries before the fault");
    let accepted = s.proxy.connections_accepted();

    s.proxy.latency(Duration::from_secs(1));
    published.extend(add(&s.redis, stream, 50, 50));
    // Until entries have come through the latency (round trips of 2 s).
    run.wait_lines(51, "an entry through the latency");
    s.proxy.pass_through();
    let healed = Instant::now();
    published.extend(add(&s.redis, stream, 100, 50));

    let recovery = run.recovered_after(healed, 150, "every entry");
    let after = s.proxy.connections_accepted();
    let out = run.exit();
    eprintln!(
        "consume, 1 s latency for 3 s: {} new connections; first entry {recovery:?} after the latency ended",
        after - accepted
    );
    assert_consumed_once(&s, stream, &out, &published);
    let stderr = &out.stderr;
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
    let mut s = proxied(true);
    let stream = "crash";
    let mut published = add(&s.redis, stream, 0, 50);
    let run = consume(&s.proxy.url(), stream, 150, &[]);
    run.wait_lines(30, "some entries before the crash");

    // SIGKILL in the middle of the backlog, then a restart on the same port.
    let killed = Instant::now();
    let restarted = s.crash();
    published.extend(add(&s.redis, stream, 50, 100));

    let recovery = run.recovered_after(restarted, 51, "entries after the restart");
    let out = run.exit();
    eprintln!(
        "consume, SIGKILL + restart (AOF always, down {:?}): first entry {recovery:?} after the restart",
        restarted - killed
    );
    assert_consumed_once(&s, stream, &out, &published);
    assert!(recovery <= RECOVERY, "recovered after {recovery:?}");
}

#[test]
fn consume_recreates_the_group_after_a_restart_without_persistence() {
    let mut s = proxied(false);
    let stream = "amnesia";
    let before = add(&s.redis, stream, 0, 50);
    let run = consume(&s.proxy.url(), stream, 100, &[]);
    // All of them: what is not printed before the restart is gone with it.
    run.wait_lines(50, "the entries before the restart");

    let restarted = s.crash();
    assert_eq!(xlen(&s.redis, stream), 0, "no persistence");
    let after = add(&s.redis, stream, 50, 50);

    let recovery = run.recovered_after(restarted, 51, "entries after the restart");
    let out = run.exit();
    eprintln!("consume, restart without persistence: first entry {recovery:?} after the restart");
    let published: Vec<String> = before.into_iter().chain(after).collect();
    assert_consumed_once(&s, stream, &out, &published);
    assert!(
        out.stderr
            .contains("recreated it from the start of the stream"),
        "stderr:\n{}",
        out.stderr
    );
    assert!(recovery <= RECOVERY, "recovered after {recovery:?}");
}

#[test]
fn consume_with_no_create_stops_when_the_group_vanishes() {
    let mut s = proxied(false);
    let stream = "strict";
    add(&s.redis, stream, 0, 10);
    s.redis.cli(&["XGROUP", "CREATE", stream, "g", "0"]);
    let run = consume(&s.proxy.url(), stream, 100, &["--no-create"]);
    run.wait_lines(10, "the entries before the restart");
    s.crash();
    add(&s.redis, stream, 10, 10);
    let Exited {
        status,
        lines,
        stderr,
    } = run.exit();
    assert!(!status.success(), "it must stop: {stderr}");
    assert_eq!(lines.len(), 10);
    assert!(
        stderr.contains("--no-create forbids creating it"),
        "{stderr}"
    );
}

/// Runs `consume` to its exit, which must be a failure within 5 s with one
/// line on stderr; returns that line.
#[track_caller]
fn fails_at_once(url: &str, stream: &str, extra: &[&str]) -> String {
    let start = Instant::now();
    let Exited { status, stderr, .. } = consume(url, stream, 10, extra).exit();
    eprintln!("consume {stream}: exited after {:?}", start.elapsed());
    assert!(!status.success());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

#[test]
fn consume_with_a_wrong_password_fails_at_once() {
    let s = Proxied::start(ServerOptions {
        password: Some("right".to_owned()),
        ..Default::default()
    });
    let url = format!("redis://:wrong@{}", s.proxy.addr());
    let stderr = fails_at_once(&url, "locked", &[]);
    assert!(stderr.contains("password"), "{stderr}");
}

#[test]
fn consume_of_a_key_that_is_not_a_stream_fails_at_once() {
    let s = proxied(false);
    s.redis.cli(&["SET", "plain", "x"]);
    let stderr = fails_at_once(&s.proxy.url(), "plain", &[]);
    assert!(stderr.contains("not a stream"), "{stderr}");

    // And with --no-create, a missing group.
    s.redis.cli(&["XADD", "nogroup", "*", "n", "1"]);
    let Exited { status, stderr, .. } =
        consume(&s.proxy.url(), "nogroup", 10, &["--no-create"]).exit();
    assert!(!status.success());
    assert!(stderr.contains("--no-create"), "{stderr}");
}
