//! `streambus monitor` against a real `redis-server` (one per test, from
//! `streambus-testkit`): one snapshot as JSON or as a table with each
//! consumer's status, an unknown lag, and `--watch` until SIGTERM. Nothing
//! waits with a fixed sleep: conditions (a consumer becoming idle, a line of
//! output) are polled with a deadline.

mod common;

use std::time::Duration;

use serde_json::Value;
use streambus_testkit::RedisServer;

use common::data::{deliver, idle_ms, reference_server};
use common::lines::lines_of;
use common::{ok, run, sb_redis, sigterm, wait, wait_until};

const DEADLINE: Duration = Duration::from_secs(10);

/// The cells of a table row (columns are two or more spaces apart; a status
/// has single spaces).
fn cells(line: &str) -> Vec<String> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------- snapshot

#[test]
fn monitor_json_is_one_document_with_the_documented_fields() {
    let server = reference_server();
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
    let server = reference_server();
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

// ---------------------------------------------------------------- watch

#[test]
fn watch_json_prints_lines_until_sigterm() {
    let server = reference_server();
    let mut child = sb_redis(&server, &["monitor", "s", "--json", "--watch", "20ms"])
        .spawn()
        .expect("spawn streambus");
    let rx = lines_of(child.stdout.take().unwrap());
    for _ in 0..2 {
        let line = rx.recv_timeout(DEADLINE).expect("a snapshot line");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["stream"], "s");
        assert_eq!(v["groups"][0]["pending"], 83);
    }
    sigterm(&child);
    let out = wait(child, DEADLINE);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Whatever came after the first two lines is whole JSON documents too
    // (the reader ends with stdout, which ended with the process).
    for line in rx.iter() {
        serde_json::from_str::<Value>(&line).unwrap();
    }
}

#[test]
fn watch_text_separates_snapshots_with_a_blank_line_when_piped() {
    let server = reference_server();
    let mut child = sb_redis(&server, &["monitor", "s", "--watch=20ms"])
        .spawn()
        .expect("spawn streambus");
    let rx = lines_of(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|l: &&String| l.starts_with("stream s:"))
        .count()
        < 2
    {
        seen.push(rx.recv_timeout(DEADLINE).expect("more output"));
    }
    sigterm(&child);
    assert!(wait(child, DEADLINE).status.success());
    let second = seen
        .iter()
        .rposition(|l| l.starts_with("stream s:"))
        .unwrap();
    assert_eq!(seen[second - 1], "", "{seen:?}");
    assert!(!seen.iter().any(|l| l.contains('\x1b')), "{seen:?}");
}
