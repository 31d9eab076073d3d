//! A private Redis Cluster: several [`RedisServer`] nodes joined with
//! `redis-cli --cluster create`.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::ops::RangeInclusive;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{
    output_with_timeout, query, redis_cli_bin, Appendfsync, RedisServer, RespConn, ServerOptions,
    TestkitError, HOST,
};

/// Number of hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;
/// How often cluster state is polled (each poll asks every node).
const CLUSTER_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How to start a [`RedisCluster`].
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
    /// Turn on each node's append-only file, as [`ServerOptions::appendonly`].
    /// Default `false`.
    pub appendonly: bool,
    /// Each node's AOF `fsync` policy; only used when `appendonly` is set.
    /// Default [`Appendfsync::EverySec`].
    pub appendfsync: Appendfsync,
    /// Extra `redis-server` arguments for every node, as
    /// [`ServerOptions::extra_args`].
    pub extra_args: Vec<String>,
    /// How long to wait, once every node runs, for the cluster to be
    /// created and ready (see [`RedisCluster::wait_until_ready`]). Each
    /// node's own start is bounded by [`ServerOptions::startup_timeout`]'s
    /// default (10 s). Default 30 s.
    pub startup_timeout: Duration,
    /// The `redis-server` binary, as [`ServerOptions::binary`]. Default `None`.
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

/// The role of a cluster node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeRole {
    /// A master (it serves slots, unless it lost them in a failover).
    Master,
    /// A replica of another node ([`ClusterNode::master_port`]).
    Replica,
    /// No running node could say (e.g. every node is down).
    Unknown,
}

/// One node of a [`RedisCluster`], as [`RedisCluster::nodes`] sees it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNode {
    /// The node's client port.
    pub port: u16,
    /// The node's cluster id (it never changes, restarts included).
    pub id: String,
    /// Whether its process is running.
    pub running: bool,
    /// Its role: as the node itself reports it when running, otherwise as
    /// the other nodes last saw it.
    pub role: NodeRole,
    /// For a replica, the port of its master.
    pub master_port: Option<u16>,
    /// The slot ranges it serves (empty for replicas).
    pub slots: Vec<RangeInclusive<u16>>,
}

impl ClusterNode {
    /// Whether this node serves `slot`.
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|r| r.contains(&slot))
    }
}

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

    /// `redis-cli --cluster create ... --cluster-replicas R --cluster-yes`.
    fn create(&self, timeout: Duration) -> Result<(), TestkitError> {
        let mut cmd = Command::new(redis_cli_bin());
        cmd.args(["--cluster", "create"]);
        for port in self.ports() {
            cmd.arg(format!("{HOST}:{port}"));
        }
        cmd.args([
            "--cluster-replicas",
            &self.opts.replicas_per_master.to_string(),
            "--cluster-yes",
        ]);
        let command = format!(
            "{} {}",
            redis_cli_bin(),
            cmd.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let fail = |output: String| TestkitError::ClusterCreate {
            command: command.clone(),
            output,
        };
        match output_with_timeout(cmd, timeout) {
            Err(e) => Err(fail(format!("cannot run {}: {e}", redis_cli_bin()))),
            Ok(None) => Err(fail(format!("timed out after {timeout:?}"))),
            Ok(Some(out)) => {
                let text = strip_ansi(&format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
                if out.status.success() && !text.contains("[ERR]") {
                    Ok(())
                } else {
                    Err(fail(format!("({}) {text}", out.status)))
                }
            }
        }
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

    /// Wait until every running node reports `cluster_state:ok`, all 16384
    /// slots assigned and all nodes known, and every running replica's
    /// `master_link_status` is `up` (e.g. after [`RedisCluster::restart_node`]).
    pub fn wait_until_ready(&self, timeout: Duration) -> Result<(), TestkitError> {
        self.wait_ready(timeout, None)
    }

    /// Wait until a replica of the master that listened on
    /// `killed_master_port` has taken over its slots and every running node
    /// reports `cluster_state:ok` again; return the new master's port.
    ///
    /// The killed master's slots are those recorded by
    /// [`RedisCluster::kill_node`], or, if the node was stopped otherwise,
    /// those the other nodes still attribute to it. With the default
    /// [`ClusterOptions::node_timeout`] (2 s) a failover takes about 3–5 s.
    ///
    /// # Errors
    ///
    /// [`TestkitError::InvalidOptions`] if that port was not a master
    /// serving slots; [`TestkitError::ClusterNotReady`] (with every node's
    /// state) if no failover completed within `timeout`.
    pub fn wait_for_failover(
        &self,
        killed_master_port: u16,
        timeout: Duration,
    ) -> Result<u16, TestkitError> {
        self.index(killed_master_port);
        let slots = match self.killed_slots.get(&killed_master_port) {
            Some(slots) => slots.clone(),
            None => self
                .nodes()
                .into_iter()
                .find(|n| n.port == killed_master_port && n.role == NodeRole::Master)
                .map(|n| n.slots)
                .unwrap_or_default(),
        };
        if slots.is_empty() {
            return Err(TestkitError::InvalidOptions(format!(
                "port {killed_master_port} was not a master serving slots \
                 (kill it with RedisCluster::kill_node)"
            )));
        }
        let started = Instant::now();
        loop {
            let nodes = self.nodes();
            let owner = nodes.iter().find(|n| {
                n.running
                    && n.port != killed_master_port
                    && n.role == NodeRole::Master
                    && slots
                        .iter()
                        .all(|r| n.serves(*r.start()) && n.serves(*r.end()))
            });
            if let Some(owner) = owner {
                if self.all_state_ok() {
                    return Ok(owner.port);
                }
            }
            if started.elapsed() >= timeout {
                return Err(TestkitError::ClusterNotReady {
                    awaited: format!("failed over from {killed_master_port} (slots {slots:?})"),
                    waited: started.elapsed(),
                    state: format!("{}\n{nodes:#?}", self.ready_state(None).1),
                });
            }
            std::thread::sleep(CLUSTER_POLL_INTERVAL);
        }
    }

    /// Whether every running node says `cluster_state:ok`.
    fn all_state_ok(&self) -> bool {
        self.nodes.iter().filter(|n| n.is_running()).all(|n| {
            query(n.port(), &["CLUSTER", "INFO"])
                .map(|info| info_fields(&info).get("cluster_state") == Some(&"ok"))
                .unwrap_or(false)
        })
    }

    /// Poll [`RedisCluster::ready_state`] until it holds or `timeout` passes.
    fn wait_ready(
        &self,
        timeout: Duration,
        expected_replicas: Option<usize>,
    ) -> Result<(), TestkitError> {
        let started = Instant::now();
        loop {
            let (ready, state) = self.ready_state(expected_replicas);
            if ready {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(TestkitError::ClusterNotReady {
                    awaited: "ready (cluster_state:ok, 16384 slots assigned, replicas linked)"
                        .into(),
                    waited: started.elapsed(),
                    state,
                });
            }
            std::thread::sleep(CLUSTER_POLL_INTERVAL);
        }
    }

    /// Whether the cluster is ready, and a line per node saying why not.
    fn ready_state(&self, expected_replicas: Option<usize>) -> (bool, String) {
        let mut ready = true;
        let mut replicas = 0;
        let mut report = Vec::new();
        for node in &self.nodes {
            let port = node.port();
            if !node.is_running() {
                report.push(format!("{port}: not running"));
                continue;
            }
            match node_state(port) {
                Ok(fields) => {
                    let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("?");
                    let is_replica = get("role") == "slave";
                    replicas += usize::from(is_replica);
                    let node_ready = get("cluster_state") == "ok"
                        && get("cluster_slots_assigned") == SLOTS.to_string()
                        && get("cluster_known_nodes") == self.nodes.len().to_string()
                        && (!is_replica || get("master_link_status") == "up");
                    ready &= node_ready;
                    report.push(format!(
                        "{port}: cluster_state:{} slots_assigned:{} known_nodes:{} role:{}{}",
                        get("cluster_state"),
                        get("cluster_slots_assigned"),
                        get("cluster_known_nodes"),
                        get("role"),
                        if is_replica {
                            format!(" master_link_status:{}", get("master_link_status"))
                        } else {
                            String::new()
                        }
                    ));
                }
                Err(e) => {
                    ready = false;
                    report.push(format!("{port}: {e}"));
                }
            }
        }
        if let Some(expected) = expected_replicas {
            if replicas != expected {
                ready = false;
                report.push(format!("replicas: {replicas} of {expected}"));
            }
        }
        (ready, report.join("\n"))
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

/// `CLUSTER INFO` and `INFO replication` of one node, as `key -> value`.
fn node_state(port: u16) -> Result<HashMap<String, String>, String> {
    let mut conn = RespConn::connect(port)?;
    let mut text = conn.call(&["CLUSTER", "INFO"])?;
    text.push('\n');
    text.push_str(&conn.call(&["INFO", "replication"])?);
    if text.starts_with('-') {
        return Err(text.lines().next().unwrap_or_default().to_owned());
    }
    Ok(info_fields(&text)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// The `key:value` lines of an `INFO`-style reply.
fn info_fields(text: &str) -> HashMap<&str, &str> {
    text.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .collect()
}

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NodeLine {
    id: String,
    myself: bool,
    role: NodeRole,
    master_id: Option<String>,
    slots: Vec<RangeInclusive<u16>>,
}

/// Parse `CLUSTER NODES`: `id addr flags master ping pong epoch link slot...`.
/// Slots being migrated (`[slot->-id]`) are skipped.
fn parse_cluster_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let flags: Vec<&str> = fields[2].split(',').collect();
            let role = if flags.contains(&"master") {
                NodeRole::Master
            } else if flags.contains(&"slave") {
                NodeRole::Replica
            } else {
                NodeRole::Unknown
            };
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some(a.parse().ok()?..=b.parse().ok()?),
                    None => s.parse().ok().map(|n| n..=n),
                })
                .collect();
            Some(NodeLine {
                id: fields[0].to_owned(),
                myself: flags.contains(&"myself"),
                role,
                master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                slots,
            })
        })
        .collect()
}

/// The hash slot of `key` (CRC16 of the key, or of its `{hash tag}`,
/// modulo 16384), as `CLUSTER KEYSLOT` computes it.
pub fn slot_for_key(key: impl AsRef<[u8]>) -> u16 {
    let key = key.as_ref();
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(hashed) % SLOTS
}

/// CRC16-CCITT (XMODEM), the checksum Redis Cluster uses for slots.
fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Remove ANSI colour sequences (`ESC [ ... m`) from `redis-cli` output.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.0.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(slot_for_key("foo"), 12182);
        assert_eq!(slot_for_key("bar"), 5061);
        assert_eq!(
            slot_for_key("{user1000}.following"),
            slot_for_key("user1000")
        );
        // An empty first tag hashes the whole key; only the first `{` counts.
        assert_eq!(
            slot_for_key("foo{}{bar}"),
            crc16_xmodem(b"foo{}{bar}") % SLOTS
        );
        assert_eq!(slot_for_key("foo{{bar}}zap"), slot_for_key("{bar"));
    }

    #[test]
    fn parses_cluster_nodes() {
        let text = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 [5461->-67ed] 16383
6ec2 127.0.0.1:30005@31005 master,fail - 0 1426238316232 5 disconnected
";
        let lines = parse_cluster_nodes(text);
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0].role, NodeRole::Replica);
        assert_eq!(lines[0].master_id.as_deref(), Some("e7d1"));
        assert_eq!(lines[1].slots, vec![5461..=10922]);
        assert!(lines[2].myself);
        assert_eq!(lines[2].slots, vec![0..=5460, 16383..=16383]);
        assert_eq!(lines[3].role, NodeRole::Master);
        assert!(lines[3].slots.is_empty());
    }

    #[test]
    fn strips_colours() {
        assert_eq!(strip_ansi("\u{1b}[32;1m[OK] All\u{1b}[0m"), "[OK] All");
    }

    #[test]
    fn fewer_than_three_masters_is_refused() {
        let err = RedisCluster::try_start(2, 0).unwrap_err();
        assert!(matches!(err, TestkitError::InvalidOptions(_)), "{err}");
    }
}
