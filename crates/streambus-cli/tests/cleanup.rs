//! `streambus monitor --cleanup` against a real `redis-server` (one per test,
//! from `streambus-testkit`): a dead consumer's pending entries move to a
//! live one and the dead one is deleted; `--dry-run` only says what it would
//! do. Nothing waits with a fixed sleep: a consumer becoming idle is polled
//! with a deadline (idle thresholds of a few hundred ms).

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;
use streambus_testkit::RedisServer;

use common::data::{add, consumers, deliver, idle_ms, pending_entries};
use common::{ok, run, sb_redis, wait_until};

const DEADLINE: Duration = Duration::from_secs(10);

/// Pending entries of one consumer of group `g` of `s`.
fn pending_of(server: &RedisServer, consumer: &str) -> usize {
    pending_entries(server, "s", "g", Some(consumer)).len()
}

/// A group where consumer `dead` holds 3 entries and has been idle for longer
/// than `threshold`; nothing is undelivered.
fn dead_and_live(server: &RedisServer, threshold: Duration) {
    add(server, "s", 0, 3);
    server.cli(&["XGROUP", "CREATE", "s", "g", "0"]);
    deliver(server, "s", "g", "dead", 10);
    let ms = threshold.as_millis() as u64;
    wait_until(DEADLINE, "the dead consumer to be idle", || {
        idle_ms(server, "s", "g", "dead") > ms + 20
    });
}

/// Makes `live` active: it reads a new entry and acknowledges it. (An empty
/// read would not do: Redis 7.0 resets a consumer's idle time only when it
/// gets entries, and does not even create the consumer.)
fn touch_live(server: &RedisServer) {
    let id = server.cli(&["XADD", "s", "*", "touch", "1"]);
    deliver(server, "s", "g", "live", 1);
    server.cli(&["XACK", "s", "g", &id]);
}

/// Runs `args` right after `live` was active, so that it counts as alive; again
/// if the run came too late for that (the report has no move: everyone looked
/// dead).
fn run_with_live(server: &RedisServer, args: &[&str], moved: &str) -> String {
    let start = Instant::now();
    loop {
        touch_live(server);
        let out = ok(&run(sb_redis(server, args), DEADLINE));
        if out.contains(moved) {
            return out;
        }
        assert!(start.elapsed() < DEADLINE, "never {moved:?}: {out}");
    }
}

#[test]
fn cleanup_dry_run_changes_nothing_and_says_would() {
    let server = RedisServer::start();
    let threshold = Duration::from_millis(300);
    dead_and_live(&server, threshold);
    let args = [
        "monitor",
        "s",
        "--group",
        "g",
        "--cleanup",
        "--dry-run",
        "--idle-threshold",
        "300ms",
    ];
    let out = run_with_live(
        &server,
        &args,
        "would move 3 pending entries from dead to live",
    );
    assert!(out.contains("would delete consumer dead"), "{out}");
    assert!(out.lines().all(|l| l.starts_with("would ")), "{out}");

    // Nothing changed.
    assert_eq!(pending_of(&server, "dead"), 3);
    assert_eq!(pending_of(&server, "live"), 0);
    let names: Vec<String> = consumers(&server, "s", "g")
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(names, ["dead", "live"]);

    // The report as JSON.
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let out = run_with_live(&server, &json_args, "\"to\":\"live\"");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["moved"][0]["from"], "dead");
    assert_eq!(v["moved"][0]["count"], 3);
    assert_eq!(v["deleted"][0], "dead");
    assert_eq!(v["vanished"], 0);
    assert_eq!(pending_of(&server, "dead"), 3);
}

#[test]
fn cleanup_moves_a_dead_consumers_entries_to_a_live_one() {
    let server = RedisServer::start();
    dead_and_live(&server, Duration::from_millis(300));
    let out = run_with_live(
        &server,
        &[
            "monitor",
            "s",
            "--group",
            "g",
            "--cleanup",
            "--idle-threshold",
            "300ms",
        ],
        "moved 3 pending entries from dead to live",
    );
    assert!(out.contains("deleted consumer dead"), "{out}");
    assert!(!out.contains("would"), "{out}");

    assert_eq!(pending_of(&server, "live"), 3);
    assert_eq!(pending_of(&server, "dead"), 0);
    let left: Vec<String> = consumers(&server, "s", "g")
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(left, ["live"]);
    // A move is not a delivery: the counts stay at 1.
    let entries = pending_entries(&server, "s", "g", None);
    let counts: Vec<u64> = entries.iter().map(|e| e.deliveries).collect();
    assert_eq!(counts, [1, 1, 1], "{entries:?}");
}

#[test]
fn cleanup_without_group_is_a_usage_error() {
    let server = RedisServer::start();
    let o = run(sb_redis(&server, &["monitor", "s", "--cleanup"]), DEADLINE);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--group"), "{err}");
    assert!(o.stdout.is_empty());
}
