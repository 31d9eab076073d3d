//! Tests against a real `redis-server` (never the shared one on 6379).

mod common;

use common::{process_exists, text};

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use streambus_testkit::wait::wait_until;
use streambus_testkit::{
    free_port, unique_prefix, AclUser, Appendfsync, RedisServer, ServerOptions, TestkitError,
};

fn tcp_connects(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

#[test]
fn start_ping_and_accessors() {
    let server = RedisServer::start();
    assert_eq!(server.cli(&["PING"]), "PONG");
    assert_ne!(server.port(), 0);
    assert_ne!(server.port(), 6379, "must never use the shared Redis port");
    assert_eq!(server.host(), "127.0.0.1");
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    assert_eq!(
        server.url_for_user("bob", "p@ss word"),
        format!("redis://bob:p%40ss%20word@127.0.0.1:{}", server.port())
    );
    assert!(server.pid().is_some());
    assert!(server.is_running());
    assert!(server.dir().is_dir());
    assert!(server.dir().join("redis.conf").is_file());
    assert!(
        server.log().contains("Ready to accept connections"),
        "{}",
        server.log()
    );
    // The server really is ours: its pid and port match.
    let info = server.cli(&["INFO", "server"]);
    assert!(info.contains(&format!("process_id:{}", server.pid().unwrap())));
    assert!(info.contains(&format!("tcp_port:{}", server.port())));
    // RDB snapshots are off.
    assert_eq!(server.cli(&["CONFIG", "GET", "save"]), "save");
}

#[test]
fn kill_then_restart_on_same_port() {
    let mut server = RedisServer::start();
    let port = server.port();
    let pid = server.pid().unwrap();
    server.kill();
    assert!(!server.is_running());
    assert_eq!(server.pid(), None);
    assert!(!tcp_connects(port), "port {port} still accepts connections");
    assert!(!process_exists(pid), "killed server left a process/zombie");
    server.kill(); // idempotent

    server.restart();
    assert_eq!(server.port(), port);
    assert!(server.is_running());
    assert_ne!(server.pid(), Some(pid));
    assert_eq!(server.cli(&["PING"]), "PONG");
    // Without AOF, data does not survive a crash.
    server.cli(&["SET", "k", "v"]);
    server.restart(); // restart of a running server kills it first
    assert_eq!(server.cli(&["EXISTS", "k"]), "0");
}

#[test]
fn aof_always_survives_kill() {
    let mut server = RedisServer::start_with(ServerOptions {
        appendonly: true,
        appendfsync: Appendfsync::Always,
        ..ServerOptions::default()
    });
    assert_eq!(
        server.cli(&["CONFIG", "GET", "appendfsync"]),
        "appendfsync\nalways"
    );
    let id = server.cli(&["XADD", "s", "*", "a", "1"]);
    assert!(id.contains('-'), "unexpected XADD reply {id:?}");
    server.kill();
    server.restart();
    assert_eq!(server.cli(&["XLEN", "s"]), "1");
    assert!(server.dir().join("appendonlydir").is_dir());
}

#[test]
fn password_required() {
    let password = "s3cret with spaces & @:/";
    let server = RedisServer::start_with(ServerOptions {
        password: Some(password.into()),
        ..ServerOptions::default()
    });
    assert_eq!(server.cli(&["PING"]), "PONG");
    assert_eq!(
        server.url(),
        format!(
            "redis://:s3cret%20with%20spaces%20%26%20%40%3A%2F@127.0.0.1:{}",
            server.port()
        )
    );
    let out = server.cli_command().arg("PING").output().unwrap();
    assert!(text(&out).contains("NOAUTH"), "{}", text(&out));
}

#[test]
fn acl_user_is_restricted() {
    let server = RedisServer::start_with(ServerOptions {
        acl_users: vec![AclUser::new(
            "writer",
            "w pass",
            ["~ev:*", "+@stream", "+@connection", "+ping", "+acl|whoami"],
        )],
        ..ServerOptions::default()
    });
    let as_writer = |args: &[&str]| {
        let out = server
            .cli_command()
            .args(["--user", "writer", "--pass", "w pass", "--no-auth-warning"])
            .args(args)
            .output()
            .unwrap();
        text(&out).trim().to_owned()
    };
    assert_eq!(as_writer(&["ACL", "WHOAMI"]), "writer");
    assert_eq!(as_writer(&["PING"]), "PONG");
    assert!(as_writer(&["XADD", "ev:x", "*", "a", "1"]).contains('-'));
    let denied = as_writer(&["XADD", "other", "*", "a", "1"]);
    assert!(denied.contains("NOPERM"), "{denied}");
    let denied = as_writer(&["SET", "ev:y", "1"]);
    assert!(denied.contains("NOPERM"), "{denied}");
    // The default user is unaffected.
    assert_eq!(server.cli(&["XLEN", "ev:x"]), "1");
    assert!(server.cli(&["ACL", "LIST"]).contains("user writer on"));
}

#[test]
fn acl_users_survive_restart() {
    let mut server = RedisServer::start_with(ServerOptions {
        acl_users: vec![AclUser::new("reader", "r", ["~*", "+get"])],
        ..ServerOptions::default()
    });
    server.kill();
    server.restart();
    assert!(server.cli(&["ACL", "USERS"]).contains("reader"));
}

#[test]
fn extra_args_are_applied() {
    let server = RedisServer::start_with(ServerOptions {
        extra_args: vec!["--maxmemory-policy".into(), "noeviction".into()],
        ..ServerOptions::default()
    });
    assert_eq!(
        server.cli(&["CONFIG", "GET", "maxmemory-policy"]),
        "maxmemory-policy\nnoeviction"
    );
}

#[test]
fn missing_binary_is_reported() {
    let err = RedisServer::try_start_with(ServerOptions {
        binary: Some("/nonexistent/redis-server-xyz".into()),
        ..ServerOptions::default()
    })
    .unwrap_err();
    match &err {
        TestkitError::BinaryNotFound { binary, hint } => {
            assert_eq!(binary, "/nonexistent/redis-server-xyz");
            assert!(hint.contains("REDIS_SERVER_BIN"));
        }
        other => panic!("expected BinaryNotFound, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("not found"), "{msg}");
    assert!(msg.contains("apt-get install -y redis-server"), "{msg}");
    assert!(msg.contains("brew install redis"), "{msg}");
}

#[test]
fn bad_config_reports_exit_with_log() {
    let err = RedisServer::try_start_with(ServerOptions {
        extra_args: vec!["--no-such-option".into(), "1".into()],
        ..ServerOptions::default()
    })
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TestkitError::Exited { .. }), "{msg}");
    assert!(msg.contains("--no-such-option"), "{msg}");
    assert!(msg.contains("redis.conf"), "command line missing: {msg}");
}

#[test]
fn port_in_use_on_restart_times_out_with_log() {
    let mut server = RedisServer::start_with(ServerOptions {
        startup_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    });
    let port = server.port();
    server.kill();
    // Someone else takes the port: restart must not move to another port.
    let squatter = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    let err = server.try_restart().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("Address already in use"), "{msg}");
    assert_eq!(server.port(), port);
    drop(squatter);
    server.restart();
    assert_eq!(server.cli(&["PING"]), "PONG");
}

#[test]
fn drop_leaves_no_process_and_no_dir() {
    let server = RedisServer::start();
    let pid = server.pid().unwrap();
    let dir = server.dir().to_owned();
    let port = server.port();
    assert!(process_exists(pid));
    drop(server);
    let what = format!("redis-server {pid} to exit after drop");
    wait_until(Duration::from_secs(5), &what, || !process_exists(pid));
    assert!(!dir.exists(), "{} not removed", dir.display());
    assert!(!tcp_connects(port));
}

#[test]
fn crashed_server_is_noticed() {
    let server = RedisServer::start();
    let pid = server.pid().unwrap();
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    wait_until(Duration::from_secs(5), "the crash to be noticed", || {
        !server.is_running()
    });
    assert_eq!(server.pid(), None);
    assert!(!process_exists(pid), "crashed server left a zombie");
}

#[test]
fn servers_are_independent() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());
    a.cli(&["SET", "k", "a"]);
    assert_eq!(b.cli(&["EXISTS", "k"]), "0");
    let p1 = unique_prefix("t");
    let p2 = unique_prefix("t");
    assert_ne!(p1, p2);
    assert_ne!(free_port(), 0);
}
