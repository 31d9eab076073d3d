//! Waiting for the cluster: until it is ready, or until a replica has
//! taken over from a killed master.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{NodeRole, RedisCluster, SLOTS};
use crate::{query, RespConn, TestkitError};

/// How often cluster state is polled (each poll asks every node).
const CLUSTER_POLL_INTERVAL: Duration = Duration::from_millis(50);

impl RedisCluster {
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
    /// [`ClusterOptions::node_timeout`](super::ClusterOptions::node_timeout)
    /// (2 s) a failover takes about 3–5 s.
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
    pub(super) fn wait_ready(
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
