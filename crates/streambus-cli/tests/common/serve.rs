//! `streambus serve` started, and the address its dashboard line names.

use std::net::SocketAddr;
use std::process::{Child, Command};

use super::lines::lines_of;
use super::{find_after, STEP};

/// Starts `cmd` (a `serve`) and returns it with the lines of stderr seen
/// until the dashboard's address was printed (that line included), and that
/// address. Stderr is drained from then on, so that the server never blocks
/// on it.
pub fn start(mut cmd: Command) -> (Child, Vec<String>, SocketAddr) {
    let mut child = cmd.spawn().expect("spawn streambus serve");
    let rx = lines_of(child.stderr.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let Ok(line) = rx.recv_timeout(STEP) else {
            child.kill().ok();
            child.wait().ok();
            panic!("no dashboard line; stderr so far: {lines:?}");
        };
        lines.push(line.clone());
        if let Some(addr) = find_after(&line, "dashboard: http://", '/') {
            let addr = addr.parse().unwrap();
            std::thread::spawn(move || for _ in rx {});
            return (child, lines, addr);
        }
    }
}
