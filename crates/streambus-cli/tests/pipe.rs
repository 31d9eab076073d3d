//! `streambus consume --pipe CMD`: one long-running command answers for many
//! entries. The real binary against a real `redis-server`, with Python
//! handlers written the way the README shows. Nothing waits with a fixed
//! sleep: conditions are polled with a deadline.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use streambus_testkit::RedisServer;

use common::data::{pending, publish_n, xlen};
use common::{ok, run, sb_redis, sigterm, text, wait, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

/// Writes a Python handler into `dir`: `body` runs per entry with `e` (the
/// entry's line), `n` (its payload's n), `i` (its entry id) and `log` (a file
/// that gets one line `n deliveries` per entry seen).
fn handler(dir: &Path, body: &str) -> String {
    let script = format!(
        r#"import json, os, sys
log = open({log:?}, "a", buffering=1)
for line in sys.stdin:
    e = json.loads(line)
    n, i = e["data"]["n"], e["entry_id"]
    log.write(f"{{n}} {{e['deliveries']}}\n")
{body}
"#,
        log = dir.join("seen").display().to_string(),
        body = body
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>(),
    );
    let path = dir.join("handler.py");
    std::fs::write(&path, script).unwrap();
    format!("python3 {}", path.display())
}

/// `n` to the deliveries seen, from the handler's log.
fn seen(dir: &Path) -> HashMap<u32, Vec<u32>> {
    let mut m: HashMap<u32, Vec<u32>> = HashMap::new();
    for line in std::fs::read_to_string(dir.join("seen"))
        .unwrap_or_default()
        .lines()
    {
        let (n, d) = line.split_once(' ').unwrap();
        m.entry(n.parse().unwrap())
            .or_default()
            .push(d.parse().unwrap());
    }
    m
}

/// The `n` of the first entry the handler logged.
fn first_seen(dir: &Path) -> u32 {
    let log = std::fs::read_to_string(dir.join("seen")).unwrap();
    let first = log.lines().next().expect("the handler saw an entry");
    first.split_once(' ').unwrap().0.parse().unwrap()
}

fn pipe_args<'a>(stream: &'a str, cmd: &'a str, count: &'a str) -> Vec<&'a str> {
    vec![
        "consume",
        stream,
        "--group",
        "g",
        "--pipe",
        cmd,
        "-n",
        count,
        "--backoff",
        "20ms",
        "--max-wait",
        "200ms",
    ]
}

#[test]
fn answers_ack_retry_and_dead_letter_entries_in_any_order() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    publish_n(&server, "p:s", 0..300);
    // Every 50th is poison; every 7th fails once and asks for a retry. Answers
    // are held back and written three at a time in reverse order (or when no
    // more input is ready), so they come out of order.
    let script = format!(
        r#"import json, select, sys
log = open({log:?}, "a", buffering=1)
held = []
def flush():
    global held
    for a in reversed(held):
        print(a, flush=True)
    held = []
while True:
    if held and not select.select([sys.stdin], [], [], 0.02)[0]:
        flush()
    line = sys.stdin.readline()
    if not line:
        break
    e = json.loads(line)
    n, i = e["data"]["n"], e["entry_id"]
    log.write(f"{{n}} {{e['deliveries']}}\n")
    if n % 50 == 0:
        held.append(f"dead {{i}} n={{n}} is poison")
    elif n % 7 == 0 and e["deliveries"] == 1:
        held.append(f"retry {{i}} 10ms flaky")
    else:
        held.append(f"ack {{i}}")
    if len(held) == 3:
        flush()
"#,
        log = dir.path().join("seen").display().to_string()
    );
    let path = dir.path().join("handler.py");
    std::fs::write(&path, script).unwrap();
    let cmd = format!("python3 {}", path.display());
    ok(&run(
        sb_redis(&server, &pipe_args("p:s", &cmd, "300")),
        DEADLINE,
    ));
    assert_eq!(pending(&server, "p:s", "g"), 0);
    assert_eq!(xlen(&server, "{p:s}:dlq"), 6, "0, 50, ..., 250");
    let first = server.cli(&["XRANGE", "{p:s}:dlq", "-", "+", "COUNT", "1"]);
    assert!(first.contains("is poison"), "the reason is kept: {first}");
    let seen = seen(dir.path());
    assert_eq!(seen.len(), 300, "every entry reached the command");
    for (n, deliveries) in &seen {
        let want = if n % 7 == 0 && n % 50 != 0 {
            vec![1, 2]
        } else {
            vec![1]
        };
        assert_eq!(deliveries, &want, "entry {n}");
    }
}

#[test]
fn a_command_that_crashes_is_restarted_and_its_entries_retried() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    publish_n(&server, "p:crash", 0..200);
    // The first delivery of entry 42 kills the command while it holds the
    // entries after it too (they are in its stdin, unanswered).
    let cmd = handler(
        dir.path(),
        r#"if n == 42 and e["deliveries"] == 1:
    os._exit(3)
print(f"ack {i}", flush=True)"#,
    );
    let o = run(
        sb_redis(&server, &pipe_args("p:crash", &cmd, "200")),
        DEADLINE,
    );
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("the pipe command (copy 0) exited"), "{err}");
    assert_eq!(pending(&server, "p:crash", "g"), 0);
    assert_eq!(xlen(&server, "{p:crash}:dlq"), 0);
    let seen = seen(dir.path());
    assert_eq!(seen.len(), 200);
    assert_eq!(seen[&42], vec![1, 2], "retried after the crash");
    assert!(
        err.contains("acked 200"),
        "every entry acknowledged once: {err}"
    );
}

#[test]
fn a_command_that_writes_garbage_is_restarted_and_nothing_is_acked_by_guess() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    publish_n(&server, "p:junk", 0..100);
    let marker = dir.path().join("spoke");
    // The first copy prints a log line to stdout instead of stderr once, then
    // would ack; the copy that replaces it behaves.
    let cmd = handler(
        dir.path(),
        &format!(
            r#"if not os.path.exists({marker:?}):
    open({marker:?}, "w").close()
    print("processing started", flush=True)
print(f"ack {{i}}", flush=True)"#,
            marker = marker.display().to_string()
        ),
    );
    let o = run(
        sb_redis(&server, &pipe_args("p:junk", &cmd, "100")),
        DEADLINE,
    );
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("wrote a line that is not an answer")
            && err.contains("\"processing started\"")
            && err.contains("`ack ID`"),
        "a clear error naming the line and the protocol: {err}"
    );
    assert_eq!(pending(&server, "p:junk", "g"), 0);
    // The entry whose answer was garbage (the first the command saw: the
    // handlers hand lines over in no set order) was not acknowledged on that
    // answer: it came back.
    let first = first_seen(dir.path());
    let seen = seen(dir.path());
    assert_eq!(seen.len(), 100);
    assert_eq!(seen[&first], vec![1, 2], "{seen:?}");
}

#[test]
fn an_answer_for_an_entry_it_does_not_hold_is_an_error_too() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    publish_n(&server, "p:wrong", 0..20);
    let marker = dir.path().join("lied");
    let cmd = handler(
        dir.path(),
        &format!(
            r#"if not os.path.exists({marker:?}):
    open({marker:?}, "w").close()
    print("ack 1-1", flush=True)
print(f"ack {{i}}", flush=True)"#,
            marker = marker.display().to_string()
        ),
    );
    let o = run(
        sb_redis(&server, &pipe_args("p:wrong", &cmd, "20")),
        DEADLINE,
    );
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("answered for entry 1-1, which it does not hold"),
        "{err}"
    );
    assert_eq!(pending(&server, "p:wrong", "g"), 0);
    assert_eq!(seen(dir.path())[&first_seen(dir.path())], vec![1, 2]);
}

#[test]
fn shutdown_lets_the_command_answer_then_closes_its_input() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    publish_n(&server, "p:stop", 0..50);
    let eof = dir.path().join("eof");
    // Slow answers; "eof" is written when the command sees the end of its input.
    let script = format!(
        r#"import json, sys, time
for line in sys.stdin:
    e = json.loads(line)
    time.sleep(0.05)
    print(f"ack {{e['entry_id']}}", flush=True)
open({eof:?}, "w").write("eof")
"#,
        eof = eof.display().to_string()
    );
    let path = dir.path().join("slow.py");
    std::fs::write(&path, script).unwrap();
    let cmd = format!("python3 {}", path.display());
    let child = sb_redis(
        &server,
        &[
            "consume",
            "p:stop",
            "--group",
            "g",
            "--pipe",
            &cmd,
            "--in-flight",
            "4",
            "--max-wait",
            "200ms",
        ],
    )
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    wait_until(DEADLINE, "some entries acknowledged", || {
        // The group first (XPENDING fails without it).
        acked(&server) >= 3 && pending(&server, "p:stop", "g") < 50
    });
    sigterm(&child);
    let o = wait(child, DEADLINE);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(
        std::fs::read_to_string(&eof).unwrap(),
        "eof",
        "its input was closed"
    );
    // What it answered is acknowledged; the rest was never handed out, or
    // stays pending for the next run: nothing is lost.
    let acked_now = acked(&server);
    assert!(
        err.contains(&format!("acked {acked_now}")),
        "{acked_now} {err}"
    );
    assert!(acked_now < 50, "it stopped before the end: {err}");
}

/// Entries of `p:stop` the group has acknowledged: delivered and not pending.
fn acked(server: &RedisServer) -> u64 {
    let info = server.cli(&["XINFO", "GROUPS", "p:stop"]);
    let lines: Vec<&str> = info.lines().collect();
    let value = |key: &str| -> u64 {
        lines
            .iter()
            .position(|l| *l == key)
            .and_then(|i| lines.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    value("entries-read").saturating_sub(value("pending"))
}
