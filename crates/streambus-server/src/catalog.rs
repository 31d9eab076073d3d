//! [`Catalog`]: which streams the service shows, and what they look like now.
//!
//! Shared by the routes (`/api/streams`, `/metrics`) and the scaler's sampler,
//! so that they agree on the list. No HTTP types: errors are the library's.

use std::collections::HashMap;

use streambus::admin::monitor::MonitorOptions;
use streambus::admin::monitor::{self, StreamSnapshot};
use streambus::partition::{self, PartitionedSnapshot, Partitions};
use streambus::{Connection, ErrorKind};

use crate::config::ServerConfig;

/// The streams the service shows.
pub(crate) struct Catalog {
    /// [`ServerConfig::streams`]: when empty, the streams found by `SCAN`.
    configured: Vec<String>,
    /// Per partitioned stream (more than one partition), its partitions.
    partitioned: HashMap<String, Partitions>,
    /// On a cluster `SCAN` sees one node only: show the configured streams.
    cluster: bool,
    /// Most streams `SCAN` may find ([`ServerConfig::max_streams`]).
    max_streams: usize,
}

/// What one shown stream looks like now.
pub(crate) enum Shown<'a> {
    /// A plain stream: its snapshot, `None` when it does not exist yet.
    Plain {
        name: String,
        snapshot: Option<StreamSnapshot>,
    },
    /// A partitioned stream: its partitions and their snapshots.
    Partitioned {
        partitions: &'a Partitions,
        snapshot: PartitionedSnapshot,
    },
}

impl Catalog {
    /// `partitioned`: the partitions of each stream with more than one.
    pub(crate) fn new(
        config: &ServerConfig,
        partitioned: HashMap<String, Partitions>,
        cluster: bool,
    ) -> Self {
        Catalog {
            configured: config.streams.clone(),
            partitioned,
            cluster,
            max_streams: config.max_streams,
        }
    }

    /// The partitions of `stream`, when it is a partitioned stream.
    pub(crate) fn partitions(&self, stream: &str) -> Option<&Partitions> {
        self.partitioned.get(stream)
    }

    /// The logical stream a key is a partition of, if any.
    pub(crate) fn logical_stream_of(&self, key: &str) -> Option<&str> {
        self.partitioned
            .iter()
            .find(|(_, p)| p.keys().iter().any(|k| k == key))
            .map(|(s, _)| s.as_str())
    }

    /// The streams shown: the configured ones, or those found in Redis (the
    /// partitions of a partitioned stream named as that one stream).
    pub(crate) async fn names(&self, conn: &mut Connection) -> streambus::Result<Vec<String>> {
        if !self.configured.is_empty() || self.cluster {
            return Ok(self.configured.clone());
        }
        let found = streambus::read::list_streams(conn, self.max_streams).await?;
        let mut names: Vec<String> = Vec::with_capacity(found.len());
        for key in found {
            let name = self.logical_stream_of(&key).map_or(key, str::to_owned);
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// A snapshot of every shown stream, with the monitor gauges (of each
    /// partition, for a partitioned stream) recorded from it.
    pub(crate) async fn snapshots(
        &self,
        conn: &mut Connection,
        options: &MonitorOptions,
    ) -> streambus::Result<Vec<Shown<'_>>> {
        let mut out = Vec::new();
        for name in self.names(conn).await? {
            if let Some(partitions) = self.partitions(&name) {
                let snapshot = partition::snapshot(conn, partitions, options).await?;
                for part in &snapshot.partitions {
                    part.record_metrics();
                }
                out.push(Shown::Partitioned {
                    partitions,
                    snapshot,
                });
                continue;
            }
            let snapshot = match monitor::snapshot(conn, &name, options).await {
                Ok(snap) => {
                    snap.record_metrics();
                    Some(snap)
                }
                Err(e) if e.kind() == ErrorKind::NoStream => None,
                Err(e) => return Err(e),
            };
            out.push(Shown::Plain { name, snapshot });
        }
        Ok(out)
    }
}
