//! Redis behind the testkit's `FaultProxy`, and commands that print through
//! it with short timeouts ([`TIMEOUTS`]), their stdout lines collected with
//! the time each arrived ([`Running`]).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use streambus_testkit::{Appendfsync, FaultProxy, RedisServer, ServerOptions};

use super::data::add;
use super::{eventually, exit_within, sb_url, sigterm, wait_until};

/// How long any one step may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);
/// The bound asserted on the time from heal (or restart) to the first entry
/// printed: the in-flight attempt fails within about 1 s at 500 ms timeouts,
/// the backoff adds at most 2 s, the rest is round trips.
pub const RECOVERY: Duration = Duration::from_secs(5);
/// The short timeouts of every command under test: a silent connection is
/// given up within 0.5 s.
pub const TIMEOUTS: [&str; 4] = ["--response-timeout", "500ms", "--connect-timeout", "500ms"];

/// `streambus --redis URL` with the short [`TIMEOUTS`], then `args`.
pub fn fast(url: &str, args: &[&str]) -> Command {
    let mut cmd = sb_url(url, &TIMEOUTS);
    cmd.args(args);
    cmd
}

/// A runtime for the proxy (and for reading a stream back with the library).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A server whose data survives a SIGKILL: AOF with `fsync` at every write.
pub fn aof_always() -> ServerOptions {
    ServerOptions {
        appendonly: true,
        appendfsync: Appendfsync::Always,
        ..ServerOptions::default()
    }
}

/// A Redis server, the proxy in front of it, and the runtime the proxy runs
/// on.
pub struct Proxied {
    pub redis: RedisServer,
    pub proxy: FaultProxy,
    /// Last, so that it is dropped last: the proxy's tasks run on it.
    pub rt: tokio::runtime::Runtime,
}

/// A fresh server (AOF `always` when asked) behind a proxy.
pub fn proxied(aof: bool) -> Proxied {
    Proxied::start(if aof {
        aof_always()
    } else {
        ServerOptions::default()
    })
}

impl Proxied {
    /// A server started with `opts`, behind a proxy.
    pub fn start(opts: ServerOptions) -> Proxied {
        Proxied::new(RedisServer::start_with(opts))
    }

    /// A proxy in front of `redis`.
    pub fn new(redis: RedisServer) -> Proxied {
        let rt = runtime();
        let upstream = format!("127.0.0.1:{}", redis.port()).parse().unwrap();
        let proxy = rt.block_on(FaultProxy::start(upstream)).unwrap();
        Proxied { redis, proxy, rt }
    }

    /// SIGKILL, then a restart on the same port and directory; returns the
    /// moment Redis was back.
    pub fn crash(&mut self) -> Instant {
        self.redis.kill();
        self.redis.restart();
        Instant::now()
    }

    /// Waits until the clients through the proxy have dialed `n` more
    /// connections than `accepted` (a [`FaultProxy::connections_accepted`]
    /// read before the fault): they noticed it and are trying again. A fault
    /// ends on that, not after a fixed time.
    #[track_caller]
    pub fn wait_for_dials(&self, accepted: u64, n: u64, what: &str) {
        wait_until(DEADLINE, what, || {
            self.proxy.connections_accepted() >= accepted + n
        });
    }

    /// A black hole between `run` and Redis, while `n` entries (from `from`,
    /// see [`add`]) are published straight to Redis: nothing of them gets
    /// through meanwhile. It lasts until the clients have given up a silent
    /// connection and dialed anew twice (the new connections are swallowed
    /// too), so that recovery is shown after repeated failures. Returns the
    /// entries' ids and the moment of the heal.
    #[track_caller]
    pub fn black_hole_until_redialed(
        &self,
        run: &Running,
        stream: &str,
        from: u32,
        n: u32,
    ) -> (Vec<String>, Instant) {
        let before = run.count();
        let accepted = self.proxy.connections_accepted();
        self.proxy.black_hole();
        let ids = add(&self.redis, stream, from, n);
        self.wait_for_dials(accepted, 2, "two dials into the black hole");
        assert_eq!(run.count(), before, "nothing gets through a black hole");
        self.proxy.heal();
        (ids, Instant::now())
    }
}

/// How a [`Running`] command ended.
pub struct Exited {
    pub status: ExitStatus,
    /// Its stdout, line by line.
    pub lines: Vec<String>,
    pub stderr: String,
}

/// Lines printed so far, with the time each arrived.
type Timed = Arc<Mutex<Vec<(Instant, String)>>>;

/// A running `streambus` whose stdout lines are collected with the time each
/// arrived.
pub struct Running {
    child: Child,
    /// While set, stdout is not read: the pipe fills and the command blocks
    /// in a write (between printing a batch and acknowledging it).
    pub paused: Arc<AtomicBool>,
    lines: Timed,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Running {
    /// `streambus --redis URL` with the short [`TIMEOUTS`], then `args`.
    pub fn fast(url: &str, args: &[&str]) -> Running {
        Running::spawn(fast(url, args))
    }

    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd.spawn().expect("spawn streambus");
        let lines: Timed = Arc::default();
        let stderr = Arc::new(Mutex::new(String::new()));
        let paused = Arc::new(AtomicBool::new(false));
        let readers = vec![
            read_timed(child.stdout.take().unwrap(), &lines, &paused),
            read_text(child.stderr.take().unwrap(), &stderr),
        ];
        Running {
            child,
            paused,
            lines,
            stderr,
            readers,
        }
    }

    pub fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until at least `n` lines were printed.
    #[track_caller]
    pub fn wait_lines(&self, n: usize, what: &str) {
        if !eventually(DEADLINE, || self.count() >= n) {
            panic!(
                "timed out waiting for {what}: {} of {n} lines; stderr:\n{}",
                self.count(),
                self.stderr()
            );
        }
    }

    /// The time from `t` to the first line that arrived after it.
    pub fn first_after(&self, t: Instant) -> Option<Duration> {
        self.first_after_matching(t, |_| true)
    }

    /// The time from `t` to the first line after it for which `pred` holds.
    pub fn first_after_matching(
        &self,
        t: Instant,
        pred: impl Fn(&str) -> bool,
    ) -> Option<Duration> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find(|(at, l)| *at >= t && pred(l))
            .map(|(at, _)| *at - t)
    }

    /// Waits until `n` lines were printed; the time from `t` to the first
    /// line printed after it.
    #[track_caller]
    pub fn recovered_after(&self, t: Instant, n: usize, what: &str) -> Duration {
        self.wait_lines(n, what);
        self.first_after(t).unwrap()
    }

    /// Waits for the process to exit by itself.
    #[track_caller]
    pub fn exit(mut self) -> Exited {
        let Some(status) = exit_within(&mut self.child, DEADLINE) else {
            self.child.kill().ok();
            self.child.wait().ok();
            panic!(
                "streambus did not exit within {DEADLINE:?}: {} lines; stderr:\n{}",
                self.count(),
                self.stderr()
            );
        };
        self.finish(status)
    }

    /// Sends SIGTERM, without waiting (see [`Running::exit`]).
    pub fn terminate(&self) {
        sigterm(&self.child);
    }

    /// Stops the process (SIGTERM) and waits for it (killed after the
    /// deadline).
    pub fn stop(mut self) -> Exited {
        sigterm(&self.child);
        let status = match exit_within(&mut self.child, DEADLINE) {
            Some(status) => status,
            None => {
                self.child.kill().ok();
                self.child.wait().unwrap()
            }
        };
        self.finish(status)
    }

    fn finish(mut self, status: ExitStatus) -> Exited {
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        let lines = self
            .lines
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.clone())
            .collect();
        Exited {
            status,
            lines,
            stderr: self.stderr(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed test must not leave the process behind; after `exit` or
        // `stop` it is gone already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `out` line by line into `lines` with the time each arrived, except
/// while `paused`.
fn read_timed(
    out: impl Read + Send + 'static,
    lines: &Timed,
    paused: &Arc<AtomicBool>,
) -> JoinHandle<()> {
    let (lines, paused) = (Arc::clone(lines), Arc::clone(paused));
    std::thread::spawn(move || {
        let mut out = BufReader::new(out);
        loop {
            while paused.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let mut line = String::new();
            match out.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = line.trim_end_matches('\n').to_owned();
                    lines.lock().unwrap().push((Instant::now(), line));
                }
            }
        }
    })
}

/// Appends what `err` says to `into`, as it comes.
fn read_text(mut err: impl Read + Send + 'static, into: &Arc<Mutex<String>>) -> JoinHandle<()> {
    let into = Arc::clone(into);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

/// The entry ids of printed lines, in order.
#[track_caller]
pub fn ids(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            v["entry_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// One warning when Redis went away and a line when it came back.
#[track_caller]
pub fn assert_outage_noted(stderr: &str) {
    let warnings = stderr.matches("Redis unreachable").count();
    assert_eq!(warnings, 1, "one warning per outage; stderr:\n{stderr}");
    assert!(
        stderr.contains("Redis is back after"),
        "no recovery line; stderr:\n{stderr}"
    );
}
