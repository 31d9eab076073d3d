//! [`RedisServer`]: one private `redis-server` process, its start, restart,
//! kill and readiness.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::certs::{write_test_certs, CA_CERT, CLIENT_CERT, CLIENT_KEY, OTHER_CA_CERT};
use crate::exit_guard;
use crate::options::{render_conf, ClusterConf, ServerOptions};
use crate::resp::{cli_base, probe, probe_tls};
use crate::support::{free_ports, install_hint, percent_encode, read_lossy, redis_cli_bin, tail};
use crate::{
    TestkitError, CONF_FILE, HOST, LOG_FILE, LOG_TAIL_LINES, POLL_INTERVAL, PORT_ATTEMPTS,
    STDIO_FILE,
};

/// A private `redis-server` process for tests.
///
/// Listens on `127.0.0.1` on a free port, keeps its data (and AOF) in its own
/// temp dir, and is killed (`SIGKILL`) and its directory removed on `Drop`.
/// See the [crate docs](crate) for an example.
///
/// `RedisServer` is `Send + Sync`; every method takes `&self` except those
/// that stop or start the process.
pub struct RedisServer {
    /// How the server was started; reused by [`RedisServer::restart`].
    opts: ServerOptions,
    /// The port, fixed for the server's whole life (restarts included).
    port: u16,
    /// The data directory; deleted when dropped (after the process is dead,
    /// see the `Drop` impl).
    dir: TempDir,
    /// The running process, `None` once killed. Behind a mutex so that
    /// `&self` methods (`is_running`, `pid`) can reap a crashed child.
    child: Mutex<Option<Child>>,
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

impl RedisServer {
    /// Start a server with [`ServerOptions::default`].
    ///
    /// # Panics
    ///
    /// If the server cannot be started; the message says why (missing binary,
    /// server log tail, command line). Use [`RedisServer::try_start_with`]
    /// to handle that yourself.
    pub fn start() -> RedisServer {
        RedisServer::start_with(ServerOptions::default())
    }

    /// Start a server with the given options.
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`].
    pub fn start_with(opts: ServerOptions) -> RedisServer {
        RedisServer::try_start_with(opts)
            .unwrap_or_else(|e| panic!("failed to start a test redis-server: {e}"))
    }

    /// Start a server with the given options, returning an error instead of
    /// panicking.
    ///
    /// If the chosen port is taken by someone else before the server binds
    /// it, another free port is tried (up to 5 ports).
    pub fn try_start_with(opts: ServerOptions) -> Result<RedisServer, TestkitError> {
        RedisServer::start_node(opts, None, None)
    }

    /// Start a server in a new temp dir (inside `parent` if given), as a
    /// cluster node if `cluster` is given (`cluster-node-timeout`).
    pub(crate) fn start_node(
        opts: ServerOptions,
        parent: Option<&Path>,
        cluster: Option<Duration>,
    ) -> Result<RedisServer, TestkitError> {
        let mut builder = tempfile::Builder::new();
        builder.prefix(if parent.is_some() {
            "node-"
        } else {
            "streambus-redis-"
        });
        let dir = match parent {
            Some(parent) => builder.tempdir_in(parent)?,
            None => builder.tempdir()?,
        };
        if opts.tls.is_some() {
            write_test_certs(dir.path())?;
        }
        let child = Mutex::new(None);
        let mut attempt = 1;
        loop {
            // A cluster node also needs a bus port; take both at once so
            // they differ (the default, PORT + 10000, may exceed 65535).
            let ports = free_ports(if cluster.is_some() { 2 } else { 1 });
            let port = ports[0];
            let node = cluster.map(|node_timeout| ClusterConf {
                bus_port: ports[1],
                node_timeout,
            });
            fs::write(
                dir.path().join(CONF_FILE),
                render_conf(&opts, port, dir.path(), node.as_ref()),
            )?;
            let log_offset = log_len(dir.path());
            match launch(&opts, port, dir.path(), &child) {
                Ok(()) => {
                    return Ok(RedisServer {
                        opts,
                        port,
                        dir,
                        child,
                    })
                }
                // Someone else took the port between `free_port` and the
                // server binding it: try another one.
                Err(TestkitError::Exited { .. })
                    if attempt < PORT_ATTEMPTS && port_taken_since(dir.path(), log_offset) =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The port the server listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host the server listens on: always `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// A connection URL: `redis://127.0.0.1:PORT`, or
    /// `redis://:PASSWORD@127.0.0.1:PORT` when a password is set (the
    /// password percent-encoded).
    ///
    /// For a TLS server ([`ServerOptions::tls`]) the scheme is `rediss://`,
    /// the same as [`RedisServer::tls_url`]: there is no plain-text port.
    pub fn url(&self) -> String {
        let scheme = self.scheme();
        match self.opts.default_password() {
            Some(pass) => format!("{scheme}://:{}@{HOST}:{}", percent_encode(pass), self.port),
            None => format!("{scheme}://{HOST}:{}", self.port),
        }
    }

    /// A connection URL for an ACL user: `redis://USER:PASSWORD@127.0.0.1:PORT`
    /// (both percent-encoded); `rediss://` for a TLS server.
    pub fn url_for_user(&self, user: &str, password: &str) -> String {
        format!(
            "{}://{}:{}@{HOST}:{}",
            self.scheme(),
            percent_encode(user),
            percent_encode(password),
            self.port
        )
    }

    /// Whether the server serves TLS ([`ServerOptions::tls`] was set).
    pub fn is_tls(&self) -> bool {
        self.opts.tls.is_some()
    }

    /// The TLS connection URL: `rediss://127.0.0.1:PORT`, or
    /// `rediss://:PASSWORD@127.0.0.1:PORT` with a password.
    ///
    /// The client must trust [`RedisServer::ca_cert_path`] (and present
    /// [`RedisServer::client_cert_path`] / [`RedisServer::client_key_path`]
    /// when [`TlsOptions::require_client_cert`](crate::TlsOptions::require_client_cert) is set).
    ///
    /// # Panics
    ///
    /// If the server was started without [`ServerOptions::tls`], like every
    /// TLS accessor: asking for TLS details of a plain server is a bug in
    /// the test. Check [`RedisServer::is_tls`] if you need to.
    pub fn tls_url(&self) -> String {
        self.tls_file("tls_url", "");
        self.url()
    }

    /// The test CA certificate (`DIR/ca.crt`, PEM) that signed the server
    /// and client certificates; clients must trust it.
    ///
    /// # Panics
    ///
    /// If TLS is off (see [`RedisServer::tls_url`]).
    pub fn ca_cert_path(&self) -> PathBuf {
        self.tls_file("ca_cert_path", CA_CERT)
    }

    /// The client certificate (`DIR/client.crt`, PEM), signed by the test CA.
    ///
    /// # Panics
    ///
    /// If TLS is off (see [`RedisServer::tls_url`]).
    pub fn client_cert_path(&self) -> PathBuf {
        self.tls_file("client_cert_path", CLIENT_CERT)
    }

    /// The client certificate's private key (`DIR/client.key`, PKCS#8 PEM).
    ///
    /// # Panics
    ///
    /// If TLS is off (see [`RedisServer::tls_url`]).
    pub fn client_key_path(&self) -> PathBuf {
        self.tls_file("client_key_path", CLIENT_KEY)
    }

    /// A second CA certificate (`DIR/other-ca.crt`, PEM), unrelated to the
    /// server's: a client trusting only this one must fail the handshake.
    ///
    /// # Panics
    ///
    /// If TLS is off (see [`RedisServer::tls_url`]).
    pub fn other_ca_cert_path(&self) -> PathBuf {
        self.tls_file("other_ca_cert_path", OTHER_CA_CERT)
    }

    fn scheme(&self) -> &'static str {
        if self.is_tls() {
            "rediss"
        } else {
            "redis"
        }
    }

    /// `DIR/name`, or a panic naming `accessor` when TLS is off.
    fn tls_file(&self, accessor: &str, name: &str) -> PathBuf {
        assert!(
            self.is_tls(),
            "RedisServer::{accessor}: this server was started without TLS; \
             set `ServerOptions {{ tls: Some(TlsOptions::default()), .. }}`"
        );
        self.dir.path().join(name)
    }

    /// The data directory (the AOF lives here, under `appendonlydir/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The whole server log so far (all runs, restarts included), or an empty
    /// string if there is none yet.
    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join(LOG_FILE))
    }

    /// The server's process id, or `None` after [`RedisServer::kill`] or if
    /// the process has exited on its own.
    pub fn pid(&self) -> Option<u32> {
        let mut child = self.lock_child();
        reap_if_exited(&mut child);
        child.as_ref().map(Child::id)
    }

    /// Whether the server process is alive (it may still be loading).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Kill the server with `SIGKILL` (a crash: nothing is flushed beyond
    /// what the `appendfsync` policy already wrote) and reap the process.
    /// Does nothing if it is not running.
    pub fn kill(&mut self) {
        kill_child(&mut self.lock_child());
    }

    /// Start the server again on the same port and directory, so the AOF is
    /// reloaded, and wait until it answers `PING` (AOF loading done). Kills
    /// the server first if it is still running.
    ///
    /// # Panics
    ///
    /// If the server does not come back; see [`RedisServer::try_restart`].
    pub fn restart(&mut self) {
        self.try_restart()
            .unwrap_or_else(|e| panic!("failed to restart the test redis-server: {e}"));
    }

    /// As [`RedisServer::restart`], returning an error instead of panicking.
    ///
    /// If the port is briefly unavailable, binding is retried until
    /// [`ServerOptions::startup_timeout`] has passed.
    pub fn try_restart(&mut self) -> Result<(), TestkitError> {
        self.kill();
        let deadline = Instant::now() + self.opts.startup_timeout;
        loop {
            let log_offset = log_len(self.dir.path());
            match launch(&self.opts, self.port, self.dir.path(), &self.child) {
                Err(TestkitError::Exited { .. })
                    if Instant::now() < deadline
                        && port_taken_since(self.dir.path(), log_offset) =>
                {
                    std::thread::sleep(POLL_INTERVAL);
                }
                other => return other,
            }
        }
    }

    /// Run `redis-cli` against the server (authenticating as `default` when
    /// a password is set) and return its stdout, trimmed.
    ///
    /// Output is raw (`redis-cli` without a terminal): `XLEN` gives `"1"`,
    /// error replies come back as text such as `"ERR ..."` or
    /// `"NOPERM ..."`, because `redis-cli` exits successfully on them.
    ///
    /// # Panics
    ///
    /// If `redis-cli` cannot be run or exits unsuccessfully (e.g. it cannot
    /// connect); the message includes its stderr.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = self.cli_command();
        if let Some(pass) = self.opts.default_password() {
            cmd.args(["-a", pass, "--no-auth-warning"]);
        }
        cmd.args(args);
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", redis_cli_bin()));
        if !out.status.success() {
            panic!(
                "redis-cli {args:?} failed ({}): stderr: {} stdout: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A `redis-cli -h 127.0.0.1 -p PORT` command **without** credentials,
    /// for tests that authenticate differently (`--user NAME --pass PASS`)
    /// or check that unauthenticated access is refused.
    ///
    /// For a TLS server it also has `--tls --cacert DIR/ca.crt --cert
    /// DIR/client.crt --key DIR/client.key` (the client certificate is the
    /// connection's identity, not a password). To test other TLS settings,
    /// build the command yourself from [`redis_cli_bin`].
    pub fn cli_command(&self) -> Command {
        cli_base(self.port, self.opts.tls.is_some().then(|| self.dir.path()))
    }

    /// The `redis-server` command line, for messages.
    pub fn command_line(&self) -> String {
        command_line(&self.opts, self.dir.path())
    }

    fn lock_child(&self) -> MutexGuard<'_, Option<Child>> {
        lock(&self.child)
    }
}

/// Lock the child slot. A panic while holding the lock cannot leave an
/// `Option<Child>` in a broken state, so a poisoned lock is fine to use.
fn lock(slot: &Mutex<Option<Child>>) -> MutexGuard<'_, Option<Child>> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

/// The `redis-server` command line, for messages.
fn command_line(opts: &ServerOptions, dir: &Path) -> String {
    let mut parts = vec![
        opts.server_binary(),
        dir.join(CONF_FILE).display().to_string(),
    ];
    parts.extend(opts.extra_args.iter().cloned());
    parts.join(" ")
}

/// Spawn `redis-server DIR/redis.conf EXTRA_ARGS...`, store the child in
/// `slot`, and wait until it is ready. On failure the child is killed and
/// reaped and `slot` is left empty.
fn launch(
    opts: &ServerOptions,
    port: u16,
    dir: &Path,
    slot: &Mutex<Option<Child>>,
) -> Result<(), TestkitError> {
    let binary = opts.server_binary();
    let stdio = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(STDIO_FILE))?;
    let spawned = Command::new(&binary)
        .arg(dir.join(CONF_FILE))
        .args(&opts.extra_args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(stdio.try_clone()?)
        .stderr(stdio)
        .spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(TestkitError::BinaryNotFound {
                hint: install_hint(),
                binary,
            });
        }
        Err(e) => return Err(TestkitError::Io(e)),
    };
    let pid = child.id();
    exit_guard::register(pid);
    *lock(slot) = Some(child);

    let started = Instant::now();
    let deadline = started + opts.startup_timeout;
    loop {
        let exited = lock(slot)
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            exit_guard::unregister(pid);
            *lock(slot) = None;
            return Err(TestkitError::Exited {
                status,
                log: log_tail(dir),
                command: command_line(opts, dir),
            });
        }
        let probed = if opts.tls.is_some() {
            probe_tls(port, opts.default_password(), pid, dir)
        } else {
            probe(port, opts.default_password(), pid)
        };
        let last_reply = match probed {
            Ok(()) => return Ok(()),
            Err(reply) => reply,
        };
        if Instant::now() >= deadline {
            kill_child(&mut lock(slot));
            return Err(TestkitError::NotReady {
                waited: started.elapsed(),
                log: log_tail(dir),
                command: command_line(opts, dir),
                last_reply,
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Current size of the log file, to look only at what one launch wrote.
fn log_len(dir: &Path) -> u64 {
    fs::metadata(dir.join(LOG_FILE))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Whether the log, after `offset`, says the port was already in use.
fn port_taken_since(dir: &Path, offset: u64) -> bool {
    let all = fs::read(dir.join(LOG_FILE)).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(all.len());
    String::from_utf8_lossy(&all[start..]).contains("Address already in use")
}

/// The last lines of the server log and of its stdout/stderr.
fn log_tail(dir: &Path) -> String {
    let mut out = tail(&read_lossy(&dir.join(LOG_FILE)), LOG_TAIL_LINES);
    let stdio = read_lossy(&dir.join(STDIO_FILE));
    if !stdio.trim().is_empty() {
        out.push_str("\n--- server stdout/stderr (tail) ---\n");
        out.push_str(&tail(&stdio, LOG_TAIL_LINES));
    }
    out
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Kill and reap first; the TempDir field is dropped (removed) after
        // this body runs, when nothing writes into it any more.
        kill_child(&mut self.lock_child());
    }
}

/// `SIGKILL` the child (if any) and wait for it, so no zombie is left.
fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        exit_guard::unregister(c.id());
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Forget a child that has exited on its own (reaping it).
fn reap_if_exited(child: &mut Option<Child>) {
    if let Some(c) = child.as_mut() {
        if !matches!(c.try_wait(), Ok(None)) {
            exit_guard::unregister(c.id());
            *child = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_is_send_and_sync() {
        fn is<T: Send + Sync>() {}
        is::<RedisServer>();
        is::<TestkitError>();
    }
}
