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
//! - `server`: [`RedisServer`], one `redis-server` process (start, restart,
//!   kill, readiness); `exit_guard` kills the ones still running at exit.
//! - `options`: [`ServerOptions`], [`AclUser`], [`TlsOptions`],
//!   [`Appendfsync`], and the `redis.conf` built from them.
//! - `error`: [`TestkitError`].
//! - `support`: [`free_port`], [`unique_prefix`], the binaries' paths.
//! - `resp`: a minimal RESP connection and `redis-cli` with a timeout.
//! - `cluster`: [`RedisCluster`] and slot helpers.
//! - `sentinel`: [`RedisSentinel`], a primary, replicas and sentinels, with
//!   planned (`SENTINEL FAILOVER`) and unplanned (`SIGKILL`) failovers.
//! - `certs`: the generated TLS test certificates.
//! - [`proxy`]: [`FaultProxy`], a fault-injecting TCP proxy.
//! - [`wait`]: polling a condition with a deadline ([`wait_until`],
//!   [`eventually`], [`wait_for`]) instead of sleeping.
//!
//! # Lifetime
//!
//! The server lives exactly as long as its [`RedisServer`]. Values in a
//! `static` are never dropped, so a server kept in a `static` outlives the
//! test binary's `Drop`s; prefer one server per test (starting one takes a
//! few milliseconds), and use [`unique_prefix`] when tests share one.
#![warn(missing_docs)]

use std::time::Duration;

mod certs;
mod cluster;
mod error;
mod exit_guard;
mod options;
pub mod proxy;
mod resp;
mod sentinel;
mod server;
mod support;
pub mod wait;

pub use cluster::{slot_for_key, ClusterNode, ClusterOptions, NodeRole, RedisCluster};
pub use error::TestkitError;
pub use options::{AclUser, Appendfsync, ServerOptions, TlsOptions};
pub use proxy::FaultProxy;
pub use sentinel::{RedisSentinel, SentinelOptions};
pub use server::RedisServer;
pub use support::{free_port, redis_cli_bin, redis_server_bin, unique_prefix};
pub use wait::{eventually, wait_for, wait_for_some, wait_until};

pub(crate) use resp::{output_with_timeout, query, RespConn};

/// The address every server started by this crate listens on.
pub(crate) const HOST: &str = "127.0.0.1";
/// How often readiness and shutdown conditions are polled.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How many free ports a first start tries when the chosen one gets taken.
pub(crate) const PORT_ATTEMPTS: usize = 5;
/// How many lines of the server log error messages include.
pub(crate) const LOG_TAIL_LINES: usize = 50;
/// Name of the generated configuration file inside the data directory.
pub(crate) const CONF_FILE: &str = "redis.conf";
/// Name of the server log file inside the data directory.
pub(crate) const LOG_FILE: &str = "redis.log";
/// Name of a cluster node's `cluster-config-file` inside its data directory.
pub(crate) const NODES_CONF: &str = "nodes.conf";
/// Where the child's stdout/stderr go: `redis-server` prints configuration
/// errors there before it opens its log file.
pub(crate) const STDIO_FILE: &str = "redis.stdio.log";
