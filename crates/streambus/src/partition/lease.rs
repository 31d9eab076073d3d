//! Owner leases of partitions and the member registry: the Redis side of
//! [`PartitionedWorker::leased`](super::PartitionedWorker::leased).
//!
//! - **Lease.** `<partition_key>:lease:<group>` ([`keys::partition_lease`]),
//!   in the partition's slot, holds the owner's value
//!   `<ttl_ms>:<acquired_unix_ms>:<nonce>:<consumer>` for the lease time. It is
//!   taken with `SET NX PX`, renewed and released by scripts that first check
//!   the value (only the holder renews or releases), and acknowledgements of a
//!   leased worker go through a script that acks only while the value is the
//!   holder's ([`fenced_ack`]).
//! - **Registry.** `{<stream>}:members:<group>` ([`keys::partition_members`]),
//!   a sorted set of member value to last-seen time by the server's clock; one
//!   script call both says "alive" and returns every live member.
//! - **Fence.** What a leased partition's [`Worker`](crate::Worker) checks
//!   before every read, every handler call and every acknowledgement: a local
//!   deadline, no round trip (see [`Fence`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{Script, Value};

use crate::connection::Connection;
use crate::error::{Error, ErrorKind, Result};
use crate::id::EntryId;

static RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/lease_renew.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/lease_release.lua")));
static FENCED_ACK: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/fenced_ack.lua")));
static HEARTBEAT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/members_heartbeat.lua")));

fn millis(d: Duration) -> u64 {
    (d.as_millis().min(u64::MAX as u128) as u64).max(1)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The value a member writes into the leases it holds and into the registry:
/// unique per process run (the nonce), so that two processes started with the
/// same consumer name never mistake each other's lease for their own.
pub(crate) fn member_token(consumer: &str, lease_ttl: Duration) -> String {
    let nonce = (crate::backoff::Jitter::new().next_unit() * 1e12) as u64;
    format!(
        "{}:{}:{nonce:012x}:{consumer}",
        millis(lease_ttl),
        unix_ms()
    )
}

/// A lease value taken apart (see the module docs), for monitors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TokenParts {
    pub(crate) ttl: Duration,
    pub(crate) started_unix_ms: u64,
    pub(crate) consumer: String,
}

/// Parses a lease or registry value; `None` for a value streambus did not write.
pub(crate) fn parse_token(token: &str) -> Option<TokenParts> {
    let mut it = token.splitn(4, ':');
    let ttl = it.next()?.parse().ok()?;
    let started = it.next()?.parse().ok()?;
    let _nonce = it.next()?;
    let consumer = it.next()?;
    Some(TokenParts {
        ttl: Duration::from_millis(ttl),
        started_unix_ms: started,
        consumer: consumer.to_owned(),
    })
}

/// A partition's lease as a leased worker holds it, checked locally.
///
/// It is valid until a deadline on this process's monotonic clock: the time
/// the last successful renewal (or the acquisition) was *sent*, plus the
/// lease time, minus a tenth of it as a margin for clock-rate drift between
/// this host and Redis. Redis starts the lease's expiry when it *receives*
/// the command, later than it was sent, so the local deadline always comes
/// first: when the check says "held", no other member can hold the lease.
/// A stop-the-world pause lets the monotonic clock run on, so after a long
/// pause the check fails without any round trip.
#[derive(Debug)]
pub(crate) struct Fence {
    /// The lease key, in the partition's slot.
    pub(crate) key: String,
    /// The holder's value.
    pub(crate) token: String,
    base: Instant,
    ttl: Duration,
    /// Nanoseconds after `base` until which the lease is held; 0 once lost.
    valid_until: AtomicU64,
}

impl Fence {
    /// A lease just taken by a command sent at `sent_at`.
    pub(crate) fn new(key: String, token: String, ttl: Duration, sent_at: Instant) -> Self {
        let f = Fence {
            key,
            token,
            base: sent_at,
            ttl,
            valid_until: AtomicU64::new(0),
        };
        f.valid_until.store(f.deadline(sent_at), Ordering::Release);
        f
    }

    fn deadline(&self, sent_at: Instant) -> u64 {
        let valid = self.ttl - self.ttl / 10;
        let at = sent_at.saturating_duration_since(self.base) + valid;
        (at.as_nanos() as u64).max(1)
    }

    /// How long the lease is still held for sure; zero once lost.
    pub(crate) fn remaining(&self) -> Duration {
        let until = self.valid_until.load(Ordering::Acquire);
        let now = self.base.elapsed().as_nanos() as u64;
        Duration::from_nanos(until.saturating_sub(now))
    }

    /// Whether the lease is still held for sure.
    pub(crate) fn holds(&self) -> bool {
        !self.remaining().is_zero()
    }

    /// A renewal sent at `sent_at` succeeded. A lease once lost (revoked, or
    /// its deadline passed, even if a late renewal then succeeds) stays lost:
    /// the worker has already begun to stop and to skip entries, and letting
    /// it handle again could run a key's later entries before the skipped
    /// ones. Its partition is released and taken anew instead.
    pub(crate) fn renewed(&self, sent_at: Instant) {
        let next = self.deadline(sent_at);
        let now = self.base.elapsed().as_nanos() as u64;
        // The value is ignored: an update refused means the lease is lost.
        let _ = self
            .valid_until
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur > now && next > cur).then_some(next)
            });
    }

    /// The lease is gone (taken by another, released, or found expired).
    pub(crate) fn revoke(&self) {
        self.valid_until.store(0, Ordering::Release);
    }
}

/// `SET key token NX PX ttl`: true if taken.
pub(crate) async fn acquire(
    conn: &mut Connection,
    key: &str,
    token: &str,
    ttl: Duration,
) -> Result<bool> {
    let v: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(token)
        .arg("NX")
        .arg("PX")
        .arg(millis(ttl))
        .query_async(conn)
        .await
        .map_err(|e| Error::redis(format!("cannot take the lease {key:?}"), e))?;
    Ok(v.is_some())
}

/// Renews the lease if `token` still holds it: false if it does not.
pub(crate) async fn renew(
    conn: &mut Connection,
    key: &str,
    token: &str,
    ttl: Duration,
) -> Result<bool> {
    let n: i64 = RENEW
        .key(key)
        .arg(token)
        .arg(millis(ttl))
        .invoke_async(conn)
        .await
        .map_err(|e| Error::redis(format!("cannot renew the lease {key:?}"), e))?;
    Ok(n == 1)
}

/// Gives the lease back if `token` still holds it.
pub(crate) async fn release(conn: &mut Connection, key: &str, token: &str) -> Result<bool> {
    let n: i64 = RELEASE
        .key(key)
        .arg(token)
        .invoke_async(conn)
        .await
        .map_err(|e| Error::redis(format!("cannot release the lease {key:?}"), e))?;
    Ok(n == 1)
}

/// XACK `ids` only while `fence`'s token holds the lease (one atomic script):
/// `Ok(None)` when it does not.
pub(crate) async fn fenced_ack(
    conn: &mut Connection,
    stream: &str,
    group: &str,
    fence: &Fence,
    ids: &[EntryId],
) -> Result<Option<u64>> {
    let mut inv = FENCED_ACK.key(stream);
    inv.key(&fence.key).arg(&fence.token).arg(group);
    for id in ids {
        inv.arg(id.to_string());
    }
    let n: i64 = inv
        .invoke_async(conn)
        .await
        .map_err(|e| Error::redis(format!("cannot acknowledge on {stream:?}"), e))?;
    Ok(u64::try_from(n).ok())
}

/// Takes every pending entry of `group` on the partition `stream` over to
/// `consumer` (XAUTOCLAIM with min-idle 0, JUSTID so that delivery counts stay
/// as they are), in id order: for a new owner, before it reads new entries.
/// Call it only while holding the partition's lease. Returns how many.
pub(crate) async fn take_over_pending(
    conn: &mut Connection,
    stream: &str,
    group: &str,
    consumer: &str,
) -> Result<u64> {
    let mut from = "0-0".to_owned();
    let mut total = 0;
    loop {
        let v: Value = redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(group)
            .arg(consumer)
            .arg(0)
            .arg(&from)
            .arg("COUNT")
            .arg(1000)
            .arg("JUSTID")
            .query_async(conn)
            .await
            .map_err(|e| {
                Error::redis(
                    format!("cannot take over the pending entries of {stream:?}"),
                    e,
                )
            })?;
        let (next, claimed) = parse_autoclaim(&v).ok_or_else(|| {
            Error::new(
                ErrorKind::Decode,
                format!("unexpected XAUTOCLAIM reply on {stream:?}: {v:?}"),
            )
        })?;
        total += claimed;
        if next == "0-0" {
            return Ok(total);
        }
        from = next;
    }
}

/// `[next cursor, [ids...], [deleted...]]` → (cursor, number of ids).
fn parse_autoclaim(v: &Value) -> Option<(String, u64)> {
    let Value::Array(parts) = v else { return None };
    let next = match parts.first()? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
        Value::SimpleString(s) => s.clone(),
        _ => return None,
    };
    let Value::Array(ids) = parts.get(1)? else {
        return None;
    };
    Some((next, ids.len() as u64))
}

/// One member's entry in the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LiveMember {
    pub(crate) token: String,
    /// Server time (ms) it was last seen.
    pub(crate) seen_ms: u64,
}

/// Says `token` is alive (or, with `leave`, gone) and returns the server's
/// time (ms) and the live members (seen within `member_ttl`), sorted by token.
pub(crate) async fn heartbeat(
    conn: &mut Connection,
    registry: &str,
    token: &str,
    member_ttl: Duration,
    leave: bool,
) -> Result<(u64, Vec<LiveMember>)> {
    let v: Vec<String> = HEARTBEAT
        .key(registry)
        .arg(token)
        .arg(millis(member_ttl))
        .arg(if leave { "leave" } else { "beat" })
        .invoke_async(conn)
        .await
        .map_err(|e| Error::redis(format!("cannot update the member registry {registry:?}"), e))?;
    parse_members(&v).ok_or_else(|| {
        Error::new(
            ErrorKind::Decode,
            format!("unexpected member registry reply from {registry:?}"),
        )
    })
}

fn parse_members(v: &[String]) -> Option<(u64, Vec<LiveMember>)> {
    let (now, rest) = v.split_first()?;
    let now = now.parse().ok()?;
    if rest.len() % 2 != 0 {
        return None;
    }
    let mut members: Vec<LiveMember> = rest
        .chunks(2)
        .map(|c| {
            Some(LiveMember {
                token: c[0].clone(),
                seen_ms: c[1].parse::<f64>().ok()? as u64,
            })
        })
        .collect::<Option<_>>()?;
    members.sort_by(|a, b| a.token.cmp(&b.token));
    Some((now, members))
}

/// The partitions (of `partitions`) that member `me` should own when `live`
/// (sorted, `me` among them) are the live members: member `k` of `M` takes
/// the partitions `p` with `p % M == k`. Every member computes the same
/// split from the same registry, each takes at most ⌈P/M⌉ and at least
/// ⌊P/M⌋, and a member beyond the partitions takes none. Empty if `me` is not
/// listed (it is not alive as far as Redis knows).
pub(crate) fn assignment(live: &[&str], me: &str, partitions: usize) -> Vec<usize> {
    let Some(k) = live.iter().position(|m| *m == me) else {
        return Vec::new();
    };
    let m = live.len();
    (0..partitions).filter(|p| p % m == k).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_is_even_disjoint_and_complete() {
        for p in 1..20usize {
            for m in 1..8usize {
                let names: Vec<String> = (0..m).map(|i| format!("m{i}")).collect();
                let live: Vec<&str> = names.iter().map(String::as_str).collect();
                let mut all = Vec::new();
                for name in &live {
                    let mine = assignment(&live, name, p);
                    assert!(mine.len() <= p.div_ceil(m), "{p} over {m}: {mine:?}");
                    assert!(mine.len() >= p / m);
                    all.extend(mine);
                }
                all.sort();
                assert_eq!(all, (0..p).collect::<Vec<_>>(), "{p} over {m}");
            }
        }
        assert!(assignment(&["a"], "b", 4).is_empty());
    }

    #[test]
    fn tokens_parse_back() {
        let t = member_token("host:1", Duration::from_secs(10));
        let parts = parse_token(&t).unwrap();
        assert_eq!(parts.ttl, Duration::from_secs(10));
        assert_eq!(parts.consumer, "host:1");
        assert_ne!(t, member_token("host:1", Duration::from_secs(10)));
        assert!(parse_token("garbage").is_none());
    }

    #[test]
    fn a_fence_expires_before_the_lease_and_stays_lost() {
        let sent = Instant::now();
        let f = Fence::new("k".into(), "t".into(), Duration::from_secs(10), sent);
        assert!(f.holds());
        assert!(f.remaining() <= Duration::from_secs(9));
        f.revoke();
        assert!(!f.holds());
        f.renewed(Instant::now());
        assert!(
            !f.holds(),
            "a lost lease is not brought back by a late renewal"
        );
        // Renewed (sent) 20 ms ago, for 10 ms: gone.
        let long_ago = Instant::now() - Duration::from_millis(20);
        let g = Fence::new("k".into(), "t".into(), Duration::from_millis(10), long_ago);
        assert!(!g.holds());
        g.renewed(Instant::now());
        assert!(!g.holds(), "a lease that ran out stays lost");
        // A renewal sent now brings a held lease forward.
        let h = Fence::new("k".into(), "t".into(), Duration::from_secs(1), long_ago);
        let before = h.remaining();
        h.renewed(Instant::now());
        assert!(h.remaining() > before);
    }

    #[test]
    fn registry_replies_parse() {
        let v: Vec<String> = ["100", "b", "90", "a", "95"].map(String::from).to_vec();
        let (now, m) = parse_members(&v).unwrap();
        assert_eq!(now, 100);
        assert_eq!(m[0].token, "a");
        assert_eq!(m[1].seen_ms, 90);
        assert!(parse_members(&["1".into(), "a".into()]).is_none());
    }
}
