//! A private `redis-server` for a bench run without `--redis`: free port on
//! 127.0.0.1, temporary directory, no persistence; killed and reaped on drop.
//!
//! Deliberately not `streambus-testkit`: that crate is for tests, and the bench
//! ships in the CLI binary.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// How long the server may take to answer `PING`.
const STARTUP_DEADLINE: Duration = Duration::from_secs(10);

/// A running `redis-server` child process.
pub(crate) struct EmbeddedServer {
    child: Child,
    port: u16,
    /// Removed on drop, after the process is gone.
    dir: tempfile::TempDir,
}

impl EmbeddedServer {
    pub(crate) fn start(binary: &str) -> Result<EmbeddedServer> {
        Self::start_with(binary, &[])
    }

    /// Like [`EmbeddedServer::start`], with more `redis-server` arguments.
    pub(crate) fn start_with(binary: &str, extra: &[&str]) -> Result<EmbeddedServer> {
        let dir = tempfile::Builder::new()
            .prefix("streambus-bench-")
            .tempdir()
            .map_err(|e| Error::new(format!("cannot create a temporary directory: {e}")))?;
        // The port is free when asked; another process could take it before
        // redis-server binds it, in which case the readiness check fails with the
        // server's log.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| Error::new(format!("cannot find a free port: {e}")))?
            .port();
        let log = dir.path().join("redis.log");
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                Error::new(format!(
                    "cannot start {binary:?} (install redis-server, or pass --redis URL): {e}"
                ))
            })?;
        let mut server = EmbeddedServer { child, port, dir };
        server.wait_ready()?;
        Ok(server)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if ping(self.port) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.failure(&format!("redis-server exited ({status})")));
            }
            if Instant::now() >= deadline {
                return Err(self.failure("redis-server did not answer PING within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn failure(&self, what: &str) -> Error {
        let log = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Error::new(format!("{what}; its log:\n{}", tail.join("\n")))
    }

    #[cfg(test)]
    pub(crate) fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// A private Redis Cluster of `masters` masters and no replicas, each a
/// [`EmbeddedServer`] with `--cluster-enabled yes`, joined with
/// `redis-cli --cluster create`. Every node is killed on drop.
pub(crate) struct EmbeddedCluster {
    nodes: Vec<EmbeddedServer>,
}

impl EmbeddedCluster {
    pub(crate) fn start(
        server_bin: &str,
        cli_bin: &str,
        masters: usize,
    ) -> Result<EmbeddedCluster> {
        let mut nodes = Vec::with_capacity(masters);
        for _ in 0..masters {
            // `nodes.conf` is relative to the node's own `--dir`.
            nodes.push(EmbeddedServer::start_with(
                server_bin,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ],
            )?);
        }
        let cluster = EmbeddedCluster { nodes };
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(cli_bin)
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::new(format!("cannot run {cli_bin:?}: {e}")))?;
        if !out.status.success() {
            return Err(Error::new(format!(
                "redis-cli --cluster create failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim()
            )));
        }
        let deadline = Instant::now() + STARTUP_DEADLINE;
        while !cluster.nodes.iter().all(|n| cluster_ok(cli_bin, n.port)) {
            if Instant::now() >= deadline {
                return Err(Error::new(
                    "the cluster did not reach cluster_state:ok within 10 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(cluster)
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...`
    pub(crate) fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}

fn cluster_ok(cli_bin: &str, port: u16) -> bool {
    Command::new(cli_bin)
        .args(["-p", &port.to_string(), "CLUSTER", "INFO"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    // `+PONG` when ready; `-LOADING` while loading.
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        // Nothing to keep: the data is a throw-away bench stream. The TempDir
        // field removes the directory after this.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_and_goes_away() {
        let server = EmbeddedServer::start("redis-server").unwrap();
        assert!(ping(server.port));
        let dir = server.dir().to_owned();
        let port = server.port;
        drop(server);
        assert!(!ping(port));
        assert!(!dir.exists());
    }
}
