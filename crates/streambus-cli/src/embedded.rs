//! A private `redis-server` for `streambus demo` and `streambus serve` when no
//! Redis is given: on a free port of 127.0.0.1, with its own temporary data
//! directory, with `appendonly yes` and `appendfsync always` (so it keeps the
//! durability promise), stopped when streambus exits.
//!
//! Stopping: [`EmbeddedRedis`] sends SIGTERM and waits (SIGKILL after a
//! deadline), then deletes the directory, on drop, so also on Ctrl-C and on
//! error paths. The server runs in a process group of its own, so that a Ctrl-C
//! at the terminal reaches streambus only (which then drains before it stops
//! the server); on Linux it also gets SIGKILL if streambus itself dies, and a
//! second Ctrl-C (immediate exit) stops it through [`terminate_all`].
//!
//! Not the test kit (`streambus-testkit` is a test helper): a small
//! `std::process` implementation, readiness polled with PING and a deadline.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long the server may take to answer PING after it was started.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// How long it may take to exit after SIGTERM (it writes the AOF) before SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// How often readiness and exit are polled.
const POLL: Duration = Duration::from_millis(10);
/// Free ports tried when the one chosen gets taken before the server binds it.
const PORT_ATTEMPTS: usize = 5;
/// How long the probe of an existing Redis may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// The address probed for a Redis already running ("nothing answers on
/// 127.0.0.1:6379"). `STREAMBUS_PROBE_ADDR` replaces it (for tests, which
/// cannot stop the machine's own Redis).
pub fn probe_addr() -> SocketAddr {
    std::env::var("STREAMBUS_PROBE_ADDR")
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 6379)))
}

/// Whether a Redis answers PING at `addr` (an error reply such as `-NOAUTH`
/// counts: something that speaks Redis is there).
pub fn answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
    let _ = s.set_write_timeout(Some(PROBE_TIMEOUT));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 1];
    matches!(s.read(&mut buf), Ok(1) if buf[0] == b'+' || buf[0] == b'-')
}

/// Pids of the servers running now, for [`terminate_all`].
static RUNNING: Mutex<Vec<(u32, PathBuf)>> = Mutex::new(Vec::new());

/// SIGTERMs every private server and waits a little for them, deleting their
/// directories: for an immediate exit (`std::process::exit` runs no `Drop`).
pub fn terminate_all() {
    let running = std::mem::take(&mut *RUNNING.lock().unwrap_or_else(|p| p.into_inner()));
    for (pid, _) in &running {
        signal(*pid, Signal::Term);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    for (pid, dir) in running {
        while is_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A private `redis-server`, stopped on drop.
pub struct EmbeddedRedis {
    child: Option<Child>,
    port: u16,
    /// Deleted after the server stopped.
    dir: Option<tempfile::TempDir>,
}

impl EmbeddedRedis {
    /// Starts `redis-server` (or `$REDIS_SERVER_BIN`) and waits until it answers.
    pub fn start() -> Result<EmbeddedRedis> {
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let dir = tempfile::Builder::new()
            .prefix("streambus-redis.")
            .tempdir()
            .context("cannot create a data directory for the private redis-server")?;
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let child = spawn(&bin, port, dir.path())?;
            let mut server = EmbeddedRedis {
                child: Some(child),
                port,
                dir: None,
            };
            match server.wait_ready() {
                Ok(()) => {
                    RUNNING
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((server.pid(), dir.path().to_owned()));
                    server.dir = Some(dir);
                    return Ok(server);
                }
                Err(e) => {
                    // Stops it (if it still runs); the directory is reused.
                    drop(server);
                    last_error = e;
                }
            }
        }
        bail!(
            "the private redis-server did not start: {last_error}{}",
            log_tail(dir.path())
        )
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), |d| d.path())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn wait_ready(&mut self) -> std::result::Result<(), String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("it exited at start ({status})"));
                }
            }
            if answers(addr) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "it did not answer PING on {addr} within {READY_DEADLINE:?}"
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGTERM, wait (SIGKILL after [`STOP_DEADLINE`]), delete the directory.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            signal(pid, Signal::Term);
            let deadline = Instant::now() + STOP_DEADLINE;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(POLL),
                }
            }
            RUNNING
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|(p, _)| *p != pid);
        }
        if let Some(dir) = self.dir.take() {
            // A directory that cannot be deleted is left in the temp dir: no
            // reason to fail an exit for it.
            let _ = dir.close();
        }
    }
}

impl Drop for EmbeddedRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(bin: &str, port: u16, dir: &Path) -> Result<Child> {
    let stdio = File::create(dir.join("redis.stdio.log"))
        .context("cannot create the private redis-server's log")?;
    let mut cmd = Command::new(bin);
    cmd.arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--protected-mode", "yes"])
        .arg("--dir")
        .arg(dir)
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .args(["--save", ""])
        .args(["--daemonize", "no", "--logfile", "redis.log"])
        .stdin(Stdio::null())
        .stdout(stdio.try_clone()?)
        .stderr(stdio);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Its own process group: a Ctrl-C at the terminal must not stop it
        // before streambus has drained.
        cmd.process_group(0);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        // The server dies with the thread that started it (the main thread,
        // which lives as long as streambus): no orphan if streambus is killed.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!(
                "no Redis given and {bin} is not installed: install it (sudo apt-get install -y redis-server, or brew install redis), or give a Redis with --redis URL"
            )
        } else {
            anyhow::anyhow!("cannot start {bin}: {e}")
        }
    })
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

/// The end of the server's logs, for an error message.
fn log_tail(dir: &Path) -> String {
    let mut text = String::new();
    for f in ["redis.stdio.log", "redis.log"] {
        if let Ok(t) = std::fs::read_to_string(dir.join(f)) {
            text.push_str(&t);
        }
    }
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    if lines.is_empty() {
        String::new()
    } else {
        let mut lines = lines;
        lines.reverse();
        format!(" (log: {})", lines.join(" | "))
    }
}

enum Signal {
    Term,
}

fn signal(pid: u32, sig: Signal) {
    #[cfg(unix)]
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        let sig = match sig {
            Signal::Term => libc::SIGTERM,
        };
        // SAFETY: kill(2) takes no pointers. The pid is a child not yet
        // reaped (or, in terminate_all, one we started), so it was not reused.
        unsafe {
            libc::kill(pid, sig);
        }
    }
    #[cfg(not(unix))]
    let _ = (pid, sig);
}

/// Whether our child `pid` still runs; reaps it when it exited.
fn is_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: waitpid with a null status pointer and WNOHANG only asks
        // about (and reaps) our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) == 0 }
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        false
    }
}
