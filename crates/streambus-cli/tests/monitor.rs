//! `streambus monitor` and `streambus scale` against a real `redis-server` (one
//! per test, from `streambus-testkit`). Nothing waits with a fixed sleep:
//! conditions (a consumer becoming idle, a line of output) are polled with a
//! deadline.

mod common;

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use streambus_testkit::RedisServer;

use common::{ok, run, sb_redis, wait, wait_until};

const DEADLINE: Duration = Duration::from_secs(10);

/// Adds `n` entries to `stream` in one call.
fn add(server: &RedisServer, stream: &str, n: u32) {
    server.cli(&[
        "EVAL",
        "for i = 1, tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], '*', 'n', i) end",
        "1",
        stream,
        &n.to_string(),
    ]);
}

/// Delivers up to `count` new entries of `group` to `consumer` (creating it).
fn deliver(server: &RedisServer, stream: &str, group: &str, consumer: &str, count: u32) {
    server.cli(&[
        "XREADGROUP",
        "GROUP",
        group,
        consumer,
        "COUNT",
        &count.to_string(),
        "STREAMS",
        stream,
        ">",
    ]);
}

/// The reference package's example: 94 entries, 83 delivered to two consumers
/// (40 and 43) and not acknowledged, 11 undelivered.
fn reference_example(server: &RedisServer) {
    add(server, "s", 94);
    server.cli(&["XGROUP", "CREATE", "s", "g", "0"]);
    deliver(server, "s", "g", "c1", 40);
    deliver(server, "s", "g", "c2", 43);
}

/// `XINFO CONSUMERS` as (name, pending, idle ms).
fn consumers(server: &RedisServer, stream: &str, group: &str) -> Vec<(String, u64, u64)> {
    let out = server.cli(&["XINFO", "CONSUMERS", stream, group]);
    let mut found: Vec<(String, u64, u64)> = Vec::new();
    let mut lines = out.lines();
    while let (Some(k), Some(v)) = (lines.next(), lines.next()) {
        match k {
            "name" => found.push((v.to_owned(), 0, 0)),
            "pending" => found.last_mut().unwrap().1 = v.parse().unwrap(),
            "idle" => found.last_mut().unwrap().2 = v.parse().unwrap(),
            _ => {}
        }
    }
    found
}

fn idle_ms(server: &RedisServer, stream: &str, group: &str, consumer: &str) -> u64 {
    consumers(server, stream, group)
        .into_iter()
        .find(|c| c.0 == consumer)
        .unwrap_or_else(|| panic!("no consumer {consumer}"))
        .2
}

/// Pending entries of one consumer (`XPENDING key group - + N consumer`).
fn pending_of(server: &RedisServer, stream: &str, group: &str, consumer: &str) -> usize {
    let out = server.cli(&["XPENDING", stream, group, "-", "+", "1000", consumer]);
    // Four lines per entry: id, consumer, idle, deliveries.
    out.lines().filter(|l| !l.is_empty()).count() / 4
}

/// The cells of a table row (columns are two or more spaces apart; a status
/// has single spaces).
fn cells(line: &str) -> Vec<String> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------- monitor

#[test]
fn monitor_json_is_one_document_with_the_documented_fields() {
    let server = RedisServer::start();
    reference_example(&server);
    let out = ok(&run(
        sb_redis(&server, &["monitor", "s", "--json"]),
        DEADLINE,
    ));
    assert_eq!(out.lines().count(), 1, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();

    assert_eq!(v["stream"], "s");
    assert_eq!(v["length"], 94);
    assert_eq!(v["entries_added"], 94);
    for key in [
        "server_time_ms",
        "first_entry_id",
        "first_entry_age_ms",
        "last_entry_id",
        "last_entry_age_ms",
        "last_generated_id",
        "max_deleted_entry_id",
    ] {
        assert!(v.get(key).is_some(), "no {key} in {v}");
    }
    assert!(v["first_entry_id"].as_str().unwrap().contains('-'));

    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1);
    let g = &groups[0];
    assert_eq!(g["name"], "g");
    assert_eq!(g["pending"], 83);
    assert_eq!(g["lag"], 11);
    assert_eq!(g["entries_read"], 83);
    assert!(g["last_delivered_id"].is_string());
    assert!(g["oldest_pending_id"].is_string());
    assert!(g["oldest_pending_age_ms"].is_u64());
    assert!(g["oldest_pending_idle_ms"].is_u64());
    assert_eq!(g["delivery_counts"]["sampled"], 10);
    assert_eq!(g["delivery_counts"]["min"], 1);
    assert_eq!(g["delivery_counts"]["max"], 1);

    let cs = g["consumers"].as_array().unwrap();
    let names: Vec<&str> = cs.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["c1", "c2"]);
    assert_eq!(cs[0]["pending"], 40);
    assert_eq!(cs[1]["pending"], 43);
    for c in cs {
        assert!(c["idle_ms"].is_u64(), "{c}");
        assert!(c.get("inactive_ms").is_some(), "{c}");
        // The default threshold (60s) and warning level (100).
        assert_eq!(c["status"], "OK");
    }
}

#[test]
fn monitor_table_shows_consumers_and_statuses() {
    let server = RedisServer::start();
    reference_example(&server);
    server.cli(&["XGROUP", "CREATECONSUMER", "s", "g", "sleeper"]);

    // Long threshold: a warning for the consumer holding more than 40.
    let out = ok(&run(
        sb_redis(&server, &["monitor", "s", "--pending-warning", "40"]),
        DEADLINE,
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("stream s: length 94,"), "{out}");
    assert!(
        lines[1].starts_with("group g: 3 consumers, pending 83, lag 11, last delivered "),
        "{out}"
    );
    assert_eq!(cells(lines[2]), ["Consumer", "Idle", "Pending", "Status"]);
    let row = |name: &str| -> Vec<String> {
        lines
            .iter()
            .map(|l| cells(l))
            .find(|c| c[0] == name)
            .unwrap_or_else(|| panic!("no row for {name} in {out}"))
    };
    assert_eq!(row("c1")[2..], ["40", "OK"], "{out}");
    assert_eq!(
        row("c2")[2..],
        ["43", "WARNING - too many pending items"],
        "{out}"
    );
    assert_eq!(row("sleeper")[2..], ["0", "OK"], "{out}");
    assert!(!out.contains("unknown"), "{out}");

    // 20 ms: once the sleeper has been idle that long it is reported, and the
    // consumers holding entries are stalled.
    wait_until(DEADLINE, "the sleeper to be idle", || {
        idle_ms(&server, "s", "g", "sleeper") > 30
    });
    let out = ok(&run(
        sb_redis(
            &server,
            &["monitor", "s", "--group", "g", "--idle-threshold", "20ms"],
        ),
        DEADLINE,
    ));
    let statuses: Vec<(String, String)> = out
        .lines()
        .map(cells)
        .filter(|c| c.len() == 4)
        .map(|c| (c[0].clone(), c[3].clone()))
        .collect();
    let status = |name: &str| statuses.iter().find(|s| s.0 == name).map(|s| s.1.as_str());
    assert_eq!(
        status("sleeper"),
        Some("WARNING - idle for long time"),
        "{out}"
    );
    assert_eq!(
        status("c1"),
        Some("WARNING - stalled with pending items"),
        "{out}"
    );
    assert_eq!(
        status("c2"),
        Some("WARNING - stalled with pending items"),
        "{out}"
    );
}

#[test]
fn monitor_marks_an_unknown_lag() {
    let server = RedisServer::start();
    for i in 1..=5 {
        server.cli(&["XADD", "u", &format!("{i}-0"), "n", &i.to_string()]);
    }
    server.cli(&["XGROUP", "CREATE", "u", "g", "0"]);
    deliver(&server, "u", "g", "c", 2);
    // A deletion ahead of the group: Redis can no longer tell its lag.
    server.cli(&["XDEL", "u", "4-0"]);

    let out = ok(&run(sb_redis(&server, &["monitor", "u"]), DEADLINE));
    assert!(out.contains(", lag ?,"), "{out}");
    assert!(
        out.lines()
            .last()
            .unwrap()
            .contains("unknown (entries were deleted)"),
        "{out}"
    );
    let v: Value = serde_json::from_str(&ok(&run(
        sb_redis(&server, &["monitor", "u", "--json"]),
        DEADLINE,
    )))
    .unwrap();
    assert!(v["groups"][0]["lag"].is_null(), "{v}");

    let out = ok(&run(
        sb_redis(&server, &["scale", "u", "-g", "g", "--window", "10ms"]),
        DEADLINE,
    ));
    assert!(
        out.lines().next().unwrap().contains("cannot tell the lag"),
        "{out}"
    );
    assert!(!out.contains("Consumers should be"), "{out}");
}

/// A group where consumer `dead` holds 3 entries and has been idle for longer
/// than `threshold`; nothing is undelivered.
fn dead_and_live(server: &RedisServer, threshold: Duration) {
    add(server, "s", 3);
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
    assert_eq!(pending_of(&server, "s", "g", "dead"), 3);
    assert_eq!(pending_of(&server, "s", "g", "live"), 0);
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
    assert_eq!(pending_of(&server, "s", "g", "dead"), 3);
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

    assert_eq!(pending_of(&server, "s", "g", "live"), 3);
    assert_eq!(pending_of(&server, "s", "g", "dead"), 0);
    let left: Vec<String> = consumers(&server, "s", "g")
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(left, ["live"]);
    // A move is not a delivery: the counts stay at 1.
    let out = server.cli(&["XPENDING", "s", "g", "-", "+", "10"]);
    let counts: Vec<&str> = out.lines().skip(3).step_by(4).collect();
    assert_eq!(counts, ["1", "1", "1"], "{out}");
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

#[test]
fn watch_json_prints_lines_until_sigterm() {
    let server = RedisServer::start();
    reference_example(&server);
    let mut child = sb_redis(&server, &["monitor", "s", "--json", "--watch", "20ms"])
        .spawn()
        .expect("spawn streambus");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    for _ in 0..2 {
        let line = rx.recv_timeout(DEADLINE).expect("a snapshot line");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["stream"], "s");
        assert_eq!(v["groups"][0]["pending"], 83);
    }
    // SAFETY: kill(2) on the pid of our own child, which has not been reaped.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let out = wait(child, DEADLINE);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    reader.join().unwrap();
    // Whatever came after the first two lines is whole JSON documents too.
    for line in rx.try_iter() {
        serde_json::from_str::<Value>(&line).unwrap();
    }
}

#[test]
fn watch_text_separates_snapshots_with_a_blank_line_when_piped() {
    let server = RedisServer::start();
    reference_example(&server);
    let mut child = sb_redis(&server, &["monitor", "s", "--watch=20ms"])
        .spawn()
        .expect("spawn streambus");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|l: &&String| l.starts_with("stream s:"))
        .count()
        < 2
    {
        seen.push(rx.recv_timeout(DEADLINE).expect("more output"));
    }
    // SAFETY: kill(2) on the pid of our own child, which has not been reaped.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    assert!(wait(child, DEADLINE).status.success());
    let second = seen
        .iter()
        .rposition(|l| l.starts_with("stream s:"))
        .unwrap();
    assert_eq!(seen[second - 1], "", "{seen:?}");
    assert!(!seen.iter().any(|l| l.contains('\x1b')), "{seen:?}");
}

// ---------------------------------------------------------------- scale

#[test]
fn scale_prints_the_reference_sentence_and_the_target() {
    let server = RedisServer::start();
    reference_example(&server);
    let out = ok(&run(
        sb_redis(
            &server,
            &[
                "scale",
                "s",
                "--group",
                "g",
                "--window",
                "200ms",
                "--scale-out-rate",
                "60",
                "--scale-in-rate",
                "20",
            ],
        ),
        DEADLINE,
    ));
    let lines: Vec<&str> = out.lines().collect();
    // 11 / 83 * 100 = 13.2530..., below 20 with two consumers.
    assert_eq!(
        lines[0],
        "Consumers should be IN as stream length (11) / pending (83) rate is 13.253%"
    );
    // Nothing arrived or was acknowledged during the window: keep the two.
    assert_eq!(
        lines[1],
        "target consumers: 2 (now 2, NO_SCALE), over 200ms"
    );
    assert_eq!(lines[2], "arrival rate: 0.0/s");
    assert_eq!(lines[3], "ack rate: 0.0/s");
    assert!(lines[4].starts_with("drain time: "), "{out}");
    assert!(
        lines[5..].iter().any(|l| l.starts_with("reason: ")),
        "{out}"
    );
    // The progress line is for terminals only.
    assert!(!out.contains("sampling"), "{out}");

    // With the reference package's own defaults (50 / 10), 13.253% is no change.
    let out = ok(&run(
        sb_redis(&server, &["scale", "s", "-g", "g", "--window", "10ms"]),
        DEADLINE,
    ));
    assert!(
        out.starts_with(
            "Consumers should be NO_SCALE as stream length (11) / pending (83) rate is 13.253%\n"
        ),
        "{out}"
    );
}

#[test]
fn scale_json_is_one_object() {
    let server = RedisServer::start();
    reference_example(&server);
    let out = ok(&run(
        sb_redis(
            &server,
            &[
                "scale",
                "s",
                "-g",
                "g",
                "--window",
                "50ms",
                "--json",
                "--scale-out-rate",
                "60",
                "--scale-in-rate",
                "20",
                "--max-consumers",
                "8",
            ],
        ),
        DEADLINE,
    ));
    assert_eq!(out.lines().count(), 1, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rate"], 13.253);
    assert_eq!(v["suggestion"], "IN");
    assert_eq!(
        v["sentence"],
        "Consumers should be IN as stream length (11) / pending (83) rate is 13.253%"
    );
    assert_eq!(v["window_ms"], 50);
    let a = &v["advice"];
    assert_eq!(a["target"], 2);
    assert_eq!(a["current"], 2);
    assert_eq!(a["suggestion"], "NO_SCALE");
    assert_eq!(a["arrival_rate"], 0.0);
    assert_eq!(a["ack_rate"], 0.0);
    assert!(a.get("drain_time_ms").is_some(), "{a}");
    assert!(!a["reasons"].as_array().unwrap().is_empty(), "{a}");
}

#[test]
fn scale_rejects_bad_thresholds_and_missing_groups() {
    let server = RedisServer::start();
    reference_example(&server);
    let o = run(
        sb_redis(
            &server,
            &[
                "scale",
                "s",
                "-g",
                "g",
                "--scale-out-rate",
                "10",
                "--scale-in-rate",
                "20",
            ],
        ),
        DEADLINE,
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: invalid --scale-out-rate / --scale-in-rate: "),
        "{err}"
    );
    assert!(err.contains("must not be below"), "{err}");

    let o = run(
        sb_redis(&server, &["scale", "s", "-g", "nope", "--window", "10ms"]),
        DEADLINE,
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no group \"nope\""), "{err}");
}
