//! What the `streambus` binary says when it cannot do its work: a bad URL,
//! Redis unreachable, a wrong password (never shown, nor the right one, nor a
//! URL from the environment), a key that is not a stream. Each is one
//! `error: ...` line.

mod common;

use std::time::Duration;

use streambus_testkit::{free_port, RedisServer, ServerOptions};

use common::{fails, ok, run, sb_redis, sb_url, streambus, text};

const DEADLINE: Duration = Duration::from_secs(10);

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
