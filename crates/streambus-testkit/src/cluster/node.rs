//! What a cluster's nodes are: [`ClusterNode`], [`NodeRole`], and the one
//! parser of `CLUSTER NODES` that both come from.

use std::ops::RangeInclusive;

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

/// One node of a [`RedisCluster`](super::RedisCluster), as
/// [`RedisCluster::nodes`](super::RedisCluster::nodes) sees it now.
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

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct NodeLine {
    pub(super) id: String,
    pub(super) myself: bool,
    pub(super) role: NodeRole,
    pub(super) master_id: Option<String>,
    pub(super) slots: Vec<RangeInclusive<u16>>,
}

/// Parse `CLUSTER NODES`: `id addr flags master ping pong epoch link slot...`.
/// Slots being migrated (`[slot->-id]`) are skipped.
pub(super) fn parse_cluster_nodes(text: &str) -> Vec<NodeLine> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
