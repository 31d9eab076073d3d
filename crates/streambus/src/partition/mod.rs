//! Partitioned streams: one logical stream split over N keys in different hash
//! slots, so that on Redis Cluster its throughput grows with the number of
//! masters (like the partitions of a Kafka topic).
//!
//! - **Keys.** Partition `i` of `aurora:alerts` is `aurora:alerts:p<i>`, plus a
//!   hash tag (`aurora:alerts:p3{s17}`) chosen so that partition `i` of `n` lands
//!   in the `i`-th n-th of the slot range. `redis-cli --cluster create` gives
//!   each master a contiguous range, so the partitions spread evenly over the
//!   masters (two per master for 6 partitions on 3 masters). Each partition's
//!   dead-letter stream and helper keys share its slot (see [`crate::keys`]).
//!   The names depend only on the stream name and `n`: every producer and
//!   worker computes the same ones. Changing `n` makes new keys; drain the old
//!   ones first.
//! - **Routing.** An envelope with a `key` always goes to the same partition
//!   (CRC16 of the key, mod n), so entries of one key stay in order; without a
//!   key, partitions take turns.
//! - **Reading.** A consumer group exists on every partition; a
//!   [`PartitionedWorker`] runs one [`Worker`] per partition. Each blocking read
//!   needs its own connection: Redis Cluster refuses a read across keys of
//!   different slots (CROSSSLOT), so one read cannot serve two partitions, even
//!   on the same node.
//! - **Membership.** Per-key order across processes needs one reader per
//!   partition at a time: static ([`PartitionedWorker::member`]) or leased
//!   ([`PartitionedWorker::leased`]: owner leases in Redis, `lease`; the
//!   member loop, `leased`; who owns what, [`owners`]).

pub(crate) mod lease;
mod leased;
mod owners;

pub use leased::LeaseOptions;
pub use owners::{owners, PartitionOwner, PartitionOwners};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::admin::monitor::{self, MonitorOptions, StreamSnapshot};
use crate::admin::scaler::{self, Sample};
use crate::connection::{Client, Connection};
use crate::envelope::Message;
use crate::error::{Error, ErrorKind, Result};
use crate::handler::{Delivery, Handler};
use crate::id::EntryId;
use crate::keys;
use crate::producer::{Producer, ProducerOptions};
use crate::reply;
use crate::worker::{Worker, WorkerOptions, WorkerReport};
use tokio_util::sync::CancellationToken;

/// Most partitions a logical stream may have.
pub const MAX_PARTITIONS: u32 = 1024;

/// The partition keys of one logical stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partitions {
    stream: String,
    keys: Vec<String>,
}

impl Partitions {
    /// The `n` partitions of `stream`.
    pub fn new(stream: &str, n: u32) -> Result<Self> {
        keys::validate_name("stream", stream)?;
        if n == 0 || n > MAX_PARTITIONS {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("a stream needs 1 to {MAX_PARTITIONS} partitions, not {n}"),
            ));
        }
        let keys = (0..n).map(|i| partition_key(stream, i, n)).collect();
        Ok(Partitions {
            stream: stream.to_owned(),
            keys,
        })
    }

    /// The logical stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The partition keys, in partition order.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// How many partitions.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a stream has at least one partition.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The partition an ordering key belongs to (stable across processes).
    pub fn index_for_key(&self, key: &str) -> usize {
        usize::from(keys::crc16(key.as_bytes())) % self.keys.len()
    }

    /// The partition key an ordering key belongs to.
    pub fn for_key(&self, key: &str) -> &str {
        &self.keys[self.index_for_key(key)]
    }
}

/// `<stream>:p<i>` with a hash tag that puts it in the `i`-th of `n` slot ranges.
fn partition_key(stream: &str, i: u32, n: u32) -> String {
    let lo = (u64::from(i) * 16_384 / u64::from(n)) as u16;
    let hi = (u64::from(i + 1) * 16_384 / u64::from(n)) as u16;
    let base = keys::partition(stream, i);
    // CRC16 spreads short tags evenly: a tag lands in a range of 16384/n slots
    // within about n tries; the bound only guards against a bug.
    (0..200_000u32)
        .map(|k| format!("{base}{{s{k}}}"))
        .find(|key| (lo..hi).contains(&keys::slot(key)))
        .unwrap_or(base)
}

/// Publishes to a partitioned stream: by the envelope's `key`, else in turn.
#[derive(Clone)]
pub struct PartitionedProducer {
    producer: Producer,
    partitions: Arc<Partitions>,
    next: Arc<AtomicUsize>,
}

impl Producer {
    /// This producer (its connection and pipelines shared) publishing to
    /// `partitions`: for an application that publishes to plain and
    /// partitioned streams alike.
    pub fn partitioned(&self, partitions: Partitions) -> PartitionedProducer {
        // Start the turns at a random partition: short-lived publishers (one
        // `streambus publish` per message) would otherwise all hit partition 0.
        let start = (crate::backoff::Jitter::new().next_unit() * partitions.len() as f64) as usize;
        PartitionedProducer {
            producer: self.clone(),
            partitions: Arc::new(partitions),
            next: Arc::new(AtomicUsize::new(start)),
        }
    }
}

impl PartitionedProducer {
    /// A producer for `client` that publishes to `partitions`, on a
    /// connection of its own (see [`Producer::new`]).
    pub async fn new(
        client: &Client,
        partitions: Partitions,
        options: ProducerOptions,
    ) -> Result<Self> {
        Ok(Producer::new(client, options)
            .await?
            .partitioned(partitions))
    }

    /// The partitions.
    pub fn partitions(&self) -> &Partitions {
        &self.partitions
    }

    /// The partition key `message` goes to.
    pub fn route(&self, message: &Message) -> &str {
        match message.key() {
            Some(k) => self.partitions.for_key(k),
            None => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % self.partitions.len();
                &self.partitions.keys()[i]
            }
        }
    }

    /// Publishes one message; returns the partition key and the entry id.
    pub async fn publish(&self, message: Message) -> Result<(String, EntryId)> {
        let key = self.route(&message).to_owned();
        let id = self.producer.publish(&key, message).await?;
        Ok((key, id))
    }

    /// Publishes many messages: grouped by partition, one pipelined batch per
    /// partition, all partitions at once. Returns (partition key, entry id) in the
    /// order of `messages`.
    pub async fn publish_batch(
        &self,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<Vec<(String, EntryId)>> {
        let mut groups: Vec<(Vec<usize>, Vec<Message>)> = (0..self.partitions.len())
            .map(|_| Default::default())
            .collect();
        let mut count = 0;
        for (pos, m) in messages.into_iter().enumerate() {
            let key = self.route(&m);
            let i = self
                .partitions
                .keys()
                .iter()
                .position(|k| k == key)
                .unwrap_or(0);
            groups[i].0.push(pos);
            groups[i].1.push(m);
            count += 1;
        }
        let sends = groups
            .into_iter()
            .enumerate()
            .filter(|(_, g)| !g.1.is_empty())
            .map(|(i, (positions, msgs))| {
                let key = self.partitions.keys()[i].clone();
                let producer = self.producer.clone();
                async move {
                    let ids = producer.publish_batch(&key, msgs).await?;
                    Ok::<_, Error>((key, positions, ids))
                }
            });
        let mut out = vec![(String::new(), EntryId::ZERO); count];
        for r in futures_util::future::join_all(sends).await {
            let (key, positions, ids) = r?;
            for (pos, id) in positions.into_iter().zip(ids) {
                out[pos] = (key.clone(), id);
            }
        }
        Ok(out)
    }
}

/// Runs one [`Worker`] per partition with the same handler, consumer name and
/// options (`concurrency` is per partition).
///
/// **Per-key order across several processes** needs each partition to be read
/// by one process at a time. Two ways:
///
/// - **Leased** ([`PartitionedWorker::leased`]): members join and leave
///   without configuration. Each partition has an owner lease in Redis; the
///   partitions spread evenly over the live members (at most ⌈P/M⌉ each) and
///   move when members join, leave or die (after the lease time). A new owner
///   first takes over the old owner's pending entries, in order; an owner
///   that lost its lease (paused, cut off) stops handling and acknowledging.
///   Give each process its own consumer name (the default one is).
/// - **Static** ([`PartitionedWorker::member`], `i` of `n`): reads only the
///   partitions `p` with `p % n == i`; while a member is down, its partitions
///   wait for it (nothing is lost), like a Kafka consumer with a static group
///   id.
///
/// With neither, a process reads every partition, and several such
/// processes share each partition's entries (no order across them). This
/// stays the library's default because it needs nothing in Redis beyond the
/// group and is what existing callers rely on; the CLI (`consume --partitions
/// N --exec/--pipe` without `--member`) uses leases.
pub struct PartitionedWorker {
    client: Client,
    partitions: Partitions,
    group: String,
    options: WorkerOptions,
    member: Option<(usize, usize)>,
    /// With [`PartitionedWorker::leased`].
    lease: Option<LeaseOptions>,
}

impl PartitionedWorker {
    /// A worker for `group` on every partition (the same
    /// [`WorkerOptions::consumer_name`] on each).
    pub fn new(
        client: &Client,
        partitions: Partitions,
        group: impl Into<String>,
        options: WorkerOptions,
    ) -> Self {
        PartitionedWorker {
            client: client.clone(),
            partitions,
            group: group.into(),
            options,
            member: None,
            lease: None,
        }
    }

    /// Leased membership (see the type's docs): the partitions this process
    /// reads follow the live members of the group. Replaces
    /// [`PartitionedWorker::member`].
    pub fn leased(mut self, options: LeaseOptions) -> Self {
        self.lease = Some(options);
        self.member = None;
        self
    }

    /// Reads only the partitions of member `index` of `members` (see the type's
    /// docs). Fails at `run` if `index >= members`.
    pub fn member(mut self, index: usize, members: usize) -> Self {
        self.member = Some((index, members));
        self.lease = None;
        self
    }

    /// The partition keys this worker reads (leased: every partition it may
    /// come to own).
    pub fn assigned(&self) -> Vec<&str> {
        self.partitions
            .keys()
            .iter()
            .enumerate()
            .filter(|(p, _)| self.member.is_none_or(|(i, n)| n > 0 && p % n == i))
            .map(|(_, k)| k.as_str())
            .collect()
    }

    /// Runs until `shutdown`, then stops every partition's worker gracefully and
    /// returns their reports added up. Fails if any partition's worker fails to
    /// start.
    pub async fn run<H: Handler>(
        self,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<WorkerReport> {
        if let Some(lease) = self.lease.clone() {
            return leased::run(self, lease, handler, shutdown).await;
        }
        if let Some((i, n)) = self.member {
            if i >= n {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "member {i} of {n}: the member number must be below the number of members"
                    ),
                ));
            }
        }
        // One check of the server's settings for all partitions' workers, not
        // one (and the same warnings) per partition.
        if let Ok(mut conn) = self.client.connect().await {
            crate::admin::preflight::warn_about(&mut conn).await;
        }
        let handler = Arc::new(handler);
        let mut runs = Vec::with_capacity(self.partitions.len());
        for key in self.assigned() {
            let worker = Worker::new(&self.client, key, self.group.as_str(), self.options.clone())
                .without_preflight();
            let h = handler.clone();
            runs.push(worker.run(
                move |d: Delivery| {
                    let h = h.clone();
                    async move { h.handle(d).await }
                },
                shutdown.clone(),
            ));
        }
        let mut total = WorkerReport::default();
        let mut first_error = None;
        for r in futures_util::future::join_all(runs).await {
            match r {
                Ok(report) => total.add(&report),
                Err(e) => {
                    // One partition failing to start stops the others too.
                    shutdown.cancel();
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }
}

/// A logical stream seen as one: totals, and the snapshot of every partition.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct PartitionedSnapshot {
    /// The logical stream.
    pub stream: String,
    /// Entries over all partitions.
    pub length: u64,
    /// Per group (by name): pending and lag over all partitions. The lag is
    /// `None` when any partition cannot tell it.
    pub groups: Vec<GroupTotals>,
    /// Each partition's own snapshot, in partition order.
    pub partitions: Vec<StreamSnapshot>,
    /// For each group with leased membership: who owns each partition, the
    /// lease ages, the live members and the partitions without an owner.
    pub owners: Vec<PartitionOwners>,
}

/// One group's totals over the partitions.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct GroupTotals {
    /// Group name.
    pub name: String,
    /// Pending entries over all partitions.
    pub pending: u64,
    /// Undelivered entries over all partitions; `None` if any partition cannot tell.
    pub lag: Option<u64>,
    /// Partitions on which the group exists.
    pub partitions: usize,
}

/// Snapshots every partition (missing ones count as empty) and adds them up;
/// for leased groups, adds who owns each partition ([`owners`]).
pub async fn snapshot(
    conn: &mut Connection,
    partitions: &Partitions,
    options: &MonitorOptions,
) -> Result<PartitionedSnapshot> {
    let mut parts = Vec::with_capacity(partitions.len());
    for key in partitions.keys() {
        match monitor::snapshot(conn, key, options).await {
            Ok(s) => parts.push(s),
            Err(e) if e.kind() == ErrorKind::NoStream => {}
            Err(e) => return Err(e),
        }
    }
    let mut groups: Vec<GroupTotals> = Vec::new();
    for part in &parts {
        for g in &part.groups {
            match groups.iter_mut().find(|t| t.name == g.name) {
                Some(t) => {
                    t.pending += g.pending;
                    t.lag = t.lag.zip(g.lag).map(|(a, b)| a + b);
                    t.partitions += 1;
                }
                None => groups.push(GroupTotals {
                    name: g.name.clone(),
                    pending: g.pending,
                    lag: g.lag,
                    partitions: 1,
                }),
            }
        }
    }
    let mut leased = Vec::new();
    for g in &groups {
        match owners(conn, partitions, &g.name).await {
            Ok(o) if o.leased => leased.push(o),
            Ok(_) => {}
            // A monitor user allowed the streams but not the lease keys (or
            // TIME): the snapshot without the owners.
            Err(e) if e.kind() == ErrorKind::Permission => {}
            Err(e) => return Err(e),
        }
    }
    Ok(PartitionedSnapshot {
        stream: partitions.stream().to_owned(),
        length: parts.iter().map(|p| p.length).sum(),
        groups,
        partitions: parts,
        owners: leased,
    })
}

/// One scaler [`Sample`] of `group` over all partitions, for
/// [`crate::admin::scaler`] and the [`Advisor`](crate::admin::scaler::Advisor): the counters, the pending
/// count and the lag added up (the lag is unknown if it is on any partition),
/// and as consumers the number of distinct consumer names. A member process
/// has one consumer, under one name, on each partition it serves, so that
/// counts processes, which is what a scaling decision is about. For a group
/// with leased membership, the live members of its registry count instead
/// (a dead member's name stays in the group until cleaned up). Partitions
/// that do not exist yet, or do not have the group yet, are skipped; a
/// `NoStream` / `NoGroup` error when none has it.
pub async fn sample(conn: &mut Connection, partitions: &Partitions, group: &str) -> Result<Sample> {
    let mut total: Option<Sample> = None;
    let mut names = std::collections::HashSet::new();
    let mut missing_group = false;
    for key in partitions.keys() {
        let s = match scaler::sample(conn, key, group).await {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::NoStream => continue,
            Err(e) if e.kind() == ErrorKind::NoGroup => {
                missing_group = true;
                continue;
            }
            Err(e) => return Err(e),
        };
        for c in reply::xinfo_consumers(conn, key, group).await? {
            names.insert(c.name);
        }
        total = Some(match total {
            None => s,
            Some(t) => Sample {
                at: s.at,
                entries_added: t.entries_added.zip(s.entries_added).map(|(a, b)| a + b),
                entries_read: t.entries_read.zip(s.entries_read).map(|(a, b)| a + b),
                lag: t.lag.zip(s.lag).map(|(a, b)| a + b),
                pending: t.pending + s.pending,
                consumers: 0,
            },
        });
    }
    let stream = partitions.stream();
    // A leased group: its live members, from the registry. Consumer names
    // of dead members stay in the group until cleaned up; they are not
    // capacity.
    let (leased, live) = match owners::live_members(conn, stream, group).await {
        Ok(found) => found,
        // Not allowed to read the registry: count consumer names, as for a
        // group without leases.
        Err(e) if e.kind() == ErrorKind::Permission => (false, Vec::new()),
        Err(e) => return Err(e),
    };
    match total {
        Some(mut t) => {
            t.consumers = if leased { live.len() } else { names.len() } as u64;
            Ok(t)
        }
        None if missing_group => Err(Error::new(
            ErrorKind::NoGroup,
            format!("no partition of stream {stream:?} has a group {group:?}"),
        )),
        None => Err(Error::new(
            ErrorKind::NoStream,
            format!(
                "stream {stream:?} does not exist: none of its {} partitions does (publish to it first, or check the number of partitions)",
                partitions.len()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_over_the_slot_range() {
        let p = Partitions::new("aurora:alerts", 6).unwrap();
        for (i, key) in p.keys().iter().enumerate() {
            let slot = u32::from(keys::slot(key));
            assert_eq!(slot * 6 / 16_384, i as u32, "{key} in slot {slot}");
            assert!(key.starts_with(&format!("aurora:alerts:p{i}{{")), "{key}");
            // Its dead-letter stream shares the slot.
            assert_eq!(keys::slot(&keys::dead_letter(key)), keys::slot(key));
        }
        assert_eq!(
            Partitions::new("aurora:alerts", 6).unwrap(),
            p,
            "deterministic"
        );
        assert!(Partitions::new("s", 0).is_err());
    }

    #[test]
    fn the_same_key_always_goes_to_the_same_partition() {
        let p = Partitions::new("s", 6).unwrap();
        let a = p.for_key("host-1").to_owned();
        for _ in 0..10 {
            assert_eq!(p.for_key("host-1"), a);
        }
        let used: std::collections::HashSet<_> = (0..100)
            .map(|i| p.index_for_key(&format!("host-{i}")))
            .collect();
        assert_eq!(used.len(), 6, "keys spread over every partition");
    }
}
