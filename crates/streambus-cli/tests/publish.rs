//! `streambus publish` against a real `redis-server` (one per test, from
//! `streambus-testkit`): JSON arguments, stdin lines, raw fields, trimming,
//! and the input it refuses (which it names, publishing nothing after it).

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::data::{data_n, numbered, numbered_with_blanks, xlen};
use common::{exit_within, fails, json_lines, ok, run, run_with, sb_redis, sigterm, text};
use streambus_testkit::RedisServer;

const DEADLINE: Duration = Duration::from_secs(10);

/// `streambus publish s ARGS...` against `server`, to completion.
fn publish(server: &RedisServer, args: &[&str]) -> Output {
    run(publish_command(server, args), DEADLINE)
}

/// The same, with `input` on stdin.
fn publish_stdin(server: &RedisServer, args: &[&str], input: &[u8]) -> Output {
    run_with(publish_command(server, args), input, DEADLINE)
}

fn publish_command(server: &RedisServer, args: &[&str]) -> Command {
    let mut cmd = sb_redis(server, &["publish", "s"]);
    cmd.args(args);
    cmd
}

#[test]
fn publish_json_arguments_prints_one_id_each() {
    let server = RedisServer::start();
    let out = ok(&publish(
        &server,
        &[r#"{"a":1}"#, "[2]", "--type", "t", "--key", "k"],
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
    // More lines than one chunk (4096) and more bytes than one read of stdin.
    let input = numbered_with_blanks(10_000, 700);
    let out = ok(&publish_stdin(&server, &[], input.as_bytes()));
    let ids: Vec<&str> = out.lines().collect();
    assert_eq!(ids.len(), 10_000);
    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 10_000);
    assert_eq!(xlen(&server, "s"), 10_000);
    // In order: the last entry is the last line.
    let last = json_lines(&ok(&run(
        sb_redis(&server, &["tail", "s", "-n", "1"]),
        DEADLINE,
    )));
    assert_eq!(data_n(&last[0]), 9999);
    assert_eq!(last[0]["entry_id"], *ids.last().unwrap());
}

/// `streambus publish s` with stdin and stdout piped: its stdin, and its
/// stdout's lines as they come (read by a thread).
fn publish_open_stdin(
    server: &RedisServer,
) -> (
    std::process::Child,
    std::process::ChildStdin,
    std::sync::mpsc::Receiver<String>,
) {
    use std::io::BufRead;
    use std::process::Stdio;

    let mut child = publish_command(server, &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let (tx, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, stdin, printed)
}

/// Writes `{"n":N}` for each n, one at a time, and waits for each one's id.
fn publish_one_by_one(
    server: &RedisServer,
    stdin: &mut std::process::ChildStdin,
    printed: &std::sync::mpsc::Receiver<String>,
    ns: std::ops::Range<u64>,
) {
    use std::io::Write;
    for n in ns {
        writeln!(stdin, r#"{{"n":{n}}}"#).unwrap();
        stdin.flush().unwrap();
        let id = printed
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("no id printed for line {} within {DEADLINE:?}", n + 1));
        assert!(id.contains('-'), "{id}");
        assert_eq!(xlen(server, "s"), n + 1);
    }
}

/// A line that arrives alone, with stdin left open, is published and its id
/// printed at once: stdin is read ahead, but a chunk never waits for more.
#[test]
fn publish_stdin_sends_a_line_as_it_comes_while_stdin_stays_open() {
    let server = RedisServer::start();
    let (mut child, mut stdin, printed) = publish_open_stdin(&server);
    publish_one_by_one(&server, &mut stdin, &printed, 0..3);
    drop(stdin);
    let status = exit_within(&mut child, DEADLINE).expect("still running after stdin closed");
    assert!(status.success());
}

/// On SIGTERM, with stdin still open and a line half written: the lines read
/// are published, the cut one is not, stderr says through which line, exit 0.
#[test]
fn publish_stdin_stops_on_sigterm_after_the_lines_it_read() {
    use std::io::{Read, Write};

    let server = RedisServer::start();
    let (mut child, mut stdin, printed) = publish_open_stdin(&server);
    publish_one_by_one(&server, &mut stdin, &printed, 0..3);
    stdin.write_all(br#"{"n":"#).unwrap();
    stdin.flush().unwrap();
    sigterm(&child);
    let status = exit_within(&mut child, DEADLINE).expect("still running after SIGTERM");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status:?}: {err}");
    assert!(
        err.contains("stopped by a signal: 3 messages published, through line 3"),
        "{err}"
    );
    assert_eq!(xlen(&server, "s"), 3);
    assert!(printed.try_recv().is_err(), "an id for the cut line");
    drop(stdin);
}

#[test]
fn publish_field_writes_one_raw_entry() {
    let server = RedisServer::start();
    let out = ok(&publish(
        &server,
        &["--field", "sensor_id=s1", "--field", "temp=0.5=x"],
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
    let o = publish(&server, &["{}", "--field", "a=1"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert_eq!(xlen(&server, "s"), 0);
}

#[test]
fn publish_maxlen_trims() {
    let server = RedisServer::start();
    let input = numbered(0..1000);
    let out = ok(&publish_stdin(
        &server,
        &["--maxlen", "10"],
        input.as_bytes(),
    ));
    assert_eq!(out.lines().count(), 1000);
    // Approximate trimming removes whole nodes (100 entries by default).
    let len = xlen(&server, "s");
    assert!((10..=200).contains(&len), "XLEN {len}");
}

/// `--keep-unacked`: trimming to --maxlen stops at the first entry a group
/// still needs (here: its pending entries); a stream without a group trims
/// as with --maxlen alone, before publish returns.
#[test]
fn publish_keep_unacked_trims_nothing_a_group_needs() {
    let server = RedisServer::start();
    server.cli(&["XGROUP", "CREATE", "s", "g", "0", "MKSTREAM"]);
    ok(&publish_stdin(&server, &[], numbered(0..50).as_bytes()));
    let read = server.cli(&[
        "XREADGROUP",
        "GROUP",
        "g",
        "w1",
        "COUNT",
        "50",
        "STREAMS",
        "s",
        ">",
    ]);
    assert!(read.contains("49"), "{read}");
    let input = numbered(50..3000);
    let out = ok(&publish_stdin(
        &server,
        &["--maxlen", "10", "--keep-unacked"],
        input.as_bytes(),
    ));
    assert_eq!(out.lines().count(), 2950);
    assert_eq!(xlen(&server, "s"), 3000, "nothing trimmed past the group");

    let other = sb_redis(
        &server,
        &["publish", "t", "--maxlen", "10", "--keep-unacked"],
    );
    let out = ok(&run_with(other, input.as_bytes(), DEADLINE));
    assert_eq!(out.lines().count(), 2950);
    let len = xlen(&server, "t");
    assert!((10..=200).contains(&len), "XLEN {len}");
}

#[test]
fn publish_invalid_json_argument_writes_nothing() {
    let server = RedisServer::start();
    let o = publish(&server, &["{}", "{nope"]);
    fails(&o, 1, "JSON argument 2");
    fails(&o, 1, "not valid JSON");
    assert_eq!(text(&o.stdout), "");
    assert_eq!(xlen(&server, "s"), 0);
}

#[test]
fn publish_invalid_stdin_line_names_it_and_keeps_earlier_ones() {
    let server = RedisServer::start();
    let o = publish_stdin(&server, &[], b"{\"n\":0}\n\n{\"n\":1}\n{oops\n{\"n\":3}\n");
    let err = fails(&o, 1, "line 4");
    assert!(err.contains("2 messages before it published"), "{err}");
    assert!(err.contains("not valid JSON"), "{err}");
    assert_eq!(text(&o.stdout).lines().count(), 2);
    assert_eq!(xlen(&server, "s"), 2);
}

/// `--key-field host`: each line's key from its `host` field, so that one
/// process publishes keyed events to a partitioned stream, each host's to
/// one partition, in order. A line without the field is refused by number.
#[test]
fn publish_key_field_routes_each_line_by_its_own_key() {
    let server = RedisServer::start();
    let input: String = (0..300)
        .map(|n| format!("{{\"host\":\"h{}\",\"n\":{n}}}\n", n % 7))
        .collect();
    let args = ["--partitions", "4", "--key-field", "host"];
    ok(&publish_stdin(&server, &args, input.as_bytes()));
    let mut seen: std::collections::HashMap<String, (u64, Vec<u64>)> = Default::default();
    let rows = json_lines(&ok(&run(
        sb_redis(
            &server,
            &[
                "tail",
                "s",
                "--partitions",
                "4",
                "--from",
                "0",
                "-n",
                "1000",
            ],
        ),
        DEADLINE,
    )));
    let total = rows.len();
    for row in rows {
        let host = row["key"].as_str().unwrap().to_owned();
        let p = row["partition"].as_u64().unwrap();
        let (partition, ns) = seen.entry(host.clone()).or_insert((p, Vec::new()));
        assert_eq!(*partition, p, "{host} in two partitions");
        ns.push(data_n(&row));
    }
    assert_eq!(total, 300);
    assert_eq!(seen.len(), 7);
    for (host, (_, ns)) in &seen {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "{host} out of order: {ns:?}"
        );
    }

    let o = publish_stdin(
        &server,
        &["--key-field", "host"],
        b"{\"host\":\"a\"}\n{\"n\":1}\n",
    );
    let err = fails(&o, 1, "line 2");
    assert!(err.contains("has no field \"host\""), "{err}");
    assert_eq!(text(&o.stdout).lines().count(), 1);
}

/// `--min-replicas`: lines count as published once a replica holds them;
/// asked for more replicas than there are, publish stops at the first line,
/// saying it is on the primary but not replicated.
#[test]
fn publish_min_replicas_waits_for_replicas_and_says_when_it_cannot() {
    let setup = streambus_testkit::RedisSentinel::start();
    let primary = setup.primary();
    let replica = setup
        .server_ports()
        .into_iter()
        .find(|p| *p != primary.port())
        .unwrap();
    let input = numbered(0..500);
    let out = ok(&publish_stdin(
        primary,
        &["--min-replicas", "1"],
        input.as_bytes(),
    ));
    assert_eq!(out.lines().count(), 500);
    // Acknowledged only once the replica had them: there with no waiting.
    assert_eq!(xlen(setup.server(replica), "s"), 500);

    let args = ["--min-replicas", "2", "--replica-timeout", "100ms"];
    let o = publish_stdin(primary, &args, input.as_bytes());
    let err = fails(&o, 1, "line 1");
    assert!(
        err.contains("not yet replicated") && err.contains("1 of 2 replicas"),
        "{err}"
    );
}

#[test]
fn publish_oversized_payload_writes_nothing() {
    let server = RedisServer::start();
    let big = format!("\"{}\"", "x".repeat(3000));
    let o = publish(&server, &[&big, "--max-message-bytes", "2KiB"]);
    fails(&o, 1, "exceeds the limit of 2048 bytes");
    assert_eq!(xlen(&server, "s"), 0);

    // On stdin, a line longer than the limit is refused without reading it whole.
    let line = format!("{big}\n");
    let o = publish_stdin(&server, &["--max-message-bytes", "1k"], line.as_bytes());
    fails(&o, 1, "line 1");
    assert_eq!(xlen(&server, "s"), 0);
}
