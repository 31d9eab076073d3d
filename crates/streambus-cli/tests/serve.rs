//! `streambus serve`: health, auth, SIGTERM, the refusal to listen beyond
//! loopback without a token, and the private redis-server when none is given.

mod common;

use std::time::Duration;

use common::serve::start;
use common::{eventually, find_after, http_get, process_exists, run, sb, sigterm, text, wait};
use streambus_testkit::{free_port, RedisServer};

const DEADLINE: Duration = Duration::from_secs(20);
const TOKEN: &str = "test-token-0123456789";

#[test]
fn serves_health_requires_the_token_and_stops_on_sigterm() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = sb(
        dir.path(),
        &[
            "--redis",
            &server.url(),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--streams",
            "a,b",
        ],
    );
    cmd.env("STREAMBUS_TOKEN", TOKEN);
    let (child, lines, addr) = start(cmd);
    // A token from the environment is never printed.
    assert!(lines.iter().all(|l| !l.contains(TOKEN)), "{lines:?}");

    assert!(
        eventually(DEADLINE, || matches!(
            http_get(addr, "/healthz", None),
            Ok((200, _))
        )),
        "/healthz never answered 200"
    );
    let (code, _) = http_get(addr, "/api/streams", None).unwrap();
    assert_eq!(code, 401);
    let (code, _) = http_get(addr, "/api/streams", Some("wrong-token-0123456789")).unwrap();
    assert_eq!(code, 401);
    let (code, body) = http_get(addr, "/api/streams", Some(TOKEN)).unwrap();
    assert_eq!(code, 200, "{body}");

    sigterm(&child);
    let out = wait(child, DEADLINE);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn refuses_to_listen_beyond_loopback_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("0.0.0.0:{}", free_port());
    // No Redis is needed to refuse: nothing is started.
    let out = run(
        sb(
            dir.path(),
            &[
                "--redis",
                "redis://127.0.0.1:1",
                "serve",
                "--listen",
                &listen,
            ],
        ),
        DEADLINE,
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refusing to listen on"), "{err}");
    assert!(err.contains("without a token"), "{err}");
    assert!(err.contains("STREAMBUS_TOKEN"), "{err}");
}

#[test]
fn starts_and_stops_a_private_redis_when_none_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = sb(dir.path(), &["serve", "--listen", "127.0.0.1:0"]);
    // Nothing listens there: as if nothing answered on 127.0.0.1:6379.
    cmd.env("STREAMBUS_PROBE_ADDR", format!("127.0.0.1:{}", free_port()));
    let (child, lines, addr) = start(cmd);
    let started = lines
        .iter()
        .find(|l| l.contains("started a private redis-server"))
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(started.contains("and none on 127.0.0.1:"), "{started}");
    let pid: i32 = find_after(started, "pid ", ';').unwrap().parse().unwrap();
    let data = find_after(started, "(data in ", ';').unwrap().to_owned();
    assert!(process_exists(pid));
    assert!(std::path::Path::new(&data).is_dir());
    assert!(eventually(DEADLINE, || matches!(
        http_get(addr, "/healthz", None),
        Ok((200, _))
    )));

    sigterm(&child);
    let out = wait(child, DEADLINE);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!process_exists(pid), "redis-server {pid} left behind");
    assert!(!std::path::Path::new(&data).exists(), "{data} left behind");
}
