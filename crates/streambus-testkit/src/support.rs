//! The binaries, free ports, unique key prefixes and small text helpers.

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::BuildHasher;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The `redis-server` binary: `$REDIS_SERVER_BIN`, or `redis-server` from `PATH`.
pub fn redis_server_bin() -> String {
    std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".to_owned())
}

/// The `redis-cli` binary: `$REDIS_CLI_BIN`, or `redis-cli` from `PATH`.
pub fn redis_cli_bin() -> String {
    std::env::var("REDIS_CLI_BIN").unwrap_or_else(|_| "redis-cli".to_owned())
}

/// A currently free TCP port on `127.0.0.1` (bind port 0, read it, release it).
///
/// Another process may take it before you use it; [`RedisServer`](crate::RedisServer) retries
/// with a new port when that happens.
///
/// # Panics
///
/// If binding `127.0.0.1:0` fails (no loopback interface).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0 to find a free port")
}

/// `n` distinct free ports, all bound at the same time so that none repeats.
pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .expect("bind 127.0.0.1:0 to find a free port")
        })
        .collect();
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .expect("local address of a bound socket")
                .port()
        })
        .collect()
}

/// A key prefix unique to this call, `"t:{label}:{8 hex digits}:"`, so tests
/// sharing one server use distinct keys.
///
/// Built from a per-process seed (time, process id and a randomly seeded
/// hasher) and a process-wide counter: calls within one process never repeat
/// (for the first 2^32 calls), and different processes start at random points.
pub fn unique_prefix(label: &str) -> String {
    static SEED: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let seed = *SEED.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let h = RandomState::new().hash_one((nanos, std::process::id()));
        ((h >> 32) ^ h) as u32
    });
    // An odd multiplier makes this a bijection of the counter: distinct
    // values for the first 2^32 calls of a process, random across processes.
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let value = seed.wrapping_add(count.wrapping_mul(0x9E37_79B9));
    format!("t:{label}:{value:08x}:")
}

/// Percent-encode everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn install_hint() -> String {
    "set REDIS_SERVER_BIN or install it: `sudo apt-get install -y redis-server` \
     on Debian/Ubuntu, `brew install redis` on macOS"
        .to_owned()
}

pub(crate) fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding() {
        assert_eq!(percent_encode("a b:c@d/é"), "a%20b%3Ac%40d%2F%C3%A9");
        assert_eq!(percent_encode("Az09-._~"), "Az09-._~");
    }

    #[test]
    fn unique_prefixes_differ() {
        let a = unique_prefix("x");
        let b = unique_prefix("x");
        assert_ne!(a, b);
        assert!(a.starts_with("t:x:") && a.ends_with(':') && a.len() == "t:x:".len() + 9);
    }

    #[test]
    fn log_tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
