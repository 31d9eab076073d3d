//! Who owns each partition of a leased group, for monitors and dashboards:
//! each partition's lease (owner, age, time left), the group's lag and
//! pending entries there, and the live members of the registry.

use std::time::{SystemTime, UNIX_EPOCH};

use super::lease::parse_token;
use super::Partitions;
use crate::admin::group;
use crate::connection::Connection;
use crate::error::{Error, ErrorKind, Result};
use crate::keys;
use crate::metrics as m;

/// One partition's owner lease and progress.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct PartitionOwner {
    /// The partition's index.
    pub partition: usize,
    /// The partition's key.
    pub key: String,
    /// The owner's consumer name; `None`: no member holds the partition now
    /// (its entries wait until one takes it).
    pub owner: Option<String>,
    /// How long the owner has held the lease (by the owner's clock), ms.
    pub held_ms: Option<u64>,
    /// Time since the last renewal, ms: above the renewal interval, the
    /// owner is late (paused, cut off, dying).
    pub renewed_ms_ago: Option<u64>,
    /// Time before the lease expires unless renewed, ms.
    pub expires_in_ms: Option<u64>,
    /// The group's undelivered entries on this partition (`None`: unknown, or
    /// no group there yet).
    pub lag: Option<u64>,
    /// The group's pending entries on this partition.
    pub pending: u64,
}

/// The ownership of a leased group over every partition.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct PartitionOwners {
    /// The logical stream.
    pub stream: String,
    /// The group.
    pub group: String,
    /// Consumer names of the live members (registry entries younger than
    /// their lease time), in registry order.
    pub members: Vec<String>,
    /// Partitions no member holds.
    pub unowned: usize,
    /// Whether the group uses leases at all: its registry exists, or a
    /// partition has a lease. A group read with `--member` or without
    /// membership has neither.
    pub leased: bool,
    /// Each partition, in partition order.
    pub partitions: Vec<PartitionOwner>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Reads the leases and the registry of `group` over `partitions`, and (for
/// a leased group) sets the gauge [`m::PARTITIONS_UNOWNED`]. One round trip per partition (its
/// lease and its groups live in its slot) plus one for the registry.
pub async fn owners(
    conn: &mut Connection,
    partitions: &Partitions,
    group: &str,
) -> Result<PartitionOwners> {
    keys::validate_name("group", group)?;
    let (registered, members) = live_members(conn, partitions.stream(), group).await?;
    let mut out = Vec::with_capacity(partitions.len());
    for (i, key) in partitions.keys().iter().enumerate() {
        let lease_key = keys::partition_lease(key, group);
        let (value, pttl): (Option<String>, i64) = redis::pipe()
            .cmd("GET")
            .arg(&lease_key)
            .cmd("PTTL")
            .arg(&lease_key)
            .query_async(conn)
            .await
            .map_err(|e| Error::redis(format!("cannot read the lease {lease_key:?}"), e))?;
        let (lag, pending) = match group::list_groups(conn, key).await {
            Ok(groups) => groups
                .into_iter()
                .find(|g| g.name == group)
                .map_or((None, 0), |g| (g.lag, g.pending)),
            Err(e) if matches!(e.kind(), ErrorKind::NoStream | ErrorKind::NoGroup) => (None, 0),
            Err(e) => return Err(e),
        };
        let parts = value.as_deref().and_then(parse_token);
        let expires_in = u64::try_from(pttl).ok();
        out.push(PartitionOwner {
            partition: i,
            key: key.clone(),
            owner: match (&value, &parts) {
                (_, Some(p)) => Some(p.consumer.clone()),
                (Some(v), None) => Some(v.clone()),
                (None, _) => None,
            },
            held_ms: parts
                .as_ref()
                .map(|p| unix_ms().saturating_sub(p.started_unix_ms)),
            renewed_ms_ago: parts
                .as_ref()
                .zip(expires_in)
                .map(|(p, left)| (p.ttl.as_millis() as u64).saturating_sub(left)),
            expires_in_ms: expires_in.filter(|_| value.is_some()),
            lag,
            pending,
        });
    }
    let unowned = out.iter().filter(|p| p.owner.is_none()).count();
    let leased = registered || unowned < out.len();
    if leased {
        ::metrics::gauge!(
            m::PARTITIONS_UNOWNED,
            "stream" => partitions.stream().to_owned(),
            "group" => group.to_owned()
        )
        .set(unowned as f64);
    }
    Ok(PartitionOwners {
        stream: partitions.stream().to_owned(),
        group: group.to_owned(),
        members,
        unowned,
        leased,
        partitions: out,
    })
}

/// The consumer names of the live members in the registry of `group` (seen
/// within their lease time, by the server's clock), and whether the
/// registry exists at all (the group uses leases).
pub(crate) async fn live_members(
    conn: &mut Connection,
    stream: &str,
    group: &str,
) -> Result<(bool, Vec<String>)> {
    let registry = keys::partition_members(stream, group);
    // Two commands, not a pipeline: TIME has no key, and on a cluster it may
    // go to another node than the registry's.
    let seen: Vec<String> = redis::cmd("ZRANGE")
        .arg(&registry)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(conn)
        .await
        .map_err(|e| Error::redis(format!("cannot read the member registry {registry:?}"), e))?;
    let now: Vec<String> = redis::cmd("TIME")
        .query_async(conn)
        .await
        .map_err(|e| Error::redis("cannot read the server's time", e))?;
    let now_ms = server_ms(&now)
        .ok_or_else(|| Error::new(ErrorKind::Decode, format!("unexpected TIME reply: {now:?}")))?;
    let mut members = Vec::new();
    for pair in seen.chunks(2) {
        let [token, at] = pair else { break };
        let Some(parts) = parse_token(token) else {
            continue;
        };
        let at = at.parse::<f64>().unwrap_or(0.0) as u64;
        if at + parts.ttl.as_millis() as u64 >= now_ms {
            members.push(parts.consumer);
        }
    }
    Ok((!seen.is_empty(), members))
}

/// `TIME` → milliseconds.
fn server_ms(v: &[String]) -> Option<u64> {
    let secs: u64 = v.first()?.parse().ok()?;
    let micros: u64 = v.get(1)?.parse().ok()?;
    Some(secs * 1000 + micros / 1000)
}
