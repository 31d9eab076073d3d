//! A private Redis Cluster: several [`RedisServer`] nodes joined with
//! `redis-cli --cluster create`.
//!
//! This file holds [`RedisCluster`] itself: starting it, and finding, killing
//! and restarting its nodes. The rest, one concept per file:
//!
//! - `options`: [`ClusterOptions`];
//! - `node`: [`ClusterNode`], [`NodeRole`] and the `CLUSTER NODES` parser;
//! - `slots`: [`slot_for_key`] (CRC16 hash slots);
//! - `create`: `redis-cli --cluster create`;
//! - `ready`: waiting for the cluster to be ready, or to fail over.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Instant;

use tempfile::TempDir;

use crate::{query, RedisServer, ServerOptions, TestkitError, HOST};

mod create;
mod node;
mod options;
mod ready;
mod slots;

use node::{parse_cluster_nodes, NodeLine};
pub use node::{ClusterNode, NodeRole};
pub use options::ClusterOptions;
pub use slots::slot_for_key;
use slots::SLOTS;

/// A private Redis Cluster for tests: `masters * (1 + replicas_per_master)`
/// [`RedisServer`] nodes on free ports of `127.0.0.1`, joined with
/// `redis-cli --cluster create`.
///
/// [`RedisCluster::start`] returns once every node reports
/// `cluster_state:ok` with all 16384 slots assigned and every replica's
/// link to its master is up. Each node keeps its data and `nodes.conf` in
/// its own directory under [`RedisCluster::dir`], so a killed node can be
/// restarted ([`RedisCluster::restart_node`]) and rejoins with the same id.
///
/// Dropping the cluster kills (`SIGKILL`) and reaps every node and removes
/// the directories.
///
/// ```no_run
/// use std::time::Duration;
/// use streambus_testkit::{slot_for_key, RedisCluster};
///
/// let mut cluster = RedisCluster::start(3, 1);
/// let url = cluster.url(); // "redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3"
/// # let _ = url;
/// let master = cluster.master_for_slot(slot_for_key("{orders}:0"));
/// cluster.kill_node(master);
/// let promoted = cluster
///     .wait_for_failover(master, Duration::from_secs(20))
///     .unwrap();
/// assert_ne!(promoted, master);
/// ```
pub struct RedisCluster {
    /// The nodes, in creation order (the first `masters` were created as
    /// masters). Declared first: dropped (killed, their directories
    /// removed) before `dir`.
    nodes: Vec<RedisServer>,
    /// Cluster id of each node, same order as `nodes`.
    ids: Vec<String>,
    /// Slots a master served when [`RedisCluster::kill_node`] killed it.
    killed_slots: HashMap<u16, Vec<RangeInclusive<u16>>>,
    /// How the cluster was started.
    opts: ClusterOptions,
    /// The parent directory of the nodes' directories.
    dir: TempDir,
}

impl fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCluster")
            .field("ports", &self.ports())
            .field("masters", &self.opts.masters)
            .field("replicas_per_master", &self.opts.replicas_per_master)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl RedisCluster {
    /// Start a cluster of `masters` masters (at least 3) with
    /// `replicas_per_master` replicas each, and wait until it is ready.
    ///
    /// # Panics
    ///
    /// If the cluster cannot be started; the message says why. Use
    /// [`RedisCluster::try_start`] to handle that yourself.
    pub fn start(masters: usize, replicas_per_master: usize) -> RedisCluster {
        RedisCluster::start_with(ClusterOptions {
            masters,
            replicas_per_master,
            ..ClusterOptions::default()
        })
    }

    /// As [`RedisCluster::start`], returning an error instead of panicking.
    pub fn try_start(
        masters: usize,
        replicas_per_master: usize,
    ) -> Result<RedisCluster, TestkitError> {
        RedisCluster::try_start_with(ClusterOptions {
            masters,
            replicas_per_master,
            ..ClusterOptions::default()
        })
    }

    /// Start a cluster with the given options.
    ///
    /// # Panics
    ///
    /// As [`RedisCluster::start`].
    pub fn start_with(opts: ClusterOptions) -> RedisCluster {
        RedisCluster::try_start_with(opts)
            .unwrap_or_else(|e| panic!("failed to start a test Redis Cluster: {e}"))
    }

    /// Start a cluster with the given options, returning an error instead
    /// of panicking. Nodes already started are torn down on error.
    pub fn try_start_with(opts: ClusterOptions) -> Result<RedisCluster, TestkitError> {
        if opts.masters < 3 {
            return Err(TestkitError::InvalidOptions(format!(
                "a Redis Cluster needs at least 3 masters (`redis-cli --cluster create` \
                 refuses fewer), got {}",
                opts.masters
            )));
        }
        let dir = tempfile::Builder::new()
            .prefix("streambus-cluster-")
            .tempdir()?;
        let node_opts = ServerOptions {
            appendonly: opts.appendonly,
            appendfsync: opts.appendfsync,
            extra_args: opts.extra_args.clone(),
            binary: opts.binary.clone(),
            ..ServerOptions::default()
        };
        let total = opts.masters * (1 + opts.replicas_per_master);
        let mut nodes = Vec::with_capacity(total);
        for _ in 0..total {
            nodes.push(RedisServer::start_node(
                node_opts.clone(),
                Some(dir.path()),
                Some(opts.node_timeout),
            )?);
        }
        let mut ids = Vec::with_capacity(total);
        for node in &nodes {
            let id = query(node.port(), &["CLUSTER", "MYID"])
                .map_err(|e| io::Error::other(format!("CLUSTER MYID on {}: {e}", node.port())))?;
            ids.push(id);
        }
        let started = Instant::now();
        let cluster = RedisCluster {
            nodes,
            ids,
            killed_slots: HashMap::new(),
            opts,
            dir,
        };
        cluster.create(cluster.opts.startup_timeout)?;
        let left = cluster
            .opts
            .startup_timeout
            .saturating_sub(started.elapsed());
        let replicas = cluster.opts.masters * cluster.opts.replicas_per_master;
        cluster.wait_ready(left, Some(replicas))?;
        Ok(cluster)
    }

    /// The ports of all nodes, in creation order (the first
    /// [`ClusterOptions::masters`] were created as masters).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// The parent directory of the nodes' data directories
    /// ([`RedisServer::dir`] of each node).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster URL streambus accepts:
    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...`, listing the running
    /// masters that serve slots ([`RedisCluster::masters`]), or every
    /// running node if none does.
    pub fn url(&self) -> String {
        let mut ports = self.masters();
        if ports.is_empty() {
            ports = self
                .nodes
                .iter()
                .filter(|n| n.is_running())
                .map(RedisServer::port)
                .collect();
        }
        let seeds: Vec<String> = ports.iter().map(|p| format!("{HOST}:{p}")).collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Every node as it is now (asked live, so roles after a failover are
    /// current), in creation order.
    pub fn nodes(&self) -> Vec<ClusterNode> {
        let views: Vec<Option<Vec<NodeLine>>> = self
            .nodes
            .iter()
            .map(|n| {
                n.is_running()
                    .then(|| query(n.port(), &["CLUSTER", "NODES"]).ok())
                    .flatten()
                    .map(|text| parse_cluster_nodes(&text))
            })
            .collect();
        let port_of: HashMap<&str, u16> = self
            .ids
            .iter()
            .map(String::as_str)
            .zip(self.nodes.iter().map(RedisServer::port))
            .collect();
        self.nodes
            .iter()
            .zip(&self.ids)
            .zip(&views)
            .map(|((node, id), own_view)| {
                let line = own_view
                    .as_ref()
                    .and_then(|v| v.iter().find(|l| l.myself))
                    .or_else(|| views.iter().flatten().flatten().find(|l| &l.id == id));
                ClusterNode {
                    port: node.port(),
                    id: id.clone(),
                    running: node.is_running(),
                    role: line.map_or(NodeRole::Unknown, |l| l.role),
                    master_port: line
                        .and_then(|l| l.master_id.as_deref())
                        .and_then(|m| port_of.get(m).copied()),
                    slots: line.map(|l| l.slots.clone()).unwrap_or_default(),
                }
            })
            .collect()
    }

    /// The ports of the running masters that serve slots, ordered by their
    /// first slot.
    pub fn masters(&self) -> Vec<u16> {
        let mut masters: Vec<ClusterNode> = self
            .nodes()
            .into_iter()
            .filter(|n| n.running && n.role == NodeRole::Master && !n.slots.is_empty())
            .collect();
        masters.sort_by_key(|n| n.slots.iter().map(|r| *r.start()).min());
        masters.into_iter().map(|n| n.port).collect()
    }

    /// The port of the running master serving `slot` (see [`slot_for_key`]).
    ///
    /// # Panics
    ///
    /// If `slot` is not below 16384, or no running master serves it (its
    /// master is down and no replica has taken over yet).
    pub fn master_for_slot(&self, slot: u16) -> u16 {
        assert!(slot < SLOTS, "slot {slot} out of range (0..16384)");
        self.nodes()
            .into_iter()
            .find(|n| n.running && n.role == NodeRole::Master && n.serves(slot))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no running master serves slot {slot}: {:?}", self.nodes()))
    }

    /// The node listening on `port`.
    ///
    /// # Panics
    ///
    /// If no node of this cluster has that port.
    pub fn node(&self, port: u16) -> &RedisServer {
        let i = self.index(port);
        &self.nodes[i]
    }

    /// The node listening on `port`, to kill or restart it directly.
    /// Prefer [`RedisCluster::kill_node`], which also records the slots a
    /// master served for [`RedisCluster::wait_for_failover`].
    ///
    /// # Panics
    ///
    /// If no node of this cluster has that port.
    pub fn node_mut(&mut self, port: u16) -> &mut RedisServer {
        let i = self.index(port);
        &mut self.nodes[i]
    }

    /// Kill the node on `port` (`SIGKILL`: a crash), remembering which
    /// slots it served if it was a master.
    ///
    /// # Panics
    ///
    /// If no node of this cluster has that port.
    pub fn kill_node(&mut self, port: u16) {
        let i = self.index(port);
        if self.nodes[i].is_running() {
            let own = query(port, &["CLUSTER", "NODES"])
                .ok()
                .and_then(|t| parse_cluster_nodes(&t).into_iter().find(|l| l.myself));
            match own {
                Some(l) if l.role == NodeRole::Master && !l.slots.is_empty() => {
                    self.killed_slots.insert(port, l.slots);
                }
                _ => {
                    self.killed_slots.remove(&port);
                }
            }
        }
        self.nodes[i].kill();
    }

    /// Start the node on `port` again (same port, directory and cluster
    /// id) and wait until it answers `PING`. It rejoins the cluster on its
    /// own; a master that was failed over comes back as a replica. Use
    /// [`RedisCluster::wait_until_ready`] to wait for the cluster.
    ///
    /// # Panics
    ///
    /// If no node has that port, or it does not come back
    /// ([`RedisServer::restart`]).
    pub fn restart_node(&mut self, port: u16) {
        self.node_mut(port).restart();
    }

    /// Run `redis-cli` against the node on `port` and return its trimmed
    /// stdout, as [`RedisServer::cli`]. Pass `"-c"` first to follow
    /// `MOVED`/`ASK` redirections: `cluster.cli(p, &["-c", "SET", "k", "v"])`.
    ///
    /// Each call is a new connection: `WAIT` after a separate `SET` call
    /// waits for nothing (it counts only its own connection's writes). Pipe
    /// several commands into one [`RedisServer::cli_command`] for that.
    ///
    /// # Panics
    ///
    /// If no node has that port, or `redis-cli` fails.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        self.node(port).cli(args)
    }

    /// Index of the node on `port`; panics for a foreign port.
    fn index(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port() == port)
            .unwrap_or_else(|| {
                panic!(
                    "no node of this cluster listens on {port}: {:?}",
                    self.ports()
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fewer_than_three_masters_is_refused() {
        let err = RedisCluster::try_start(2, 0).unwrap_err();
        assert!(matches!(err, TestkitError::InvalidOptions(_)), "{err}");
    }
}
