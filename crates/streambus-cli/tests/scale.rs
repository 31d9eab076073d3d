//! `streambus scale` against a real `redis-server` (one per test, from
//! `streambus-testkit`), on the reference package's example: its sentence,
//! the target over a window, as JSON, and the thresholds and groups it
//! refuses.

mod common;

use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use streambus_testkit::RedisServer;

use common::data::reference_server;
use common::{ok, run, sb_redis};

const DEADLINE: Duration = Duration::from_secs(10);

/// `streambus scale s ARGS...` against `server`, to completion.
fn scale(server: &RedisServer, args: &[&str]) -> Output {
    let mut cmd = sb_redis(server, &["scale", "s"]);
    cmd.args(args);
    run(cmd, DEADLINE)
}

#[test]
fn scale_prints_the_reference_sentence_and_the_target() {
    let server = reference_server();
    let out = ok(&scale(
        &server,
        &[
            "--group",
            "g",
            "--window",
            "200ms",
            "--scale-out-rate",
            "60",
            "--scale-in-rate",
            "20",
        ],
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
    let out = ok(&scale(&server, &["-g", "g", "--window", "10ms"]));
    assert!(
        out.starts_with(
            "Consumers should be NO_SCALE as stream length (11) / pending (83) rate is 13.253%\n"
        ),
        "{out}"
    );
}

#[test]
fn scale_json_is_one_object() {
    let server = reference_server();
    let out = ok(&scale(
        &server,
        &[
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
    let server = reference_server();
    let o = scale(
        &server,
        &["-g", "g", "--scale-out-rate", "10", "--scale-in-rate", "20"],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: invalid --scale-out-rate / --scale-in-rate: "),
        "{err}"
    );
    assert!(err.contains("must not be below"), "{err}");

    let o = scale(&server, &["-g", "nope", "--window", "10ms"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no group \"nope\""), "{err}");
}
