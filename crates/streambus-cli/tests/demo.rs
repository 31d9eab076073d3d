//! `streambus demo`: the whole SOC pipeline for a few seconds, through a
//! killed worker and a network cut; nothing lost, exactly the malformed
//! alerts dead-lettered, and a private redis-server that is gone afterwards.

mod common;

use std::time::Duration;

use common::{find_after, process_exists, run, sb, text};
use streambus_testkit::{free_port, RedisServer, ServerOptions};

const DEADLINE: Duration = Duration::from_secs(60);
/// The recovery promised with the default timeouts (README "Faults"): work
/// again within 10 s of the network healing.
const RECOVERY_BOUND: Duration = Duration::from_secs(10);

/// The demo's network cut, from its summary line
/// `network cut:   0.5s black hole; work resumed 3.2s after healing`:
/// (the cut's length, the time to resume after the heal).
fn network_cut(stdout: &str) -> (Duration, Duration) {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("network cut:"))
        .unwrap_or_else(|| panic!("no network cut line: {stdout}"));
    let length = line
        .split_whitespace()
        .nth(2)
        .and_then(seconds)
        .unwrap_or_else(|| panic!("{line}"));
    let after = find_after(line, "work resumed ", ' ')
        .and_then(seconds)
        .unwrap_or_else(|| panic!("{line}"));
    (length, after)
}

/// `streambus [--redis URL] demo ARGS... --no-serve` in a fresh directory (so
/// that no ./streambus.toml is read); it must exit 0: (stdout, stderr).
/// Without a URL, nothing listens where the demo looks for a Redis first.
fn demo(redis: Option<&str>, args: &[&str]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = sb(dir.path(), &[]);
    match redis {
        Some(url) => cmd.args(["--redis", url]),
        None => cmd.env("STREAMBUS_PROBE_ADDR", format!("127.0.0.1:{}", free_port())),
    };
    cmd.arg("demo").args(args).arg("--no-serve");
    let out = run(cmd, DEADLINE);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// `0.5s`, `3.2s` or `450ms`.
fn seconds(s: &str) -> Option<Duration> {
    match s.strip_suffix("ms") {
        Some(ms) => ms.parse().ok().map(Duration::from_millis),
        None => s
            .strip_suffix('s')?
            .parse()
            .ok()
            .map(Duration::from_secs_f64),
    }
}

#[test]
fn loses_nothing_and_dead_letters_exactly_the_malformed_alerts() {
    let server = RedisServer::start();
    let (stdout, stderr) = demo(Some(&server.url()), &["--duration", "3s", "--rate", "300"]);
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
    // Then the workers' network was cut (3s / 6) and they resumed, with the
    // default timeouts, within the documented bound.
    assert!(
        stderr.contains("network cut: workers' connections to Redis black-holed for 500ms"),
        "{stderr}"
    );
    assert!(
        stderr.contains("network healed: work resumed after "),
        "{stderr}"
    );
    let (length, resumed_after) = network_cut(&stdout);
    eprintln!("demo: {length:?} black hole; work resumed {resumed_after:?} after healing");
    assert!(
        length >= Duration::from_millis(500) && length < Duration::from_secs(1),
        "{stdout}"
    );
    assert!(resumed_after <= RECOVERY_BOUND, "{stdout}");
    // The cut comes before `lost: 0`.
    let cut_line = stdout.lines().position(|l| l.contains("network cut:"));
    let lost_line = stdout.lines().position(|l| l == "lost: 0");
    assert!(cut_line < lost_line, "{stdout}");
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
    let (stdout, stderr) = demo(None, &["--duration", "2s"]);
    assert!(stdout.lines().any(|l| l == "lost: 0"), "{stdout}");
    // The private server's URL is a plain one: the network is cut there too.
    let (_, resumed_after) = network_cut(&stdout);
    assert!(resumed_after <= RECOVERY_BOUND, "{stdout}");
    let started = stderr
        .lines()
        .find(|l| l.starts_with("no Redis given: started a private redis-server on 127.0.0.1:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    let pid: i32 = find_after(started, "pid ", ';').unwrap().parse().unwrap();
    let data = find_after(started, "(data in ", ';').unwrap();
    assert!(!process_exists(pid), "redis-server {pid} left behind");
    assert!(!std::path::Path::new(data).exists(), "{data} left behind");
}

#[test]
fn json_prints_the_summary_as_one_object() {
    let server = RedisServer::start();
    let (stdout, stderr) = demo(Some(&server.url()), &["--duration", "2s", "--json"]);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["lost"], 0, "{v}");
    assert_eq!(v["drained"], true, "{v}");
    let p = &v["published"];
    assert!(p["alerts"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(
        p["alerts"].as_u64(),
        Some(p["security"].as_u64().unwrap() + p["cps"].as_u64().unwrap()),
        "{v}"
    );
    assert_eq!(v["processed"].as_array().unwrap().len(), 5, "{v}");
    // Exactly the malformed alerts are dead letters, as Redis says.
    let malformed = v["malformed_sent"].as_u64().unwrap();
    assert!(malformed > 0, "{v}");
    assert_eq!(v["dead_lettered"]["in_alerts_dlq"], malformed, "{v}");
    assert_eq!(
        server.cli(&["XLEN", "{aurora:alerts}:dlq"]),
        malformed.to_string()
    );
    let resumed = v["network_cut"]["resumed_after_ms"].as_u64().unwrap();
    assert!(Duration::from_millis(resumed) <= RECOVERY_BOUND, "{v}");
    // The progress stays on stderr.
    assert!(stderr.contains("killed worker"), "{stderr}");
}

#[test]
fn without_a_route_for_the_workers_skips_the_cut_and_says_why() {
    // The demo is given a client whose password it cannot read back, so it
    // cannot give the workers a client through the proxy.
    let server = RedisServer::start_with(ServerOptions {
        password: Some("s3cret".to_owned()),
        ..Default::default()
    });
    let (stdout, stderr) = demo(Some(&server.url()), &["--duration", "2s"]);
    assert!(stdout.lines().any(|l| l == "lost: 0"), "{stdout}");
    assert!(
        stderr.contains("network cut skipped: the Redis URL has a password"),
        "{stderr}"
    );
    assert!(
        stdout.contains("  network cut:   skipped (the Redis URL has a password"),
        "{stdout}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
}
