//! Leased membership: partitions follow the live members, with no coordinator
//! beyond Redis.
//!
//! Every `renew_interval`, each member, in one task (the "coordinator"):
//!
//! 1. renews the lease of every partition it holds (a script: only if the
//!    lease still carries its token); a renewal that finds the lease gone
//!    revokes that partition's [`Fence`] at once, which stops its worker;
//! 2. says it is alive in the group's member registry and reads the live
//!    members back (one script on one key: [`lease::heartbeat`]);
//! 3. computes its share ([`lease::assignment`]: member `k` of the `M`
//!    sorted live members takes the partitions `p % M == k`, at most ⌈P/M⌉);
//! 4. stops, gracefully, the workers of partitions outside its share (each
//!    releases its lease as soon as its in-flight entries are acknowledged);
//! 5. tries `SET NX PX` on the leases of partitions in its share that it
//!    does not hold: one that is held by another member (still draining, or
//!    crashed and not yet expired) is tried again from 100 ms later, at
//!    doubling intervals up to `renew_interval` (a handover is taken within
//!    moments of its release).
//!
//! A partition's worker, once its lease is taken, first creates the group,
//! then takes over every pending entry of the partition (the old owner's) in
//! id order, hands those out before reading new ones, and runs under the
//! fence (see [`Fence`] and the worker's hooks).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{error, info, warn};

use super::lease::{self, Fence};
use super::PartitionedWorker;
use crate::admin::group;
use crate::connection::{Client, Connection};
use crate::error::{Error, ErrorKind, Result};
use crate::handler::{Delivery, Handler};
use crate::keys;
use crate::worker::{Worker, WorkerOptions, WorkerReport};

/// Settings of leased membership ([`PartitionedWorker::leased`]).
///
/// The defaults (10 s, renewed every 3 s) are chosen against the worker's
/// defaults: a crashed member's partitions move after at most `lease_time +
/// renew_interval` (13 s), well before the 30 s `visibility_timeout` after
/// which idle entries would be reclaimed anyway, and a renewal may fail twice
/// (a Redis failover takes a few seconds) before the lease is lost. Handlers
/// shorter than `lease_time - renew_interval` (7 s) never overlap with a new
/// owner unless their process is paused or cut off from Redis meanwhile (see
/// the README, "Leased membership", for the exact bound).
#[derive(Clone, Debug)]
pub struct LeaseOptions {
    /// How long a lease (and a member's entry in the registry) lasts without
    /// renewal: after a crash, its partitions wait at most this long (plus
    /// one `renew_interval`) for a new owner.
    pub lease_time: Duration,
    /// How often leases are renewed and the live members looked at: also how
    /// soon partitions move after a member joins or leaves gracefully (the
    /// old owner sees the change at its next renewal, drains and releases; the
    /// new one, which tries again from 100 ms after finding the lease held,
    /// takes it within moments of the release).
    pub renew_interval: Duration,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions {
            lease_time: Duration::from_secs(10),
            renew_interval: Duration::from_secs(3),
        }
    }
}

impl LeaseOptions {
    /// Refuses settings under which a lease could expire between two renewals.
    pub fn validate(&self) -> Result<()> {
        if self.renew_interval.is_zero() || self.renew_interval * 2 > self.lease_time {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the lease renewal interval ({:?}) must be above zero and at most half the lease time ({:?}), so that one failed renewal does not lose the lease",
                    self.renew_interval, self.lease_time
                ),
            ));
        }
        Ok(())
    }
}

/// A partition this member holds.
struct Held {
    fence: Arc<Fence>,
    /// Cancelled to stop its worker gracefully (rebalance, shutdown, lost).
    stop: CancellationToken,
    task: AbortOnDropHandle<Result<WorkerReport>>,
}

/// What every partition task of one member shares.
struct Member<H> {
    client: Client,
    conn: Connection,
    group: String,
    consumer: String,
    token: String,
    options: WorkerOptions,
    lease: LeaseOptions,
    handler: Arc<H>,
    /// Woken when a partition task ends, so that it is reaped at once (at
    /// shutdown: the member stops as soon as its last partition has).
    done: Arc<Notify>,
}

/// [`PartitionedWorker::run`] with leases.
pub(super) async fn run<H: Handler>(
    w: PartitionedWorker,
    lease_options: LeaseOptions,
    handler: H,
    shutdown: CancellationToken,
) -> Result<WorkerReport> {
    lease_options.validate()?;
    keys::validate_name("group", &w.group)?;
    let consumer = w
        .options
        .consumer_name
        .clone()
        .unwrap_or_else(crate::consumer::default_consumer_name);
    keys::validate_name("consumer", &consumer)?;
    let mut conn = w.client.connect().await?;
    crate::admin::preflight::warn_about(&mut conn).await;
    let mut options = w.options.clone();
    options.consumer_name = Some(consumer.clone());
    let stream = w.partitions.stream().to_owned();
    let registry = keys::partition_members(&stream, &w.group);
    let member = Arc::new(Member {
        client: w.client.clone(),
        conn: conn.clone(),
        group: w.group.clone(),
        token: lease::member_token(&consumer, lease_options.lease_time),
        consumer,
        options,
        lease: lease_options.clone(),
        handler: Arc::new(handler),
        done: Arc::new(Notify::new()),
    });
    info!(%stream, group = %member.group, token = %member.token, "leased member started");
    let n = w.partitions.len();
    let mut held: BTreeMap<usize, Held> = BTreeMap::new();
    let mut total = WorkerReport::default();
    let mut fatal: Option<Error> = None;
    let mut stopping = false;
    let mut next_tick = Instant::now();
    // Partitions of this member's share that another member still held at
    // the last try (draining them to hand them over, or crashed), and when
    // to try them again: soon, and less often the longer it takes.
    let mut waiting: Vec<usize> = Vec::new();
    let mut retry_in = HANDOVER_FIRST_RETRY;
    let mut next_retry: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_tick) => {}
            _ = tokio::time::sleep_until(next_retry.unwrap_or(next_tick)), if next_retry.is_some() => {}
            _ = member.done.notified() => {}
            _ = shutdown.cancelled(), if !stopping => {}
        }
        if shutdown.is_cancelled() && !stopping {
            stopping = true;
            next_retry = None;
            for h in held.values() {
                h.stop.cancel();
            }
        }
        // Partitions whose worker ended (stopped, lost, failed).
        let ended: Vec<usize> = held
            .iter()
            .filter(|(_, h)| h.task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for p in ended {
            let h = held.remove(&p).expect("listed above");
            match h.task.await {
                Ok(Ok(report)) => total.add(&report),
                Ok(Err(e)) if is_fatal(&e) => {
                    error!(partition = p, error = %e, "partition worker cannot run; stopping");
                    fatal.get_or_insert(e);
                    shutdown.cancel();
                }
                Ok(Err(e)) => {
                    warn!(partition = p, error = %e, "partition worker failed; taking the partition again later")
                }
                Err(e) => error!(partition = p, error = %e, "partition task ended abnormally"),
            }
        }
        if stopping && held.is_empty() {
            break;
        }
        if Instant::now() < next_tick {
            // Woken early (a partition ended, or the shutdown): its lease was
            // given back; the next turn takes it again if it is still ours.
            // Not at once: a partition whose worker keeps failing to start
            // is then retried once per turn, not in a tight loop. Only the
            // partitions another member held are tried between turns: a
            // handover then takes about the old owner's drain, not up to a
            // whole `renew_interval` more.
            if !stopping && next_retry.is_some_and(|t| t <= Instant::now()) {
                waiting = take_leases(&member, &w.partitions, &mut held, &waiting).await;
                retry_in = (retry_in * 2).min(member.lease.renew_interval);
                next_retry = (!waiting.is_empty()).then(|| Instant::now() + retry_in);
            }
            continue;
        }
        next_tick = Instant::now() + member.lease.renew_interval;
        renew_all(&member, &held).await;
        if stopping {
            // Renewed until every partition has flushed its acks.
            continue;
        }
        let mut c = member.conn.clone();
        let live = match lease::heartbeat(
            &mut c,
            &registry,
            &member.token,
            member.lease.lease_time,
            false,
        )
        .await
        {
            Ok((_, live)) => live,
            Err(e) => {
                warn!(error = %e, "cannot reach the member registry; keeping the partitions held");
                continue;
            }
        };
        let names: Vec<&str> = live.iter().map(|m| m.token.as_str()).collect();
        let share = lease::assignment(&names, &member.token, n);
        for (p, h) in &held {
            if !share.contains(p) && !h.stop.is_cancelled() {
                info!(
                    partition = p,
                    members = names.len(),
                    "rebalance: handing the partition over"
                );
                h.stop.cancel();
            }
        }
        waiting = take_leases(&member, &w.partitions, &mut held, &share).await;
        retry_in = HANDOVER_FIRST_RETRY.min(member.lease.renew_interval);
        next_retry = (!waiting.is_empty()).then(|| Instant::now() + retry_in);
    }
    // Leave the registry at once, so that the others take over now.
    let mut c = member.conn.clone();
    let leave = lease::heartbeat(
        &mut c,
        &registry,
        &member.token,
        member.lease.lease_time,
        true,
    );
    if let Err(e) = leave.await {
        // The entry expires with the lease time.
        warn!(error = %e, "cannot leave the member registry");
    }
    info!(?total, "leased member stopped");
    match fatal {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// First pause before trying again the leases of this member's share that
/// another member held; doubled per try, up to `renew_interval`. A graceful
/// handover (the old owner drains, then releases) is then noticed within
/// about this long of the release.
const HANDOVER_FIRST_RETRY: Duration = Duration::from_millis(100);

/// Tries to take the leases of the partitions of `wanted` that this member
/// does not hold, starting a worker for each one taken; returns those that
/// another member still holds.
async fn take_leases<H: Handler>(
    member: &Arc<Member<H>>,
    partitions: &super::Partitions,
    held: &mut BTreeMap<usize, Held>,
    wanted: &[usize],
) -> Vec<usize> {
    let mut still_held = Vec::new();
    for &p in wanted {
        if held.contains_key(&p) {
            continue;
        }
        let key = partitions.keys()[p].clone();
        let lease_key = keys::partition_lease(&key, &member.group);
        let sent = std::time::Instant::now();
        let mut c = member.conn.clone();
        match lease::acquire(&mut c, &lease_key, &member.token, member.lease.lease_time).await {
            Ok(true) => {
                let fence = Arc::new(Fence::new(
                    lease_key,
                    member.token.clone(),
                    member.lease.lease_time,
                    sent,
                ));
                info!(partition = p, "took the partition's lease");
                let stop = CancellationToken::new();
                let task = tokio::spawn(run_partition(
                    member.clone(),
                    key,
                    fence.clone(),
                    stop.clone(),
                ));
                held.insert(
                    p,
                    Held {
                        fence,
                        stop,
                        task: AbortOnDropHandle::new(task),
                    },
                );
            }
            // Held by another member: it hands it over, or it expires.
            Ok(false) => still_held.push(p),
            Err(e) => warn!(partition = p, error = %e, "cannot take the lease"),
        }
    }
    still_held
}

/// Errors no retry mends: bad settings or credentials.
fn is_fatal(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::InvalidInput | ErrorKind::Auth | ErrorKind::Permission
    )
}

/// Renews every held lease at once; a lease found gone stops its worker.
async fn renew_all<H>(member: &Member<H>, held: &BTreeMap<usize, Held>) {
    let renewals = held.iter().map(|(p, h)| {
        let mut c = member.conn.clone();
        async move {
            let sent = std::time::Instant::now();
            let fence = &h.fence;
            match lease::renew(&mut c, &fence.key, &fence.token, member.lease.lease_time).await {
                Ok(true) => fence.renewed(sent),
                Ok(false) => {
                    warn!(
                        partition = p,
                        "the partition's lease is gone (expired or taken); stopping it"
                    );
                    fence.revoke();
                    h.stop.cancel();
                }
                // Retried next time; the fence runs out by itself meanwhile.
                Err(e) => warn!(partition = p, error = %e, "cannot renew the lease"),
            }
        }
    });
    futures_util::future::join_all(renewals).await;
}

/// One held partition: handover, then its worker under the fence, then the
/// lease given back.
async fn run_partition<H: Handler>(
    member: Arc<Member<H>>,
    key: String,
    fence: Arc<Fence>,
    stop: CancellationToken,
) -> Result<WorkerReport> {
    let result = handover_and_run(&member, &key, &fence, stop).await;
    // Given back at once, so that the next owner need not wait for expiry.
    let mut c = member.conn.clone();
    if let Err(e) = lease::release(&mut c, &fence.key, &fence.token).await {
        warn!(partition = %key, error = %e, "cannot release the lease; it expires by itself");
    }
    fence.revoke();
    member.done.notify_one();
    result
}

async fn handover_and_run<H: Handler>(
    member: &Member<H>,
    key: &str,
    fence: &Arc<Fence>,
    stop: CancellationToken,
) -> Result<WorkerReport> {
    let mut c = member.conn.clone();
    group::create_group(&mut c, key, &member.group, member.options.start).await?;
    // The old owner's pending entries become ours, in id order; the worker
    // hands them out before reading new ones. If this fails, the partition
    // is given back and taken again later: reading without it would let new
    // entries overtake the old owner's.
    let taken = lease::take_over_pending(&mut c, key, &member.group, &member.consumer).await?;
    if taken > 0 {
        info!(partition = %key, taken, "took over the partition's pending entries");
    }
    if !fence.holds() {
        return Ok(WorkerReport::default());
    }
    let h = member.handler.clone();
    Worker::new(
        &member.client,
        key,
        member.group.as_str(),
        member.options.clone(),
    )
    .without_preflight()
    .with_fence(fence.clone())
    .run(
        move |d: Delivery| {
            let h = h.clone();
            async move { h.handle(d).await }
        },
        stop,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_must_fit_twice_in_the_lease() {
        assert!(LeaseOptions::default().validate().is_ok());
        let bad = LeaseOptions {
            lease_time: Duration::from_secs(4),
            renew_interval: Duration::from_secs(3),
        };
        assert!(bad.validate().is_err());
        let zero = LeaseOptions {
            renew_interval: Duration::ZERO,
            ..Default::default()
        };
        assert!(zero.validate().is_err());
    }
}
