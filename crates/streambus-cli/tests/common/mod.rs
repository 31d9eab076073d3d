//! Shared by the tests of `serve`, `topology` and `demo`: run the binary with
//! a clean environment and a deadline, and a tiny HTTP/1.1 GET.
// Each test binary uses a part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `streambus ARGS...` run in `dir` (so that no ./streambus.toml is picked
/// up), with no Redis, topology, token or log settings inherited.
pub fn sb(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streambus"));
    cmd.current_dir(dir)
        .env_remove("REDIS_URL")
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

/// Runs to completion within `deadline` (killed and failed after it).
pub fn run(mut cmd: Command, deadline: Duration) -> Output {
    let child = cmd.spawn().expect("spawn streambus");
    wait(child, deadline)
}

pub fn wait(mut child: Child, deadline: Duration) -> Output {
    let start = Instant::now();
    // Either may have been taken by the caller already.
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(mut s) = stdout {
            let _ = s.read_to_end(&mut b);
        }
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(mut s) = stderr {
            let _ = s.read_to_end(&mut b);
        }
        b
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > deadline {
            child.kill().ok();
            child.wait().ok();
            let e = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
            panic!("streambus did not exit within {deadline:?}; stderr:\n{e}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
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

/// Polls `cond` every 20 ms until it holds or `deadline` passes.
pub fn eventually(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// The text after `prefix` up to the next `delim`, in the first line that has it.
pub fn find_after<'a>(text: &'a str, prefix: &str, delim: char) -> Option<&'a str> {
    let start = text.find(prefix)? + prefix.len();
    let rest = &text[start..];
    Some(rest.split(delim).next().unwrap_or(rest))
}
