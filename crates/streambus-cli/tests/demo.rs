//! `streambus demo`: the whole SOC pipeline for a few seconds; nothing lost,
//! exactly the malformed alerts dead-lettered, and a private redis-server
//! that is gone afterwards.

mod common;

use std::time::Duration;

use common::{find_after, process_exists, run, sb, text};
use streambus_testkit::{free_port, RedisServer};

const DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn loses_nothing_and_dead_letters_exactly_the_malformed_alerts() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        sb(
            dir.path(),
            &[
                "--redis",
                &server.url(),
                "demo",
                "--duration",
                "3s",
                "--rate",
                "300",
                "--no-serve",
            ],
        ),
        DEADLINE,
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.lines().any(|l| l == "lost: 0"), "{stdout}");
    let malformed: u64 = find_after(&stdout, "malformed:", 's')
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(malformed > 0, "{stdout}");
    assert_eq!(
        server.cli(&["XLEN", "{aurora:alerts}:dlq"]),
        malformed.to_string(),
        "{stdout}"
    );
    // The worker was killed and restarted.
    assert!(
        stderr.contains("killed worker alert-processor-2"),
        "{stderr}"
    );
    assert!(
        stderr.contains("restarted worker alert-processor-2"),
        "{stderr}"
    );
    // Every group drained.
    for (stream, group) in [
        ("aurora:alerts", "alert-processor"),
        ("aurora:agent:results", "api-persistence"),
    ] {
        let info = server.cli(&["XINFO", "GROUPS", stream]);
        assert!(info.contains(group), "{info}");
    }
}

#[test]
fn without_a_redis_runs_on_a_private_one_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = sb(dir.path(), &["demo", "--duration", "2s", "--no-serve"]);
    cmd.env("STREAMBUS_PROBE_ADDR", format!("127.0.0.1:{}", free_port()));
    let out = run(cmd, DEADLINE);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.lines().any(|l| l == "lost: 0"), "{stdout}");
    let started = stderr
        .lines()
        .find(|l| l.starts_with("no Redis given: started a private redis-server on 127.0.0.1:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    let pid: i32 = find_after(started, "pid ", ';').unwrap().parse().unwrap();
    let data = find_after(started, "(data in ", ';').unwrap();
    assert!(!process_exists(pid), "redis-server {pid} left behind");
    assert!(!std::path::Path::new(data).exists(), "{data} left behind");
}
