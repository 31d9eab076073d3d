//! [`ClusterOptions`]: how to start a [`RedisCluster`](super::RedisCluster).

use std::time::Duration;

use crate::Appendfsync;

/// How to start a [`RedisCluster`](super::RedisCluster).
///
/// Build it with struct-update syntax:
/// `ClusterOptions { masters: 3, replicas_per_master: 1, ..ClusterOptions::default() }`.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Number of masters; at least 3 (`redis-cli --cluster create` refuses
    /// fewer). Default 3.
    pub masters: usize,
    /// Replicas of each master. Default 0.
    pub replicas_per_master: usize,
    /// `cluster-node-timeout`: how long a node may be unreachable before it
    /// is considered failed (and a replica takes over). Default 2 s.
    pub node_timeout: Duration,
    /// Turn on each node's append-only file, as
    /// [`ServerOptions::appendonly`](crate::ServerOptions::appendonly).
    /// Default `false`.
    pub appendonly: bool,
    /// Each node's AOF `fsync` policy; only used when `appendonly` is set.
    /// Default [`Appendfsync::EverySec`].
    pub appendfsync: Appendfsync,
    /// Extra `redis-server` arguments for every node, as
    /// [`ServerOptions::extra_args`](crate::ServerOptions::extra_args).
    pub extra_args: Vec<String>,
    /// How long to wait, once every node runs, for the cluster to be
    /// created and ready (see
    /// [`RedisCluster::wait_until_ready`](super::RedisCluster::wait_until_ready)).
    /// Each node's own start is bounded by
    /// [`ServerOptions::startup_timeout`](crate::ServerOptions::startup_timeout)'s
    /// default (10 s). Default 30 s.
    pub startup_timeout: Duration,
    /// The `redis-server` binary, as
    /// [`ServerOptions::binary`](crate::ServerOptions::binary). Default `None`.
    pub binary: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            masters: 3,
            replicas_per_master: 0,
            node_timeout: Duration::from_secs(2),
            appendonly: false,
            appendfsync: Appendfsync::EverySec,
            extra_args: Vec::new(),
            startup_timeout: Duration::from_secs(30),
            binary: None,
        }
    }
}
