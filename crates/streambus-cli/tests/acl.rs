//! Each role of the README's ACL table ("Redis ACL users, one per role") runs
//! its commands through the `streambus` binary with exactly the documented
//! rules: the producer publishes (arguments and stdin), the worker consumes
//! (printing, and with `--exec`, dead letters included), the monitor monitors
//! (and cleans up with the `--cleanup` rules), and `serve` serves the API, the
//! relay and `/metrics`. The library's side is `crates/streambus/tests/acl.rs`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::data::{pending, publish_n, xlen};
use common::faults::Proxied;
use common::lines::lines_of;
use common::{http_get, ok, run, run_with, sb_url, sigterm, text, wait, wait_until};
use streambus_testkit::{AclUser, RedisServer, ServerOptions};

const DEADLINE: Duration = Duration::from_secs(20);
const PASSWORD: &str = "pw-for-cli-tests";
const STREAM: &str = "aurora:alerts";

/// The README's rules, role by role (its table writes `|` as `\|`).
const PRODUCER: &str = "~aurora:* +ping +xadd";
const WORKER: &str = "~aurora:* %RW~{aurora:*}:* +ping +xgroup|create +xreadgroup +xack +xpending +xclaim +xadd +xrange +evalsha +script|load";
const MONITOR: &str =
    "~aurora:* +ping +type +time +xinfo|stream +xinfo|groups +xinfo|consumers +xpending";
/// Added to the monitor's rules for `--cleanup`.
const CLEANUP: &str = "+xclaim +xgroup|delconsumer +evalsha +script|load";
/// Added to the producer's rules for `keep_unacked` (its trimming script).
const KEEP_UNACKED: &str = "+evalsha +script|load +xinfo|groups +xpending +xtrim +xlen +exists";
/// Added to the monitor's rules for `serve`.
const SERVE: &str = "+xread +xrange +xrevrange +xlen +xadd %R~{aurora:*}:*";
/// Added to `serve`'s rules when no streams are configured.
const SERVE_ALL_STREAMS: &str = "+scan";

fn user(name: &str, rules: &[&str]) -> AclUser {
    AclUser::new(
        name,
        PASSWORD,
        rules.iter().flat_map(|r| r.split(' ')).collect::<Vec<_>>(),
    )
}

/// A server with one user per role.
fn server() -> RedisServer {
    RedisServer::start_with(ServerOptions {
        acl_users: vec![
            user("producer", &[PRODUCER]),
            user("keeper", &[PRODUCER, KEEP_UNACKED]),
            user("worker", &[WORKER]),
            user("monitor", &[MONITOR]),
            user("cleanup", &[MONITOR, CLEANUP]),
            user("serve", &[MONITOR, SERVE]),
            user("serve-all", &[MONITOR, SERVE, SERVE_ALL_STREAMS]),
        ],
        ..Default::default()
    })
}

fn url(server: &RedisServer, role: &str) -> String {
    server.url_for_user(role, PASSWORD)
}

#[test]
fn the_rules_here_are_the_readmes() {
    let readme = include_str!("../../../README.md").replace("\\|", "|");
    let table = readme
        .split("**Redis ACL users, one per role.**")
        .nth(1)
        .expect("the README's ACL table");
    for (role, rules) in [
        ("producer", PRODUCER),
        ("worker", WORKER),
        ("monitor", MONITOR),
    ] {
        assert!(
            table.contains(&format!("| {role} | `{rules}`")),
            "README's {role} row: {rules}"
        );
    }
    for extra in [CLEANUP, SERVE_ALL_STREAMS, KEEP_UNACKED] {
        assert!(table.contains(&format!("`{extra}`")), "{extra}");
    }
    for part in SERVE.split(' ') {
        let serve_row = table.lines().find(|l| l.starts_with("| serve |")).unwrap();
        assert!(
            serve_row.contains(part),
            "serve row lacks {part}: {serve_row}"
        );
    }
}

/// `publish --keep-unacked` trims with the producer's rules plus the
/// README's extras; with the producer's alone it still publishes, and says
/// on stderr that trimming failed.
#[test]
fn keep_unacked_trims_with_exactly_its_extra_rules() {
    let server = server();
    let lines: String = (0..500).map(|n| format!("{{\"n\":{n}}}\n")).collect();
    let args = ["publish", STREAM, "--maxlen", "10", "--keep-unacked"];
    let o = run_with(
        sb_url(&url(&server, "keeper"), &args),
        lines.as_bytes(),
        DEADLINE,
    );
    assert_eq!(ok(&o).lines().count(), 500);
    assert!(!text(&o.stderr).contains("trimming"), "{}", text(&o.stderr));
    let len = xlen(&server, STREAM);
    assert!((10..=200).contains(&len), "XLEN {len}");

    let o = run_with(
        sb_url(&url(&server, "producer"), &args),
        lines.as_bytes(),
        DEADLINE,
    );
    assert_eq!(ok(&o).lines().count(), 500);
    let err = text(&o.stderr);
    assert!(
        err.contains("trimming (keep_unacked) failed") && err.contains("no permissions"),
        "{err}"
    );
    assert_eq!(xlen(&server, STREAM), len + 500);
}

#[test]
fn producer_publishes_arguments_and_stdin_with_exactly_its_rules() {
    let server = server();
    let producer = url(&server, "producer");
    let o = run(
        sb_url(&producer, &["publish", STREAM, r#"{"a":1}"#, r#"{"a":2}"#]),
        DEADLINE,
    );
    assert_eq!(ok(&o).lines().count(), 2);
    let o = run(
        sb_url(&producer, &["publish", STREAM, "--field", "k=v"]),
        DEADLINE,
    );
    assert_eq!(ok(&o).lines().count(), 1);
    let o = run_with(
        sb_url(&producer, &["publish", STREAM]),
        b"{\"b\":1}\n{\"b\":2}\n\n{\"b\":3}\n",
        DEADLINE,
    );
    assert_eq!(ok(&o).lines().count(), 3);
    assert_eq!(xlen(&server, STREAM), 6);

    // A key of another type is still one plain line, from XADD's reply.
    server.cli(&["SET", "aurora:plain", "x"]);
    for stdin in [false, true] {
        let o = if stdin {
            run_with(
                sb_url(&producer, &["publish", "aurora:plain"]),
                b"{}\n",
                DEADLINE,
            )
        } else {
            run(
                sb_url(&producer, &["publish", "aurora:plain", "{}"]),
                DEADLINE,
            )
        };
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("not a stream"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    assert_eq!(server.cli(&["GET", "aurora:plain"]), "x");
}

/// Without `+xrevrange +xrange` the producer cannot look for a chunk that got
/// no reply: it neither prints it as written nor sends it again (it could be
/// there twice), and says so.
#[test]
fn producer_without_read_rules_stops_at_an_unconfirmed_chunk_and_says_so() {
    let proxied = Proxied::new(server());
    let (server, proxy) = (&proxied.redis, &proxied.proxy);
    let through_proxy = format!("redis://producer:{PASSWORD}@{}", proxy.addr());
    let publish = || {
        let mut cmd = sb_url(
            &through_proxy,
            &[
                "-v",
                "--response-timeout",
                "300ms",
                "--connect-timeout",
                "300ms",
                "publish",
                STREAM,
                "--retry-for",
                "10s",
            ],
        );
        let mut child = cmd.stdin(Stdio::piped()).spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = lines_of(child.stdout.take().unwrap());
        let err = lines_of(child.stderr.take().unwrap());
        (child, stdin, out, err)
    };
    // Waits for a line of `err` that contains `what`; the lines seen.
    let wait_for = |err: &mpsc::Receiver<String>, what: &str| {
        let mut seen = Vec::new();
        loop {
            match err.recv_timeout(DEADLINE) {
                Ok(l) if l.contains(what) => return seen,
                Ok(l) => seen.push(l),
                Err(_) => panic!("no {what:?} on stderr: {seen:#?}"),
            }
        }
    };

    // Line 1 goes through; line 2 is sent into a black hole. Once Redis
    // answers again, line 2 cannot be looked for (no XRANGE).
    let (child, mut stdin, out, err) = publish();
    stdin.write_all(b"{\"line\":1}\n").unwrap();
    let first = out.recv_timeout(DEADLINE).expect("line 1's id");
    proxy.black_hole();
    stdin.write_all(b"{\"line\":2}\n").unwrap();
    wait_for(&err, "warning: Redis at");
    proxy.heal();
    let o = wait(child, DEADLINE);
    drop(stdin);
    // Everything it printed: the streams end with the process.
    let stderr: Vec<String> = err.iter().collect();
    let last = stderr.last().cloned().unwrap_or_default();
    assert_eq!(o.status.code(), Some(1), "{stderr:#?}");
    assert_eq!(out.iter().count(), 0, "only line 1 was printed");
    assert!(last.contains("line 2 not published"), "{last}");
    assert!(last.contains("may be in the stream"), "{last}");
    assert!(last.contains("+xrange"), "{last}");
    eprintln!("a chunk without a reply, after line 1: {last}");
    let entries = server.cli(&["XRANGE", STREAM, "-", "+"]);
    assert!(entries.contains(&first), "{entries}");
    // Line 2 is in the stream at most once.
    assert!(xlen(server, STREAM) <= 2, "{entries}");

    // The same when the very first chunk gets no reply: where the stream
    // ended could not be read at start (no XREVRANGE), which it says with -v.
    proxy.heal_all();
    let (child, mut stdin, out, err) = publish();
    wait_for(&err, "XREVRANGE");
    proxy.black_hole();
    stdin.write_all(b"{\"line\":1}\n").unwrap();
    let o = wait(child, DEADLINE);
    drop(stdin);
    proxy.heal();
    // Everything it printed: the streams end with the process.
    let stderr: Vec<String> = err.iter().collect();
    let last = stderr.last().cloned().unwrap_or_default();
    assert_eq!(o.status.code(), Some(1), "{stderr:#?}");
    assert_eq!(out.iter().count(), 0, "nothing printed");
    assert!(last.contains("line 1 not published"), "{last}");
    assert!(last.contains("may be in the stream"), "{last}");
    assert!(last.contains("+xrevrange"), "{last}");
    eprintln!("the first chunk without a reply: {last}");
}

#[test]
fn worker_consumes_and_runs_a_command_with_exactly_its_rules() {
    let server = server();
    publish_n(&server, STREAM, 0..4);
    let worker = url(&server, "worker");
    let o = run(
        sb_url(&worker, &["consume", STREAM, "-g", "printer", "-n", "4"]),
        DEADLINE,
    );
    assert_eq!(ok(&o).lines().count(), 4);
    assert_eq!(pending(&server, STREAM, "printer"), 0);

    let o = run(
        sb_url(
            &worker,
            &[
                "consume",
                STREAM,
                "-g",
                "exec",
                "-n",
                "4",
                "--exec",
                "cat >/dev/null",
            ],
        ),
        DEADLINE,
    );
    ok(&o);
    assert_eq!(pending(&server, STREAM, "exec"), 0);

    // Dead letters: the move runs as a script, checked against the user too.
    let o = run(
        sb_url(
            &worker,
            &[
                "consume", STREAM, "-g", "poison", "-n", "4", "--exec", "exit 65",
            ],
        ),
        DEADLINE,
    );
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("dead-lettered 4"), "{err}");
    assert_eq!(xlen(&server, "{aurora:alerts}:dlq"), 4);
    assert_eq!(pending(&server, STREAM, "poison"), 0);
}

#[test]
fn monitor_role_monitors_and_cleans_up_with_exactly_its_rules() {
    let server = server();
    publish_n(&server, STREAM, 0..2);
    ok(&run(
        sb_url(
            &server.url(),
            &["consume", STREAM, "-g", "g", "-c", "gone", "-n", "2"],
        ),
        DEADLINE,
    ));
    let monitor = url(&server, "monitor");
    let out = ok(&run(sb_url(&monitor, &["monitor", STREAM]), DEADLINE));
    assert!(out.contains("group g"), "{out}");
    let out = ok(&run(
        sb_url(&monitor, &["monitor", STREAM, "--json"]),
        DEADLINE,
    ));
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["length"], 2, "{v}");

    let cleanup = url(&server, "cleanup");
    let out = ok(&run(
        sb_url(
            &cleanup,
            &[
                "monitor",
                STREAM,
                "-g",
                "g",
                "--cleanup",
                "--idle-threshold",
                "1ms",
            ],
        ),
        DEADLINE,
    ));
    assert!(out.contains("deleted consumer gone"), "{out}");
}

#[test]
fn serve_role_serves_the_api_the_relay_and_metrics_with_exactly_its_rules() {
    let server = server();
    publish_n(&server, STREAM, 0..1);
    ok(&run(
        sb_url(
            &server.url(),
            &["consume", STREAM, "-g", "g", "-n", "1", "--exec", "exit 65"],
        ),
        DEADLINE,
    ));
    let (child, addr) = serve(&url(&server, "serve"), &["--streams", STREAM]);
    for path in [
        "/api/streams".to_owned(),
        format!("/api/streams/{STREAM}/groups/g"),
        format!("/api/streams/{STREAM}/groups/g/scale"),
        format!("/api/streams/{STREAM}/dlq"),
        "/metrics".to_owned(),
    ] {
        let (code, body) = http_get(addr, &path, None).unwrap();
        assert_eq!(code, 200, "{path}: {body}");
    }
    let (_, body) = http_get(addr, "/api/streams", None).unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["streams"][0]["dead_letters"], 1, "{v}");

    // The relay: an entry published through the API reaches a WebSocket client.
    let mut ws = ws_connect(addr, &format!("/ws?streams={STREAM}"));
    let (code, body) = http_post(
        addr,
        &format!("/api/streams/{STREAM}/messages"),
        "{\"x\":1}",
    );
    assert_eq!(code, 201, "{body}");
    let published: serde_json::Value = serde_json::from_str(&body).unwrap();
    let relayed: serde_json::Value = serde_json::from_str(&ws_text(&mut ws)).unwrap();
    assert_eq!(relayed["entry_id"], published["entry_id"], "{relayed}");
    stop(child);

    // No streams configured: they are found with SCAN.
    let (child, addr) = serve(&url(&server, "serve-all"), &[]);
    let (code, body) = http_get(addr, "/api/streams", None).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(STREAM), "{body}");
    stop(child);
}

/// Starts `serve` on a free loopback port; returns it, once healthy, with
/// its address.
fn serve(url: &str, extra: &[&str]) -> (Child, SocketAddr) {
    let mut cmd = sb_url(url, &["serve", "--listen", "127.0.0.1:0"]);
    cmd.args(extra);
    let (child, _, addr) = common::serve::start(cmd);
    wait_until(DEADLINE, "/healthz", || {
        matches!(http_get(addr, "/healthz", None), Ok((200, _)))
    });
    (child, addr)
}

fn stop(child: Child) {
    sigterm(&child);
    let out = wait(child, DEADLINE);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// `POST path` with a JSON body over HTTP/1.1: the status and the body.
fn http_post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, body.to_owned())
}

/// A WebSocket client's handshake (no extensions); the socket once upgraded.
fn ws_connect(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    // The response head, byte by byte, so that no frame is read with it.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// The next text frame from the server (which never masks, and sends the
/// relay's entries unfragmented).
fn ws_text(s: &mut TcpStream) -> String {
    loop {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).unwrap();
        let len = match h[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                s.read_exact(&mut l).unwrap();
                u64::from(u16::from_be_bytes(l))
            }
            127 => {
                let mut l = [0u8; 8];
                s.read_exact(&mut l).unwrap();
                u64::from_be_bytes(l)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).unwrap();
        match h[0] & 0x0f {
            1 => return String::from_utf8(payload).unwrap(),
            8 => panic!("closed: {}", String::from_utf8_lossy(&payload)),
            // Pings and others.
            _ => {}
        }
    }
}
