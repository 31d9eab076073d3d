//! The `streambus` binary against a real `redis-server` (one per test, from
//! `streambus-testkit`). Nothing waits with a fixed sleep: conditions are polled
//! with a deadline.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use streambus_testkit::{free_port, RedisServer, ServerOptions};

use common::{ok, pending, run, run_with, sb_redis, sb_url, streambus, text, wait_until, xlen};

const DEADLINE: Duration = Duration::from_secs(10);

/// Checks a failure: exit code, and one `error: ...` line that contains `needle`.
#[track_caller]
fn fails(o: &Output, code: i32, needle: &str) -> String {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "{needle:?} not in {err:?}"
    );
    err
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Publishes `{"n": i}` for each i in `range` with the CLI; returns the ids.
fn publish_n(server: &RedisServer, stream: &str, range: std::ops::Range<u32>) -> Vec<String> {
    let input: String = range.map(|i| format!("{{\"n\":{i}}}\n")).collect();
    let out = ok(&run_with(
        sb_redis(server, &["publish", stream]),
        input.as_bytes(),
        DEADLINE,
    ));
    out.lines().map(str::to_owned).collect()
}

fn data_n(v: &Value) -> u64 {
    v["data"]["n"]
        .as_u64()
        .unwrap_or_else(|| panic!("no data.n in {v}"))
}

/// Reads lines of a running child's stdout, each within the deadline.
struct LineReader {
    rx: mpsc::Receiver<String>,
}

impl LineReader {
    fn new(stdout: ChildStdout) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LineReader { rx }
    }

    #[track_caller]
    fn next(&self) -> Value {
        let line = self
            .rx
            .recv_timeout(DEADLINE)
            .expect("no line from streambus within the deadline");
        serde_json::from_str(&line).unwrap()
    }
}

/// Kills a child that is still running when the test ends (also on panic).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(mut cmd: Command) -> KillOnDrop {
    KillOnDrop(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn streambus"),
    )
}

// ---------------------------------------------------------------- publish

#[test]
fn publish_json_arguments_prints_one_id_each() {
    let server = RedisServer::start();
    let out = ok(&run(
        sb_redis(
            &server,
            &[
                "publish",
                "s",
                r#"{"a":1}"#,
                "[2]",
                "--type",
                "t",
                "--key",
                "k",
            ],
        ),
        DEADLINE,
    ));
    let ids: Vec<&str> = out.lines().collect();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1] || ids[0].len() < ids[1].len());
    let rows = json_lines(&ok(&run(sb_redis(&server, &["tail", "s"]), DEADLINE)));
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["entry_id"], ids[0]);
    assert_eq!(rows[0]["data"]["a"], 1);
    assert_eq!(rows[0]["type"], "t");
    assert_eq!(rows[0]["key"], "k");
    assert_eq!(rows[1]["data"][0], 2);
}

#[test]
fn publish_stdin_streams_many_lines() {
    let server = RedisServer::start();
    let mut input = String::new();
    for i in 0..2500 {
        input.push_str(&format!("{{\"n\":{i}}}\n"));
        if i % 700 == 0 {
            input.push_str("\n  \n");
        }
    }
    let out = ok(&run_with(
        sb_redis(&server, &["publish", "s"]),
        input.as_bytes(),
        DEADLINE,
    ));
    let ids: Vec<&str> = out.lines().collect();
    assert_eq!(ids.len(), 2500);
    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 2500);
    assert_eq!(xlen(&server, "s"), 2500);
    // In order: the last entry is the last line.
    let last = json_lines(&ok(&run(
        sb_redis(&server, &["tail", "s", "-n", "1"]),
        DEADLINE,
    )));
    assert_eq!(data_n(&last[0]), 2499);
    assert_eq!(last[0]["entry_id"], *ids.last().unwrap());
}

#[test]
fn publish_field_writes_one_raw_entry() {
    let server = RedisServer::start();
    let out = ok(&run(
        sb_redis(
            &server,
            &[
                "publish",
                "s",
                "--field",
                "sensor_id=s1",
                "--field",
                "temp=0.5=x",
            ],
        ),
        DEADLINE,
    ));
    assert_eq!(out.lines().count(), 1);
    let rows = json_lines(&ok(&run(
        sb_redis(&server, &["tail", "s", "--from", "0"]),
        DEADLINE,
    )));
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0]["fields"],
        serde_json::json!({"sensor_id": "s1", "temp": "0.5=x"})
    );
    assert!(rows[0].get("data").is_none());
    assert_eq!(server.cli(&["XRANGE", "s", "-", "+"]).lines().count(), 5);
}

#[test]
fn publish_rejects_field_mixed_with_json() {
    let server = RedisServer::start();
    let o = run(
        sb_redis(&server, &["publish", "s", "{}", "--field", "a=1"]),
        DEADLINE,
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert_eq!(xlen(&server, "s"), 0);
}

#[test]
fn publish_maxlen_trims() {
    let server = RedisServer::start();
    let input: String = (0..1000).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    let out = ok(&run_with(
        sb_redis(&server, &["publish", "s", "--maxlen", "10"]),
        input.as_bytes(),
        DEADLINE,
    ));
    assert_eq!(out.lines().count(), 1000);
    // Approximate trimming removes whole nodes (100 entries by default).
    let len = xlen(&server, "s");
    assert!((10..=200).contains(&len), "XLEN {len}");
}

#[test]
fn publish_invalid_json_argument_writes_nothing() {
    let server = RedisServer::start();
    let o = run(
        sb_redis(&server, &["publish", "s", "{}", "{nope"]),
        DEADLINE,
    );
    fails(&o, 1, "JSON argument 2");
    fails(&o, 1, "not valid JSON");
    assert_eq!(text(&o.stdout), "");
    assert_eq!(xlen(&server, "s"), 0);
}

#[test]
fn publish_invalid_stdin_line_names_it_and_keeps_earlier_ones() {
    let server = RedisServer::start();
    let o = run_with(
        sb_redis(&server, &["publish", "s"]),
        b"{\"n\":0}\n\n{\"n\":1}\n{oops\n{\"n\":3}\n",
        DEADLINE,
    );
    let err = fails(&o, 1, "line 4");
    assert!(err.contains("2 messages before it published"), "{err}");
    assert!(err.contains("not valid JSON"), "{err}");
    assert_eq!(text(&o.stdout).lines().count(), 2);
    assert_eq!(xlen(&server, "s"), 2);
}

#[test]
fn publish_oversized_payload_writes_nothing() {
    let server = RedisServer::start();
    let big = format!("\"{}\"", "x".repeat(3000));
    let o = run(
        sb_redis(
            &server,
            &["publish", "s", &big, "--max-message-bytes", "2KiB"],
        ),
        DEADLINE,
    );
    fails(&o, 1, "exceeds the limit of 2048 bytes");
    assert_eq!(xlen(&server, "s"), 0);

    // On stdin, a line longer than the limit is refused without reading it whole.
    let line = format!("{big}\n");
    let o = run_with(
        sb_redis(&server, &["publish", "s", "--max-message-bytes", "1k"]),
        line.as_bytes(),
        DEADLINE,
    );
    fails(&o, 1, "line 1");
    assert_eq!(xlen(&server, "s"), 0);
}

// ---------------------------------------------------------------- tail

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
    let mut child = spawn(sb_redis(&server, &["tail", "s", "--follow"]));
    let lines = LineReader::new(child.0.stdout.take().unwrap());
    assert_eq!(data_n(&lines.next()), 0);
    assert_eq!(data_n(&lines.next()), 1);
    publish_n(&server, "s", 2..4);
    assert_eq!(data_n(&lines.next()), 2);
    assert_eq!(data_n(&lines.next()), 3);
}

#[test]
fn tail_follow_waits_for_a_missing_stream_and_stops_at_count() {
    let server = RedisServer::start();
    let mut child = spawn(sb_redis(
        &server,
        &["tail", "s", "--from", "0", "--follow", "--count", "3"],
    ));
    let lines = LineReader::new(child.0.stdout.take().unwrap());
    publish_n(&server, "s", 0..1);
    assert_eq!(data_n(&lines.next()), 0);
    publish_n(&server, "s", 1..5);
    assert_eq!(data_n(&lines.next()), 1);
    assert_eq!(data_n(&lines.next()), 2);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < DEADLINE, "tail did not stop at --count");
        std::thread::sleep(Duration::from_millis(10));
    };
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
    let start = Instant::now();
    let mut n = 1;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < DEADLINE, "tail kept running");
        publish_n(&server, "s", n..n + 1);
        n += 1;
        std::thread::sleep(Duration::from_millis(20));
    };
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

#[test]
fn consume_takes_back_its_own_pending_entries_first() {
    let server = RedisServer::start();
    publish_n(&server, "s", 0..4);
    ok(&run(
        sb_redis(&server, &["groups", "s", "--create", "g"]),
        DEADLINE,
    ));
    // Delivered to c1 and never acknowledged (as if c1 had crashed).
    server.cli(&[
        "XREADGROUP",
        "GROUP",
        "g",
        "c1",
        "COUNT",
        "2",
        "STREAMS",
        "s",
        ">",
    ]);
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
    let mut child = spawn(sb_redis(
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
    let lines = LineReader::new(child.0.stdout.take().unwrap());
    // Once the group exists, what comes next is what it reads.
    wait_until(DEADLINE, "the group to be created", || {
        server.cli(&["XINFO", "GROUPS", "s"]).contains('g')
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
    server.cli(&[
        "XREADGROUP",
        "GROUP",
        "g",
        "c1",
        "COUNT",
        "2",
        "STREAMS",
        "s",
        ">",
    ]);

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

// ---------------------------------------------------------------- errors

#[test]
fn bad_url_is_one_line() {
    let o = run(sb_url("localhost:6379", &["tail", "s"]), DEADLINE);
    fails(&o, 1, "invalid Redis URL");
}

#[test]
fn unreachable_redis_is_one_line() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let o = run(sb_url(&url, &["publish", "s", "{}"]), DEADLINE);
    fails(&o, 1, "cannot connect to Redis");
}

#[test]
fn wrong_password_never_shows_a_password() {
    let server = RedisServer::start_with(ServerOptions {
        password: Some("right-pw-7f3a".into()),
        ..ServerOptions::default()
    });
    let url = format!("redis://:wrong-pw-9c1e@127.0.0.1:{}", server.port());
    for args in [
        &["tail", "s"][..],
        &["publish", "s", "{}"],
        &["groups", "s"],
    ] {
        let o = run(sb_url(&url, args), DEADLINE);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        let lower = err.to_lowercase();
        assert!(
            lower.contains("password") || lower.contains("auth"),
            "{err}"
        );
        assert!(
            !err.contains("wrong-pw-9c1e") && !err.contains("right-pw-7f3a"),
            "{err}"
        );
    }
    // The right one works, and is not printed either.
    let o = run(sb_redis(&server, &["publish", "s", "{}"]), DEADLINE);
    ok(&o);
    assert!(!text(&o.stdout).contains("right-pw-7f3a"));
}

#[test]
fn help_never_shows_the_url_from_the_environment() {
    let mut cmd = streambus(&["--help"]);
    cmd.env("REDIS_URL", "redis://:env-secret-41@127.0.0.1:1");
    let o = run(cmd, DEADLINE);
    let help = ok(&o);
    assert!(help.contains("REDIS_URL"), "{help}");
    assert!(!help.contains("env-secret-41"), "{help}");

    let mut cmd = streambus(&["publish", "s", "{}"]);
    cmd.env("REDIS_URL", "redis://:env-secret-41@127.0.0.1:1");
    let err = fails(&run(cmd, DEADLINE), 1, "redis://:***@127.0.0.1:1");
    assert!(!err.contains("env-secret-41"));
}

#[test]
fn wrong_type_of_key_is_one_line() {
    let server = RedisServer::start();
    server.cli(&["SET", "k", "x"]);
    fails(
        &run(sb_redis(&server, &["publish", "k", "{}"]), DEADLINE),
        1,
        "not a stream",
    );
    fails(
        &run(sb_redis(&server, &["groups", "k"]), DEADLINE),
        1,
        "not a stream",
    );
    assert_eq!(server.cli(&["GET", "k"]), "x");
}
