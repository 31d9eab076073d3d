//! `streambus consume --exec` and `streambus dlq`, the real binary against a real
//! `redis-server` (one per test, from `streambus-testkit`). Nothing waits with a
//! fixed sleep: conditions are polled with a deadline; retries use millisecond
//! backoffs.

mod common;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use streambus_testkit::RedisServer;

use common::data::{pending, pending_entries, publish_n, xlen};
use common::{ok, run, sb_redis, sigterm, text, wait, wait_until};

const DEADLINE: Duration = Duration::from_secs(10);

/// The ids pending in a group.
fn pending_ids(server: &RedisServer, stream: &str, group: &str) -> Vec<String> {
    pending_entries(server, stream, group, None)
        .into_iter()
        .map(|e| e.id)
        .collect()
}

/// Entries of the stream not yet delivered to the group (XINFO GROUPS lag).
fn lag(server: &RedisServer, stream: &str, group: &str) -> u64 {
    let json: Value = serde_json::from_str(&ok(&run(
        sb_redis(server, &["groups", stream, "--json"]),
        DEADLINE,
    )))
    .unwrap();
    let g = json
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == group)
        .unwrap()
        .clone();
    g["lag"].as_u64().expect("lag known")
}

fn dead_letters(server: &RedisServer, stream: &str) -> Vec<Value> {
    ok(&run(
        sb_redis(server, &["dlq", "list", stream, "--json"]),
        DEADLINE,
    ))
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `sh` quoting of a path.
fn q(path: &Path) -> String {
    format!("'{}'", path.display())
}

/// `streambus consume S --group g --exec CMD EXTRA...`.
fn exec_command(server: &RedisServer, stream: &str, cmd: &str, extra: &[&str]) -> Command {
    let mut command = sb_redis(server, &["consume", stream, "--group", "g", "--exec", cmd]);
    command.args(extra);
    command
}

/// `consume S --group g --exec CMD EXTRA...`, run to completion, must succeed;
/// returns stderr (where the summary goes).
#[track_caller]
fn exec(server: &RedisServer, stream: &str, cmd: &str, extra: &[&str]) -> String {
    let out = run(exec_command(server, stream, cmd, extra), DEADLINE);
    ok(&out);
    text(&out.stderr)
}

/// `consume s --group g --exec CMD EXTRA...` left running, its stderr going
/// to `dir/stderr` (a file: nothing has to read it while it runs).
fn spawn_exec(server: &RedisServer, dir: &Path, cmd: &str, extra: &[&str]) -> Child {
    let stderr = std::fs::File::create(dir.join("stderr")).unwrap();
    exec_command(server, "s", cmd, extra)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// SIGTERM to a [`spawn_exec`] child; once it has exited, its status and
/// stderr.
fn terminate(child: Child, dir: &Path) -> (ExitStatus, String) {
    sigterm(&child);
    let out = wait(child, DEADLINE);
    let err = std::fs::read_to_string(dir.join("stderr")).unwrap();
    (out.status, err)
}

#[test]
fn exec_runs_the_command_per_entry_and_acks() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out");
    let ids = publish_n(&server, "s", 0..20);

    let err = exec(
        &server,
        "s",
        &format!("cat >> {}", q(&file)),
        &["--count", "20"],
    );
    assert!(
        err.contains("consumed: delivered 20, acked 20, retried 0, dead-lettered 0"),
        "{err}"
    );
    let got: Vec<Value> = lines(&file)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 20);
    let mut seen: Vec<&str> = got
        .iter()
        .map(|v| v["entry_id"].as_str().unwrap())
        .collect();
    seen.sort();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(seen, want);
    assert_eq!(got[0]["stream"], "s");
    assert!(got[0]["data"]["n"].is_u64(), "{}", got[0]);
    assert_eq!(pending(&server, "s", "g"), 0);
}

#[test]
fn exec_sets_the_environment() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("env");
    let ids = publish_n(&server, "s", 0..3);

    let cmd = format!(
        "echo \"$STREAMBUS_ENTRY_ID $STREAMBUS_DELIVERIES $STREAMBUS_STREAM $STREAMBUS_GROUP $STREAMBUS_CONSUMER\" >> {}",
        q(&file)
    );
    exec(&server, "s", &cmd, &["--count", "3", "--consumer", "c1"]);
    let mut got = lines(&file);
    got.sort();
    let mut want: Vec<String> = ids.iter().map(|id| format!("{id} 1 s g c1")).collect();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn exit_65_dead_letters_at_once() {
    let server = RedisServer::start();
    let ids = publish_n(&server, "s", 0..1);

    let err = exec(
        &server,
        "s",
        "echo 'field n is wrong' >&2; exit 65",
        &["--count", "1"],
    );
    // The command's stderr is passed through.
    assert!(err.contains("field n is wrong"), "{err}");
    assert!(err.contains("dead-lettered 1"), "{err}");
    let dl = dead_letters(&server, "s");
    assert_eq!(dl.len(), 1, "{dl:?}");
    let reason = dl[0]["reason"].as_str().unwrap();
    assert_eq!(reason, "command exited 65 (EX_DATAERR): field n is wrong");
    assert_eq!(dl[0]["deliveries"], 1);
    assert_eq!(dl[0]["source_id"], ids[0].as_str());
    assert_eq!(dl[0]["group"], "g");
    assert_eq!(pending(&server, "s", "g"), 0);

    // The table: a header and one row.
    let table = ok(&run(sb_redis(&server, &["dlq", "list", "s"]), DEADLINE));
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(rows[0].starts_with("ID "), "{table}");
    assert!(rows[1].contains(ids[0].as_str()), "{table}");
    assert!(rows[1].contains("command exited 65"), "{table}");
}

#[test]
fn a_failing_command_is_retried_until_it_succeeds() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let attempts = dir.path().join("attempts");
    publish_n(&server, "s", 0..1);

    let counter = dir.path().display().to_string();
    let cmd = format!(
        "echo $STREAMBUS_DELIVERIES >> {a}; f='{counter}'/$STREAMBUS_ENTRY_ID; n=$(cat $f 2>/dev/null || echo 0); echo $((n+1)) > $f; [ $n -ge 2 ]",
        a = q(&attempts)
    );
    let err = exec(
        &server,
        "s",
        &cmd,
        &[
            "--backoff",
            "10ms,50ms",
            "--max-deliveries",
            "5",
            "--count",
            "1",
        ],
    );
    assert_eq!(lines(&attempts), ["1", "2", "3"]);
    assert!(err.contains("acked 1, retried 2, dead-lettered 0"), "{err}");
    assert_eq!(pending(&server, "s", "g"), 0);
    assert_eq!(xlen(&server, "{s}:dlq"), 0);
}

#[test]
fn an_always_failing_command_is_dead_lettered_after_max_deliveries() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let attempts = dir.path().join("attempts");
    publish_n(&server, "s", 0..1);

    let cmd = format!(
        "echo $STREAMBUS_DELIVERIES >> {}; echo boom >&2; exit 1",
        q(&attempts)
    );
    let err = exec(
        &server,
        "s",
        &cmd,
        &[
            "--backoff",
            "10ms,20ms",
            "--max-deliveries",
            "3",
            "--count",
            "1",
        ],
    );
    assert_eq!(lines(&attempts), ["1", "2", "3"]);
    assert!(err.contains("dead-lettered 1"), "{err}");
    let dl = dead_letters(&server, "s");
    assert_eq!(dl.len(), 1, "{dl:?}");
    let reason = dl[0]["reason"].as_str().unwrap();
    assert!(reason.contains("command exited 1: boom"), "{reason}");
    assert_eq!(dl[0]["deliveries"], 3);
    assert_eq!(pending(&server, "s", "g"), 0);
}

#[test]
fn sigterm_finishes_running_commands_and_loses_nothing() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out");
    publish_n(&server, "s", 0..8);

    let cmd = format!("sleep 0.3; cat >> {}", q(&file));
    let child = spawn_exec(
        &server,
        dir.path(),
        &cmd,
        &["--concurrency", "4", "--grace", "5s"],
    );

    wait_until(DEADLINE, "a command to finish", || !lines(&file).is_empty());
    let (status, err) = terminate(child, dir.path());
    assert!(status.success(), "{status:?}: {err}");
    assert!(err.contains("consumed: delivered"), "{err}");

    let done: Vec<String> = lines(&file)
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["entry_id"].as_str().unwrap().to_owned()
        })
        .collect();
    let still_pending = pending_ids(&server, "s", "g");
    for id in &done {
        assert!(!still_pending.contains(id), "{id} ran but is still pending");
    }
    let lag = lag(&server, "s", "g");
    assert_eq!(
        done.len() as u64 + still_pending.len() as u64 + lag,
        8,
        "done {done:?}, pending {still_pending:?}, lag {lag}"
    );
}

#[test]
fn dlq_replay_and_purge() {
    let server = RedisServer::start();
    publish_n(&server, "s", 0..3);
    exec(&server, "s", "exit 65", &["--count", "3"]);
    let dl = dead_letters(&server, "s");
    assert_eq!(dl.len(), 3);
    let dl_ids: Vec<&str> = dl.iter().map(|d| d["id"].as_str().unwrap()).collect();

    // One by id.
    let out = ok(&run(
        sb_redis(&server, &["dlq", "replay", "s", "--id", dl_ids[0]]),
        DEADLINE,
    ));
    assert!(
        out.starts_with(&format!("replayed {} as ", dl_ids[0])),
        "{out}"
    );
    assert_eq!(xlen(&server, "s"), 4);
    assert_eq!(xlen(&server, "{s}:dlq"), 2);

    // An unknown id fails, after replaying the known one.
    let o = run(
        sb_redis(
            &server,
            &["dlq", "replay", "s", "--id", "1-1", "--id", dl_ids[1]],
        ),
        DEADLINE,
    );
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.starts_with("error: no dead letter 1-1 for s"), "{err}");
    assert!(text(&o.stdout).starts_with(&format!("replayed {} as ", dl_ids[1])));
    assert_eq!(xlen(&server, "s"), 5);
    assert_eq!(xlen(&server, "{s}:dlq"), 1);

    // The rest.
    let out = ok(&run(
        sb_redis(&server, &["dlq", "replay", "s", "--all"]),
        DEADLINE,
    ));
    assert_eq!(out, "replayed 1 dead letters onto s\n");
    assert_eq!(xlen(&server, "s"), 6);
    assert_eq!(xlen(&server, "{s}:dlq"), 0);
    let o = run(sb_redis(&server, &["dlq", "list", "s"]), DEADLINE);
    assert_eq!(ok(&o), "");
    assert_eq!(text(&o.stderr), "no dead letters for s\n");

    // The replayed entries are new entries: the group gets them again.
    exec(&server, "s", "exit 65", &["--count", "3"]);
    assert_eq!(xlen(&server, "{s}:dlq"), 3);

    let o = run(sb_redis(&server, &["dlq", "purge", "s"]), DEADLINE);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        "error: this deletes 3 dead letters of s; run again with --yes\n"
    );
    assert_eq!(xlen(&server, "{s}:dlq"), 3);
    let out = ok(&run(
        sb_redis(&server, &["dlq", "purge", "s", "--yes"]),
        DEADLINE,
    ));
    assert_eq!(out, "purged 3 dead letters\n");
    assert_eq!(xlen(&server, "{s}:dlq"), 0);
}

#[test]
fn when_the_grace_runs_out_the_command_and_its_children_are_killed() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    publish_n(&server, "s", 0..1);

    // The shell waits for a child of its own: killing the shell alone would leave it.
    let cmd = format!("sleep 30 & echo $! > {}; wait", q(&pid_file));
    let child = spawn_exec(&server, dir.path(), &cmd, &["--grace", "50ms"]);
    let mut sleep_pid: Option<i32> = None;
    wait_until(DEADLINE, "the command to start", || {
        sleep_pid = lines(&pid_file).first().and_then(|l| l.parse().ok());
        sleep_pid.is_some()
    });
    let sleep_pid = sleep_pid.unwrap();
    let (status, err) = terminate(child, dir.path());
    assert!(status.success(), "{status:?}: {err}");
    assert!(err.contains("unfinished 1 (left pending)"), "{err}");
    assert_eq!(pending(&server, "s", "g"), 1);

    // The orphaned `sleep` is gone (or a zombie waiting for init to reap it).
    let stat = Path::new("/proc").join(sleep_pid.to_string()).join("stat");
    wait_until(DEADLINE, "the command's child to be gone", || {
        match std::fs::read_to_string(&stat) {
            Err(_) => true,
            // The state follows the command's name, which is in parentheses.
            Ok(s) => s
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z'),
        }
    });
}
