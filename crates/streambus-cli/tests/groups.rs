//! Consumer groups from the command line, against a real `redis-server` (one
//! per test, from `streambus-testkit`): `consume` prints, then acknowledges
//! (its own pending entries first), from where its group starts; `groups`
//! creates, lists and destroys. Nothing waits with a fixed sleep: conditions
//! are polled with a deadline.

mod common;

use std::time::Duration;

use serde_json::Value;
use streambus_testkit::RedisServer;

use common::data::{data_n, deliver, has_group, pending, publish_n};
use common::lines::spawn_reading;
use common::{fails, json_lines, ok, run, sb_redis, wait_until};

const DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- consume

#[test]
fn consume_count_prints_then_acknowledges() {
    let server = RedisServer::start();
    publish_n(&server, "s", 0..5);
    let args = [
        "consume",
        "s",
        "--group",
        "g",
        "--consumer",
        "c",
        "--count",
        "3",
        "--max-wait",
        "100ms",
    ];
    let rows = json_lines(&ok(&run(sb_redis(&server, &args), DEADLINE)));
    assert_eq!(rows.iter().map(data_n).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(pending(&server, "s", "g"), 0);
    // Only what was printed was delivered: the next run goes on from there.
    let mut args = args;
    args[7] = "2";
    let rows = json_lines(&ok(&run(sb_redis(&server, &args), DEADLINE)));
    assert_eq!(rows.iter().map(data_n).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(pending(&server, "s", "g"), 0);
}

/// A read returns what is there at once: with the default batch (1000) and a
/// long --max-wait, an entry is printed as soon as it is published, not when
/// a batch is full or the wait is over.
#[test]
fn consume_prints_what_is_there_without_waiting_to_fill_a_batch() {
    let server = RedisServer::start();
    publish_n(&server, "s", 0..3);
    let args = ["consume", "s", "--group", "g", "--max-wait", "30s"];
    let (_child, lines) = spawn_reading(sb_redis(&server, &args));
    let started = std::time::Instant::now();
    let first: Vec<Value> = (0..3).map(|_| lines.next()).collect();
    assert_eq!(first.iter().map(data_n).collect::<Vec<_>>(), [0, 1, 2]);
    publish_n(&server, "s", 3..4);
    assert_eq!(data_n(&lines.next()), 3);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "printed long before the 30 s max-wait: {:?}",
        started.elapsed()
    );
    wait_until(DEADLINE, "all acknowledged", || {
        pending(&server, "s", "g") == 0
    });
}

#[test]
fn consume_takes_back_its_own_pending_entries_first() {
    let server = RedisServer::start();
    publish_n(&server, "s", 0..4);
    ok(&run(
        sb_redis(&server, &["groups", "s", "--create", "g"]),
        DEADLINE,
    ));
    // Delivered to c1 and never acknowledged (as if c1 had crashed).
    deliver(&server, "s", "g", "c1", 2);
    assert_eq!(pending(&server, "s", "g"), 2);
    let rows = json_lines(&ok(&run(
        sb_redis(
            &server,
            &[
                "consume",
                "s",
                "-g",
                "g",
                "-c",
                "c1",
                "-n",
                "3",
                "--batch-size",
                "2",
            ],
        ),
        DEADLINE,
    )));
    assert_eq!(rows.iter().map(data_n).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(pending(&server, "s", "g"), 0);
}

#[test]
fn consume_group_starts_where_asked() {
    let server = RedisServer::start();
    publish_n(&server, "s", 0..2);
    let (_child, lines) = spawn_reading(sb_redis(
        &server,
        &[
            "consume",
            "s",
            "-g",
            "g",
            "--from",
            "$",
            "-n",
            "1",
            "--max-wait",
            "200ms",
        ],
    ));
    // Once the group exists, what comes next is what it reads.
    wait_until(DEADLINE, "the group to be created", || {
        has_group(&server, "s", "g")
    });
    publish_n(&server, "s", 2..3);
    assert_eq!(data_n(&lines.next()), 2);
}

// ---------------------------------------------------------------- groups

#[test]
fn groups_create_list_json_destroy() {
    let server = RedisServer::start();
    let created = ok(&run(
        sb_redis(&server, &["groups", "s", "--create", "g"]),
        DEADLINE,
    ));
    assert_eq!(created, "created group g on s\n");
    let again = ok(&run(
        sb_redis(&server, &["groups", "s", "--create", "g"]),
        DEADLINE,
    ));
    assert_eq!(again, "group g already exists on s\n");
    ok(&run(
        sb_redis(&server, &["groups", "s", "--create", "late", "--from", "$"]),
        DEADLINE,
    ));
    publish_n(&server, "s", 0..3);
    deliver(&server, "s", "g", "c1", 2);

    let table = ok(&run(sb_redis(&server, &["groups", "s"]), DEADLINE));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    let header = lines[0];
    assert!(header.starts_with("GROUP"), "{table}");
    let g = lines.iter().find(|l| l.starts_with("g ")).expect(&table);
    let cols: Vec<&str> = g.split_whitespace().collect();
    assert_eq!(cols[1..3], ["1", "2"], "{table}");
    assert_eq!(cols[4], "1", "{table}");
    // Columns line up with the header.
    assert_eq!(header.find("PENDING"), g.find(cols[2]));

    let json: Value = serde_json::from_str(&ok(&run(
        sb_redis(&server, &["groups", "s", "--json"]),
        DEADLINE,
    )))
    .unwrap();
    let groups = json.as_array().unwrap();
    assert_eq!(groups.len(), 2);
    let g = groups.iter().find(|g| g["name"] == "g").unwrap();
    assert_eq!(g["pending"], 2);
    assert_eq!(g["consumers"], 1);
    assert_eq!(g["lag"], 1);

    let destroyed = ok(&run(
        sb_redis(&server, &["groups", "s", "--destroy", "g"]),
        DEADLINE,
    ));
    assert_eq!(destroyed, "destroyed group g (it had 2 pending entries)\n");
    fails(
        &run(
            sb_redis(&server, &["groups", "s", "--destroy", "g"]),
            DEADLINE,
        ),
        1,
        "no group g on s",
    );
}
