//! The bodies of the JSON routes, as types. The dashboard (`assets/app.js`)
//! reads them; `tests/responses.rs` holds their shape against a golden file.
//!
//! Fields are serialized in the order declared here. `Option` fields are
//! `null` when empty unless marked `skip_serializing_if` (then absent).

use serde::Serialize;
use streambus::admin::dead_letter::DeadLetter;
use streambus::admin::monitor::{ConsumerSnapshot, GroupSnapshot, StreamSnapshot};
use streambus::admin::scaler::{Advice, Suggestion};
use streambus::partition::PartitionOwner;
use streambus::EntryId;

/// `GET /api/streams`.
#[derive(Serialize)]
pub(crate) struct StreamList {
    pub streams: Vec<StreamView>,
}

/// One stream of `GET /api/streams`.
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum StreamView {
    Plain(PlainStream),
    Missing(MissingStream),
    Partitioned(PartitionedStream),
}

/// A stream that exists: its monitor snapshot, and more.
#[derive(Serialize)]
pub(crate) struct PlainStream {
    #[serde(flatten)]
    pub snapshot: StreamSnapshot,
    /// Always `true` here (see [`MissingStream`]).
    pub exists: bool,
    pub dead_letters: u64,
}

/// A configured stream that does not exist (yet).
#[derive(Serialize)]
pub(crate) struct MissingStream {
    pub stream: String,
    /// Always 0.
    pub length: u64,
    /// Always empty.
    pub groups: Vec<GroupSnapshot>,
    /// Always `false`.
    pub exists: bool,
    pub dead_letters: u64,
}

/// A partitioned stream shown as one (totals over its partitions), with a
/// per-partition breakdown.
#[derive(Serialize)]
pub(crate) struct PartitionedStream {
    /// The logical stream.
    pub stream: String,
    /// Whether any partition exists.
    pub exists: bool,
    pub length: u64,
    /// The largest over the partitions.
    pub last_entry_id: Option<EntryId>,
    pub dead_letters: u64,
    pub groups: Vec<PartitionedGroup>,
    pub partition_count: usize,
    pub partitions: Vec<PartitionView>,
    /// Per group with leased membership (`consume --exec/--pipe` without
    /// `--member`, `PartitionedWorker::leased`): who owns each partition.
    /// Groups read without leases are not listed, nor is a group whose last
    /// member stopped gracefully (it left the registry and released its
    /// leases); a crashed member's group stays listed, its partitions unowned.
    pub owners: Vec<GroupOwners>,
}

/// The owners of one leased group's partitions: what an operator looks at
/// when a partition's entries stop moving (no live owner, or an owner whose
/// renewals are late).
#[derive(Serialize)]
pub(crate) struct GroupOwners {
    pub group: String,
    /// Consumer names of the live members (seen within their lease time).
    pub members: Vec<String>,
    /// Partitions no member holds now: their entries wait (the dashboard
    /// highlights it above 0).
    pub unowned: usize,
    /// Each partition: `owner` (`null`: none), `held_ms`, `renewed_ms_ago`,
    /// `expires_in_ms`, `lag`, `pending`.
    pub partitions: Vec<PartitionOwner>,
}

/// A group over the partitions of a stream.
#[derive(Serialize)]
pub(crate) struct PartitionedGroup {
    pub name: String,
    pub pending: u64,
    /// `null` when a partition cannot tell.
    pub lag: Option<u64>,
    /// How many partitions have the group.
    pub partitions: usize,
    /// Each partition's consumers, with their partition index.
    pub consumers: Vec<Partitioned<ConsumerSnapshot>>,
}

/// A value of one partition, with the partition's index added.
#[derive(Serialize)]
pub(crate) struct Partitioned<T> {
    #[serde(flatten)]
    pub value: T,
    pub partition: usize,
}

/// One partition of a partitioned stream.
#[derive(Serialize)]
pub(crate) struct PartitionView {
    pub partition: usize,
    /// The partition's stream key.
    pub key: String,
    pub exists: bool,
    pub length: u64,
    pub last_entry_id: Option<EntryId>,
    pub dead_letters: u64,
    pub groups: Vec<PartitionGroup>,
}

/// A group of one partition.
#[derive(Serialize)]
pub(crate) struct PartitionGroup {
    pub name: String,
    pub pending: u64,
    pub lag: Option<u64>,
}

/// `GET /api/streams/{s}/groups/{g}/scale`: the reference rule (`rate`,
/// `suggestion`, `sentence`) and the advisor (`target`, `reasons`, `advisor`).
#[derive(Serialize)]
pub(crate) struct ScaleView {
    pub stream: String,
    pub group: String,
    pub lag: Option<u64>,
    pub pending: u64,
    pub consumers: u64,
    pub scale_out: f64,
    pub scale_in: f64,
    /// The reference rule's rate, percent; `null` when Redis cannot tell the lag.
    pub rate: Option<f64>,
    pub suggestion: Option<Suggestion>,
    pub sentence: String,
    /// The advisor's target; `null` until it has two samples.
    pub target: Option<u64>,
    pub reasons: Vec<String>,
    pub advisor: Option<Advice>,
}

/// `GET /api/streams/{s}/dlq` of a plain stream.
#[derive(Serialize)]
pub(crate) struct DeadLetterList {
    pub stream: String,
    pub dead_letter_stream: String,
    pub total: u64,
    pub entries: Vec<DeadLetter>,
}

/// `GET /api/streams/{s}/dlq` of a partitioned stream: each partition's
/// oldest, merged by id.
#[derive(Serialize)]
pub(crate) struct PartitionedDeadLetterList {
    pub stream: String,
    pub total: u64,
    pub entries: Vec<Partitioned<DeadLetter>>,
}

/// 201 of `POST /api/streams/{s}/messages`.
#[derive(Serialize)]
pub(crate) struct Published {
    pub entry_id: EntryId,
    /// The envelope id.
    pub id: Option<String>,
    /// For a partitioned stream, the partition written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<usize>,
}

/// `GET /healthz`.
#[derive(Serialize)]
pub(crate) struct Health {
    /// `ok` or `redis_unreachable`.
    pub status: &'static str,
    /// `ok` or `unreachable`.
    pub redis: &'static str,
    /// While unreachable: what is known of the outage.
    #[serde(flatten)]
    pub outage: Option<OutageView>,
}

/// The outage part of `/healthz`.
#[derive(Serialize)]
pub(crate) struct OutageView {
    /// `timeout` or `error`.
    pub reason: &'static str,
    /// The library's error kind (`connection`, `timeout`, `busy`, ...).
    pub error: &'static str,
    /// Unix ms.
    pub since: u64,
    pub down_for_ms: u64,
}
