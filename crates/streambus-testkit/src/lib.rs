//! Start a private, **real** `redis-server` (or Redis Cluster) for tests.
//!
//! [`RedisServer`] launches its own `redis-server` process on a free port of
//! `127.0.0.1`, with its own temporary data directory, and waits until the
//! server answers `PING`. It never touches a Redis you already run (such as
//! the machine's shared one on port 6379). Dropping the handle kills the
//! process (`SIGKILL`), reaps it and deletes the directory.
//!
//! Because the server is real, tests can exercise what mocks cannot: AOF
//! durability across a crash ([`RedisServer::kill`] + [`RedisServer::restart`]
//! on the same port and directory), passwords, ACL users, server flags,
//! TLS ([`ServerOptions::tls`], with generated certificates) and Redis
//! Cluster failover ([`RedisCluster`]).
//!
//! The `redis-server` and `redis-cli` binaries must be installed (`sudo
//! apt-get install -y redis-server` on Debian/Ubuntu, `brew install redis` on
//! macOS), or pointed to with `REDIS_SERVER_BIN` / `REDIS_CLI_BIN`.
//!
//! # Example
//!
//! ```no_run
//! use streambus_testkit::{Appendfsync, RedisServer, ServerOptions};
//!
//! let mut server = RedisServer::start_with(ServerOptions {
//!     appendonly: true,
//!     appendfsync: Appendfsync::Always,
//!     ..ServerOptions::default()
//! });
//!
//! // Hand this URL to your Redis client or to streambus' configuration.
//! let url = server.url();
//! assert!(url.starts_with("redis://127.0.0.1:"));
//!
//! // Keys unique to this test, if several tests share one server.
//! let stream = format!("{}orders", streambus_testkit::unique_prefix("orders"));
//! server.cli(&["XADD", &stream, "*", "id", "1"]);
//!
//! // Simulate a crash, then bring the server back: the AOF is replayed.
//! server.kill();
//! server.restart();
//! assert_eq!(server.cli(&["XLEN", &stream]), "1");
//! ```
//!
//! # TLS
//!
//! ```no_run
//! use streambus_testkit::{RedisServer, ServerOptions, TlsOptions};
//!
//! let server = RedisServer::start_with(ServerOptions {
//!     tls: Some(TlsOptions { require_client_cert: true }),
//!     ..ServerOptions::default()
//! });
//! let url = server.tls_url(); // rediss://127.0.0.1:PORT
//! let ca = server.ca_cert_path(); // trust this; present client.crt/.key
//! # let _ = (url, ca, server.client_cert_path(), server.client_key_path());
//! assert_eq!(server.cli(&["PING"]), "PONG"); // redis-cli --tls ...
//! ```
//!
//! Certificates are generated in-process (`rcgen`, ECDSA P-256), so no
//! `openssl` binary is needed; `redis-cli` must be built with TLS (Debian's
//! and Homebrew's are).
//!
//! # Cluster
//!
//! ```no_run
//! use std::time::Duration;
//! use streambus_testkit::RedisCluster;
//!
//! let mut cluster = RedisCluster::start(3, 1); // 3 masters, 1 replica each
//! let url = cluster.url(); // redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...
//! # let _ = url;
//! let master = cluster.masters()[0];
//! cluster.kill_node(master);
//! let promoted = cluster.wait_for_failover(master, Duration::from_secs(20)).unwrap();
//! # let _ = promoted;
//! ```
//!
//! # Faults
//!
//! [`FaultProxy`] sits between a client and a server and injects network
//! faults on demand: latency, a black hole, connection resets, refused
//! connections. See the [`proxy`] module.
//!
//! # Layout
//!
//! - `lib.rs`: [`RedisServer`], its options and errors, [`free_port`],
//!   [`unique_prefix`].
//! - `cluster`: [`RedisCluster`] and slot helpers.
//! - `certs`: the generated TLS test certificates.
//! - [`proxy`]: [`FaultProxy`], a fault-injecting TCP proxy.
//!
//! # Lifetime
//!
//! The server lives exactly as long as its [`RedisServer`]. Values in a
//! `static` are never dropped, so a server kept in a `static` outlives the
//! test binary's `Drop`s; prefer one server per test (starting one takes a
//! few milliseconds), and use [`unique_prefix`] when tests share one.
#![warn(missing_docs)]

use std::collections::hash_map::RandomState;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::hash::BuildHasher;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

mod certs;
mod cluster;
pub mod proxy;

use certs::{
    write_test_certs, CA_CERT, CLIENT_CERT, CLIENT_KEY, OTHER_CA_CERT, SERVER_CERT, SERVER_KEY,
};
pub use cluster::{slot_for_key, ClusterNode, ClusterOptions, NodeRole, RedisCluster};
pub use proxy::FaultProxy;

/// The address every server started by this crate listens on.
const HOST: &str = "127.0.0.1";
/// How often readiness and shutdown conditions are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How many free ports a first start tries when the chosen one gets taken.
const PORT_ATTEMPTS: usize = 5;
/// How many lines of the server log error messages include.
const LOG_TAIL_LINES: usize = 50;
/// Name of the generated configuration file inside the data directory.
const CONF_FILE: &str = "redis.conf";
/// Name of the server log file inside the data directory.
const LOG_FILE: &str = "redis.log";
/// Name of a cluster node's `cluster-config-file` inside its data directory.
const NODES_CONF: &str = "nodes.conf";
/// Where the child's stdout/stderr go: `redis-server` prints configuration
/// errors there before it opens its log file.
const STDIO_FILE: &str = "redis.stdio.log";

/// The `appendfsync` policy of the append-only file.
///
/// Only used when [`ServerOptions::appendonly`] is `true`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appendfsync {
    /// `fsync` after every write: nothing acknowledged is lost on a crash.
    /// Use this to test durability guarantees.
    Always,
    /// `fsync` once per second (Redis' default): up to ~1 s of writes may be
    /// lost on a crash of the machine (not of the process).
    EverySec,
    /// Leave flushing to the operating system.
    No,
}

impl Appendfsync {
    /// The value as written in `redis.conf`.
    pub fn as_str(self) -> &'static str {
        match self {
            Appendfsync::Always => "always",
            Appendfsync::EverySec => "everysec",
            Appendfsync::No => "no",
        }
    }
}

/// An extra ACL user created when the server starts.
///
/// Written as `user NAME on >PASSWORD RULES...` into the generated
/// `redis.conf`, so it also exists again after [`RedisServer::restart`].
#[derive(Clone, Debug)]
pub struct AclUser {
    /// User name, used with `AUTH name password` / [`RedisServer::url_for_user`].
    pub name: String,
    /// The user's password (any characters, spaces included).
    pub password: String,
    /// ACL rules, e.g. `["~ev:*", "+@stream", "+@connection", "+ping"]`.
    /// A new user starts with no key patterns and no commands, so list
    /// everything the user needs.
    pub rules: Vec<String>,
}

impl AclUser {
    /// An ACL user with the given name, password and rules.
    pub fn new(
        name: impl Into<String>,
        password: impl Into<String>,
        rules: impl IntoIterator<Item = impl Into<String>>,
    ) -> AclUser {
        AclUser {
            name: name.into(),
            password: password.into(),
            rules: rules.into_iter().map(Into::into).collect(),
        }
    }
}

/// How to start a [`RedisServer`].
///
/// Build it with struct-update syntax:
/// `ServerOptions { appendonly: true, ..ServerOptions::default() }`.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Turn on the append-only file, so data survives a crash
    /// ([`RedisServer::kill`] followed by [`RedisServer::restart`]).
    /// Default `false`: no persistence at all (RDB snapshots are always off).
    pub appendonly: bool,
    /// The AOF `fsync` policy; only used when `appendonly` is set.
    /// Default [`Appendfsync::EverySec`].
    pub appendfsync: Appendfsync,
    /// `requirepass` for the `default` user, to test authenticated
    /// connections. [`RedisServer::url`] and [`RedisServer::cli`] use it.
    /// Default `None` (no password).
    pub password: Option<String>,
    /// Extra ACL users created at start, to test restricted permissions.
    pub acl_users: Vec<AclUser>,
    /// Extra arguments appended to the `redis-server` command line, e.g.
    /// `["--maxmemory-policy", "noeviction"]`. They override the generated
    /// configuration file.
    pub extra_args: Vec<String>,
    /// How long to wait for the server to answer `PING` (including loading
    /// the AOF). Default 10 s.
    pub startup_timeout: Duration,
    /// The `redis-server` binary to run; overrides [`redis_server_bin`]
    /// (`$REDIS_SERVER_BIN` or `redis-server`). Default `None`.
    pub binary: Option<String>,
    /// Serve TLS only (no plain-text port), with certificates generated in
    /// the server's directory. Default `None` (plain TCP). See [`TlsOptions`].
    pub tls: Option<TlsOptions>,
}

/// TLS for a [`RedisServer`] ([`ServerOptions::tls`]).
///
/// When set, the testkit generates in the server's directory (once; restarts
/// reuse them):
///
/// | file | what |
/// |---|---|
/// | `ca.crt`, `ca.key` | a test CA |
/// | `server.crt`, `server.key` | the server's certificate, signed by the CA, for `DNS:localhost` and `IP:127.0.0.1` |
/// | `client.crt`, `client.key` | a client certificate signed by the same CA |
/// | `other-ca.crt` | an unrelated CA, for "wrong CA" tests |
///
/// The server then listens with `port 0` (no plain-text port) and
/// `tls-port` = [`RedisServer::port`]. Keys are ECDSA P-256.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// Require clients to present a certificate signed by the test CA
    /// (`tls-auth-clients yes`). Default `false` (`tls-auth-clients no`:
    /// a client certificate is optional, but checked if one is sent).
    pub require_client_cert: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            appendonly: false,
            appendfsync: Appendfsync::EverySec,
            password: None,
            acl_users: Vec::new(),
            extra_args: Vec::new(),
            startup_timeout: Duration::from_secs(10),
            binary: None,
            tls: None,
        }
    }
}

impl ServerOptions {
    /// The password of the `default` user: [`ServerOptions::password`], or
    /// the password of an ACL user named `default`. Empty means none.
    fn default_password(&self) -> Option<&str> {
        self.password
            .as_deref()
            .or_else(|| {
                self.acl_users
                    .iter()
                    .find(|u| u.name == "default")
                    .map(|u| u.password.as_str())
            })
            .filter(|p| !p.is_empty())
    }

    /// The binary to run.
    fn server_binary(&self) -> String {
        self.binary.clone().unwrap_or_else(redis_server_bin)
    }
}

/// Why a server could not be started.
#[derive(Debug)]
#[non_exhaustive]
pub enum TestkitError {
    /// The `redis-server` binary could not be found.
    BinaryNotFound {
        /// The binary that was looked for.
        binary: String,
        /// How to install it or point to it.
        hint: String,
    },
    /// Creating the temp dir, writing the configuration or spawning failed.
    Io(io::Error),
    /// The server did not answer `PING` within [`ServerOptions::startup_timeout`].
    NotReady {
        /// How long we waited.
        waited: Duration,
        /// The tail of the server log (and of its stdout/stderr).
        log: String,
        /// The command line that was run.
        command: String,
        /// The last reply (or connection error) seen while polling.
        last_reply: String,
    },
    /// The server process exited while starting.
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// The tail of the server log (and of its stdout/stderr).
        log: String,
        /// The command line that was run.
        command: String,
    },
    /// Generating the TLS test certificates failed.
    Certificates(String),
    /// The options cannot work, e.g. a cluster of fewer than 3 masters.
    InvalidOptions(String),
    /// `redis-cli --cluster create` failed or timed out.
    ClusterCreate {
        /// The command line that was run.
        command: String,
        /// What it printed (stdout and stderr), or why it could not run.
        output: String,
    },
    /// A [`RedisCluster`] did not reach the awaited state in time.
    ClusterNotReady {
        /// What was awaited.
        awaited: String,
        /// How long we waited.
        waited: Duration,
        /// What each node reported last.
        state: String,
    },
}

impl fmt::Display for TestkitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestkitError::BinaryNotFound { binary, hint } => {
                write!(f, "{binary} not found ({hint})")
            }
            TestkitError::Io(e) => write!(f, "redis test server: I/O error: {e}"),
            TestkitError::NotReady {
                waited,
                log,
                command,
                last_reply,
            } => write!(
                f,
                "redis-server was not ready after {waited:?} (last reply: {last_reply})\n\
                 command: {command}\n--- server log (tail) ---\n{log}"
            ),
            TestkitError::Exited {
                status,
                log,
                command,
            } => write!(
                f,
                "redis-server exited while starting ({status})\n\
                 command: {command}\n--- server log (tail) ---\n{log}"
            ),
            TestkitError::Certificates(msg) => {
                write!(f, "cannot generate TLS test certificates: {msg}")
            }
            TestkitError::InvalidOptions(msg) => write!(f, "invalid testkit options: {msg}"),
            TestkitError::ClusterCreate { command, output } => write!(
                f,
                "creating the test cluster failed\ncommand: {command}\n--- output ---\n{output}"
            ),
            TestkitError::ClusterNotReady {
                awaited,
                waited,
                state,
            } => write!(
                f,
                "test cluster: not {awaited} after {waited:?}\n--- nodes ---\n{state}"
            ),
        }
    }
}

impl std::error::Error for TestkitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TestkitError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for TestkitError {
    fn from(e: io::Error) -> Self {
        TestkitError::Io(e)
    }
}

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
/// Another process may take it before you use it; [`RedisServer`] retries
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
fn free_ports(n: usize) -> Vec<u16> {
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

/// The cluster part of a node's configuration.
struct ClusterConf {
    /// `cluster-port`: the cluster bus.
    bus_port: u16,
    /// `cluster-node-timeout`.
    node_timeout: Duration,
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
    fn start_node(
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
    /// when [`TlsOptions::require_client_cert`] is set).
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

/// Kills, at process exit, every server still running.
///
/// A server kept in a `static` (one per test binary, shared by its tests) is
/// never dropped: the test harness ends the process with `exit`, which runs
/// `atexit` handlers but no destructors. Without this, each run of such a test
/// binary would leave a `redis-server` behind.
mod exit_guard {
    use std::sync::{Mutex, Once};

    static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());
    static INSTALL: Once = Once::new();

    extern "C" fn kill_all() {
        let pids = LIVE.lock().map(|v| v.clone()).unwrap_or_default();
        for pid in pids {
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: kill(2) with a pid this process spawned and a signal
                // number; no memory is involved.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }

    pub(super) fn register(pid: u32) {
        INSTALL.call_once(|| {
            // SAFETY: registers a plain `extern "C" fn()` that touches only a
            // static; atexit(3) has no other precondition.
            unsafe {
                libc::atexit(kill_all);
            }
        });
        if let Ok(mut live) = LIVE.lock() {
            live.push(pid);
        }
    }

    pub(super) fn unregister(pid: u32) {
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|&p| p != pid);
        }
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

/// One readiness check: connect, `AUTH` if needed, `PING` (must be `+PONG`,
/// `-LOADING` means the AOF is still loading), then make sure the answering
/// server is our process (`INFO server` → `process_id`), not someone else
/// who grabbed the port. `Err` carries the reply or error seen, for messages.
fn probe(port: u16, password: Option<&str>, pid: u32) -> Result<(), String> {
    let mut conn = RespConn::connect(port)?;
    if let Some(pass) = password {
        let reply = conn.call(&["AUTH", "default", pass])?;
        if reply != "+OK" {
            return Err(format!("AUTH: {reply}"));
        }
    }
    let reply = conn.call(&["PING"])?;
    if reply != "+PONG" {
        return Err(format!("PING: {reply}"));
    }
    let info = conn.call(&["INFO", "server"])?;
    check_pid(port, pid, &info)
}

/// Whether `INFO server` output is from process `pid`.
fn check_pid(port: u16, pid: u32, info: &str) -> Result<(), String> {
    let expected = format!("process_id:{pid}");
    if info.lines().any(|l| l.trim() == expected) {
        Ok(())
    } else {
        Err(format!(
            "port {port} is answered by another process (expected {expected})"
        ))
    }
}

/// The readiness check of a TLS server, through `redis-cli --tls` (this
/// crate speaks no TLS itself): `INFO server` must answer (not `LOADING`)
/// and come from our process.
fn probe_tls(port: u16, password: Option<&str>, pid: u32, dir: &Path) -> Result<(), String> {
    let mut cmd = cli_base(port, Some(dir));
    if let Some(pass) = password {
        cmd.args(["-a", pass, "--no-auth-warning"]);
    }
    cmd.args(["INFO", "server"]);
    let out = output_with_timeout(cmd, Duration::from_secs(2))
        .map_err(|e| format!("cannot run {}: {e}", redis_cli_bin()))?
        .ok_or_else(|| "redis-cli --tls timed out".to_owned())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if stdout.contains("process_id:") {
        return check_pid(port, pid, &stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(
        format!("redis-cli --tls: {} {}", stdout.trim(), stderr.trim())
            .trim()
            .to_owned(),
    )
}

/// `redis-cli -h 127.0.0.1 -p PORT`, plus the TLS flags (trusting
/// `DIR/ca.crt`, presenting `DIR/client.crt`) when `tls_dir` is given.
fn cli_base(port: u16, tls_dir: Option<&Path>) -> Command {
    let mut cmd = Command::new(redis_cli_bin());
    cmd.args(["-h", HOST, "-p", &port.to_string()])
        .stdin(Stdio::null());
    if let Some(dir) = tls_dir {
        cmd.arg("--tls")
            .arg("--cacert")
            .arg(dir.join(CA_CERT))
            .arg("--cert")
            .arg(dir.join(CLIENT_CERT))
            .arg("--key")
            .arg(dir.join(CLIENT_KEY));
    }
    cmd
}

/// Run `cmd` (stdout and stderr captured) and wait at most `timeout`;
/// `Ok(None)` if it had to be killed.
fn output_with_timeout(mut cmd: Command, timeout: Duration) -> io::Result<Option<Output>> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Drain both pipes while waiting, so a chatty child never blocks.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(status.map(|status| Output {
        status,
        stdout,
        stderr,
    }))
}

/// A plain-TCP RESP connection to a local server, for readiness and cluster
/// state checks (no TLS).
struct RespConn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl RespConn {
    fn connect(port: u16) -> Result<RespConn, String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
            .map_err(|e| format!("connect: {e}"))?;
        let io_err = |e: io::Error| format!("i/o: {e}");
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .map_err(io_err)?;
        stream
            .set_write_timeout(Some(Duration::from_secs(1)))
            .map_err(io_err)?;
        let writer = stream.try_clone().map_err(io_err)?;
        Ok(RespConn {
            writer,
            reader: BufReader::new(stream),
        })
    }

    /// Send one command and read its (non-array) reply; see [`read_reply`].
    fn call(&mut self, args: &[&str]) -> Result<String, String> {
        let io_err = |e: io::Error| format!("i/o: {e}");
        self.writer.write_all(&resp_command(args)).map_err(io_err)?;
        read_reply(&mut self.reader).map_err(io_err)
    }
}

/// One command on a fresh connection to `port`.
fn query(port: u16, args: &[&str]) -> Result<String, String> {
    RespConn::connect(port)?.call(args)
}

/// Encode a command as a RESP array of bulk strings (binary safe, so
/// passwords with spaces work).
fn resp_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Read one simple-string, error, integer or bulk-string reply. Simple
/// replies are returned with their type byte (`+PONG`, `-LOADING ...`);
/// bulk strings as their content.
fn read_reply(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    if let Some(len) = line.strip_prefix('$') {
        let len: i64 = len
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, line.clone()))?;
        if len < 0 {
            return Ok(String::new());
        }
        let mut buf = vec![0; len as usize + 2];
        reader.read_exact(&mut buf)?;
        buf.truncate(len as usize);
        return Ok(String::from_utf8_lossy(&buf).into_owned());
    }
    Ok(line)
}

/// The generated `redis.conf`.
fn render_conf(
    opts: &ServerOptions,
    port: u16,
    dir: &Path,
    cluster: Option<&ClusterConf>,
) -> String {
    // A TLS server has no plain-text port.
    let plain_port = if opts.tls.is_some() { 0 } else { port };
    let mut lines: Vec<Vec<String>> = vec![
        vec!["port".into(), plain_port.to_string()],
        vec!["bind".into(), HOST.into()],
        vec!["protected-mode".into(), "no".into()],
        vec!["daemonize".into(), "no".into()],
        vec!["save".into(), String::new()],
        vec!["dir".into(), dir.display().to_string()],
        vec!["logfile".into(), dir.join(LOG_FILE).display().to_string()],
        vec![
            "appendonly".into(),
            if opts.appendonly { "yes" } else { "no" }.into(),
        ],
    ];
    if opts.appendonly {
        lines.push(vec!["appendfsync".into(), opts.appendfsync.as_str().into()]);
    }
    if let Some(pass) = opts.password.as_deref().filter(|p| !p.is_empty()) {
        lines.push(vec!["requirepass".into(), pass.into()]);
    }
    if let Some(tls) = &opts.tls {
        let file = |name: &str| dir.join(name).display().to_string();
        lines.extend([
            vec!["tls-port".into(), port.to_string()],
            vec!["tls-cert-file".into(), file(SERVER_CERT)],
            vec!["tls-key-file".into(), file(SERVER_KEY)],
            vec!["tls-ca-cert-file".into(), file(CA_CERT)],
            vec![
                "tls-auth-clients".into(),
                if tls.require_client_cert { "yes" } else { "no" }.into(),
            ],
        ]);
    }
    if let Some(node) = cluster {
        lines.extend([
            vec!["cluster-enabled".into(), "yes".into()],
            vec![
                "cluster-config-file".into(),
                dir.join(NODES_CONF).display().to_string(),
            ],
            vec![
                "cluster-node-timeout".into(),
                node.node_timeout.as_millis().to_string(),
            ],
            vec!["cluster-port".into(), node.bus_port.to_string()],
            // Replicas sync at once instead of waiting 5 s for company.
            vec!["repl-diskless-sync-delay".into(), "0".into()],
        ]);
    }
    for user in &opts.acl_users {
        let mut line = vec![
            "user".to_owned(),
            user.name.clone(),
            "on".into(),
            format!(">{}", user.password),
        ];
        line.extend(user.rules.iter().cloned());
        lines.push(line);
    }
    let mut out = String::from("# Generated by streambus-testkit.\n");
    for line in lines {
        let mut tokens = line.iter();
        // Directive names are plain words; values are always quoted.
        out.push_str(tokens.next().map(String::as_str).unwrap_or_default());
        for token in tokens {
            out.push(' ');
            out.push_str(&conf_quote(token));
        }
        out.push('\n');
    }
    out
}

/// Quote a value for `redis.conf` (parsed like `sdssplitargs`): inside
/// double quotes, `\"`, `\\` and `\xHH` escapes are understood.
fn conf_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for b in value.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
    out
}

/// Percent-encode everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
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

fn install_hint() -> String {
    "set REDIS_SERVER_BIN or install it: `sudo apt-get install -y redis-server` \
     on Debian/Ubuntu, `brew install redis` on macOS"
        .to_owned()
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
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

    #[test]
    fn percent_encoding() {
        assert_eq!(percent_encode("a b:c@d/é"), "a%20b%3Ac%40d%2F%C3%A9");
        assert_eq!(percent_encode("Az09-._~"), "Az09-._~");
    }

    #[test]
    fn conf_quoting() {
        assert_eq!(conf_quote(""), "\"\"");
        assert_eq!(conf_quote("a \"b\" \\c\n"), "\"a \\\"b\\\" \\\\c\\x0a\"");
    }

    #[test]
    fn resp_encoding() {
        assert_eq!(
            resp_command(&["AUTH", "default", "a b"]),
            b"*3\r\n$4\r\nAUTH\r\n$7\r\ndefault\r\n$3\r\na b\r\n"
        );
    }

    #[test]
    fn conf_has_everything() {
        let opts = ServerOptions {
            appendonly: true,
            appendfsync: Appendfsync::Always,
            password: Some("p w".into()),
            acl_users: vec![AclUser::new("bob", "s3cret", ["~ev:*", "+ping"])],
            ..ServerOptions::default()
        };
        let conf = render_conf(&opts, 1234, Path::new("/tmp/x"), None);
        for needle in [
            "port \"1234\"",
            "save \"\"",
            "appendonly \"yes\"",
            "appendfsync \"always\"",
            "requirepass \"p w\"",
            "user \"bob\" \"on\" \">s3cret\" \"~ev:*\" \"+ping\"",
        ] {
            assert!(conf.contains(needle), "{needle:?} not in\n{conf}");
        }
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
