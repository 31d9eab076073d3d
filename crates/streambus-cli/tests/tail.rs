//! `streambus tail` against a real `redis-server` (one per test, from
//! `streambus-testkit`): the last entries, from a start, `--follow` (also of a
//! stream that does not exist yet), a closed pipe, and its errors. Nothing
//! waits with a fixed sleep: conditions are polled with a deadline.

mod common;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use common::data::{data_n, publish_n};
use common::lines::{spawn, spawn_reading};
use common::{exit_within, fails, json_lines, ok, run, sb_redis, wait_until};
use streambus_testkit::RedisServer;

const DEADLINE: Duration = Duration::from_secs(10);

#[test]
fn tail_prints_the_last_entries_in_order() {
    let server = RedisServer::start();
    publish_n(&server, "s", 0..15);
    let rows = json_lines(&ok(&run(sb_redis(&server, &["tail", "s"]), DEADLINE)));
    let ns: Vec<u64> = rows.iter().map(data_n).collect();
    assert_eq!(ns, (5..15).collect::<Vec<_>>());
    assert_eq!(rows[0]["stream"], "s");

    let rows = json_lines(&ok(&run(
        sb_redis(&server, &["tail", "s", "--count", "3"]),
        DEADLINE,
    )));
    assert_eq!(rows.iter().map(data_n).collect::<Vec<_>>(), [12, 13, 14]);
}

#[test]
fn tail_from_beginning_from_id_and_count() {
    let server = RedisServer::start();
    let ids = publish_n(&server, "s", 0..15);
    let rows = json_lines(&ok(&run(
        sb_redis(&server, &["tail", "s", "--from", "0"]),
        DEADLINE,
    )));
    assert_eq!(rows.len(), 15);
    assert_eq!(data_n(&rows[0]), 0);

    let rows = json_lines(&ok(&run(
        sb_redis(&server, &["tail", "s", "--from", "0", "--count", "3"]),
        DEADLINE,
    )));
    assert_eq!(rows.iter().map(data_n).collect::<Vec<_>>(), [0, 1, 2]);

    let rows = json_lines(&ok(&run(
        sb_redis(&server, &["tail", "s", "--from", &ids[11]]),
        DEADLINE,
    )));
    assert_eq!(rows.iter().map(data_n).collect::<Vec<_>>(), [12, 13, 14]);

    assert_eq!(
        ok(&run(
            sb_redis(&server, &["tail", "s", "--from", "$"]),
            DEADLINE
        )),
        ""
    );
}

#[test]
fn tail_follow_prints_new_entries() {
    let server = RedisServer::start();
    publish_n(&server, "s", 0..2);
    let (_child, lines) = spawn_reading(sb_redis(&server, &["tail", "s", "--follow"]));
    assert_eq!(data_n(&lines.next()), 0);
    assert_eq!(data_n(&lines.next()), 1);
    publish_n(&server, "s", 2..4);
    assert_eq!(data_n(&lines.next()), 2);
    assert_eq!(data_n(&lines.next()), 3);
}

#[test]
fn tail_follow_waits_for_a_missing_stream_and_stops_at_count() {
    let server = RedisServer::start();
    let (mut child, lines) = spawn_reading(sb_redis(
        &server,
        &["tail", "s", "--from", "0", "--follow", "--count", "3"],
    ));
    publish_n(&server, "s", 0..1);
    assert_eq!(data_n(&lines.next()), 0);
    publish_n(&server, "s", 1..5);
    assert_eq!(data_n(&lines.next()), 1);
    assert_eq!(data_n(&lines.next()), 2);
    let status = exit_within(&mut child.0, DEADLINE).expect("tail did not stop at --count");
    assert!(status.success());
    assert!(lines.rx.recv_timeout(Duration::from_millis(100)).is_err());
}

#[test]
fn tail_into_a_closed_pipe_exits_quietly() {
    // `streambus tail s --follow | head -1`
    let server = RedisServer::start();
    publish_n(&server, "s", 0..1);
    let mut child = spawn(sb_redis(&server, &["tail", "s", "--follow"]));
    let mut reader = BufReader::new(child.0.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert_eq!(data_n(&serde_json::from_str(&first).unwrap()), 0);
    drop(reader);
    // Keep publishing until tail tries to write, finds the pipe closed and exits.
    let mut n = 1;
    let mut status = None;
    wait_until(DEADLINE, "tail to exit", || {
        status = child.0.try_wait().unwrap();
        if status.is_none() {
            publish_n(&server, "s", n..n + 1);
            n += 1;
        }
        status.is_some()
    });
    let status = status.unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{status:?} {err}");
    assert_eq!(err, "");
}

#[test]
fn tail_errors() {
    let server = RedisServer::start();
    let err = fails(
        &run(sb_redis(&server, &["tail", "nope"]), DEADLINE),
        1,
        "stream \"nope\" does not exist",
    );
    // The command line's own hint, added by the error's kind.
    assert!(
        err.contains("; hint: publish to it with `streambus publish STREAM`"),
        "{err}"
    );
    let o = run(
        sb_redis(&server, &["tail", "s", "--from", "nope"]),
        DEADLINE,
    );
    fails(&o, 2, "invalid start \"nope\"");
    server.cli(&["SET", "k", "x"]);
    fails(
        &run(sb_redis(&server, &["tail", "k"]), DEADLINE),
        1,
        "not a stream",
    );
    fails(
        &run(sb_redis(&server, &["tail", "k", "--follow"]), DEADLINE),
        1,
        "not a stream",
    );
}
