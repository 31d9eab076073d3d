//! Shared by the tests of the `streambus` binary.
//!
//! # Layout
//!
//! - here: run the binary with a clean environment and a deadline, check
//!   what it printed, poll a condition, signal a child, a tiny HTTP/1.1 GET;
//! - [`data`]: entries put into Redis, and what Redis says about streams,
//!   groups and consumers;
//! - [`lines`]: a running command's stdout line by line, as it comes;
//! - [`serve`]: `streambus serve` started, and the dashboard's address;
//! - [`faults`]: Redis behind the testkit's `FaultProxy`, and commands with
//!   short timeouts that print through it.
// Each test binary uses a part of it.
#![allow(dead_code)]

pub mod data;
pub mod faults;
pub mod lines;
pub mod serve;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use streambus_testkit::RedisServer;

/// How long one step of a helper here (a run, a line awaited) may take
/// before the test fails.
pub const STEP: Duration = Duration::from_secs(20);

/// `streambus ARGS...` with no Redis, topology, token or log settings
/// inherited; stdin empty, stdout and stderr piped.
pub fn streambus(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streambus"));
    cmd.env_remove("REDIS_URL")
        .env_remove("RUST_LOG")
        .env_remove("STREAMBUS_CONFIG")
        .env_remove("STREAMBUS_TOKEN")
        .env_remove("STREAMBUS_PROBE_ADDR")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// `streambus ARGS...` run in `dir` (so that no ./streambus.toml is picked
/// up), with no Redis, topology, token or log settings inherited.
pub fn sb(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = streambus(args);
    cmd.current_dir(dir);
    cmd
}

/// `streambus --redis URL ARGS...`, with no settings inherited.
pub fn sb_url(url: &str, args: &[&str]) -> Command {
    let mut cmd = streambus(&["--redis", url]);
    cmd.args(args);
    cmd
}

/// `streambus --redis URL ARGS...` against `server`.
pub fn sb_redis(server: &RedisServer, args: &[&str]) -> Command {
    sb_url(&server.url(), args)
}

/// Runs to completion within `deadline` (killed and failed after it).
pub fn run(mut cmd: Command, deadline: Duration) -> Output {
    let child = cmd.spawn().expect("spawn streambus");
    wait(child, deadline)
}

/// Runs to completion within `deadline`, with `stdin` as input.
pub fn run_with(mut cmd: Command, stdin: &[u8], deadline: Duration) -> Output {
    let mut child = cmd.stdin(Stdio::piped()).spawn().expect("spawn streambus");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    // Written from a thread: the child may fill its stdout pipe before it has
    // read all of its input.
    let writer = std::thread::spawn(move || {
        // The child may stop reading early (a bad line): a broken pipe is fine.
        let _ = input.write_all(&data);
    });
    let out = wait(child, deadline);
    writer.join().unwrap();
    out
}

/// Waits for `child` to exit within `deadline` (killed and failed after it),
/// reading what is left of its stdout and stderr.
pub fn wait(mut child: Child, deadline: Duration) -> Output {
    // Either may have been taken by the caller already.
    let out = read_all(child.stdout.take());
    let err = read_all(child.stderr.take());
    let Some(status) = exit_within(&mut child, deadline) else {
        child.kill().ok();
        child.wait().ok();
        let e = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
        panic!("streambus did not exit within {deadline:?}; stderr:\n{e}");
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Reads `r` to its end on a thread (so that the child never blocks on a full
/// pipe); nothing when there is no `r`.
fn read_all(r: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(mut r) = r {
            // What was read before an error is all there is.
            let _ = r.read_to_end(&mut b);
        }
        b
    })
}

/// The exit status of `child` once it has exited, polled until `deadline`;
/// `None` if it is still running then (it is left running: the caller
/// decides whether to kill it or fail).
pub fn exit_within(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let mut status = None;
    eventually(deadline, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status
}

/// Sends SIGTERM to `child` (the graceful stop every long-running command
/// has).
#[track_caller]
pub fn sigterm(child: &Child) {
    // SAFETY: kill(2) on the pid of our own child, which has not been reaped.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill(SIGTERM)");
}

/// Output as text; streambus writes UTF-8.
pub fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).expect("streambus output is UTF-8")
}

/// Stdout of a successful run.
#[track_caller]
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "status {:?}, stderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    text(&o.stdout)
}

/// Checks a failure: exit code, and one `error: ...` line that contains
/// `needle` (in any case); returns that line.
#[track_caller]
pub fn fails(o: &Output, code: i32, needle: &str) -> String {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "{needle:?} not in {err:?}"
    );
    err
}

/// Each line of `text` as a JSON value.
#[track_caller]
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// The repository's example topology file.
pub fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../streambus.example.toml")
}

/// `GET path` over HTTP/1.1: the status code and the body.
pub fn http_get(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((code, body))
}

/// Whether process `pid` exists.
pub fn process_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Polling with a deadline: the testkit's helpers, under the names these
/// tests use (`eventually(deadline, cond) -> bool`, `wait_until(deadline,
/// what, cond)`).
// Not every test binary uses both (`dead_code` does not cover imports).
#[allow(unused_imports)]
pub use streambus_testkit::wait::{eventually, wait_until};

/// The text after `prefix` up to the next `delim`, in the first line that has it.
pub fn find_after<'a>(text: &'a str, prefix: &str, delim: char) -> Option<&'a str> {
    let start = text.find(prefix)? + prefix.len();
    let rest = &text[start..];
    Some(rest.split(delim).next().unwrap_or(rest))
}
