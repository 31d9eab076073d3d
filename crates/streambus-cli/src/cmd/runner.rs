//! What `consume --exec` and `consume --pipe` share: a [`Worker`] (or one per
//! partition) over the group, with the defaults of the runner flags, the input
//! line each entry is given as, and `--count`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use streambus::partition::{PartitionedWorker, Partitions};
use streambus::{
    Backoff, CancellationToken, Client, Entry, Handler, Outcome, Worker, WorkerOptions,
    WorkerReport,
};

use super::settings::{self, FileGroup, BATCH_SIZE, MAX_WAIT};
use crate::cli::ConsumeArgs;

/// Defaults of the runner flags (their help texts state them).
const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_DELIVERIES: u32 = 5;
const GRACE: Duration = Duration::from_secs(30);
fn default_backoff() -> Backoff {
    Backoff::new(Duration::from_secs(1), Duration::from_secs(300))
}

/// The pending list is scanned for due retries at the backoff's base, so that a
/// short backoff means a quick retry; but not more often than this (each scan is
/// an XPENDING) ...
const MIN_SCAN_INTERVAL: Duration = Duration::from_millis(20);
/// ... and at least this often (the worker's own default).
const MAX_SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// The worker's options: built-in defaults (with `concurrency` and
/// `batch_size` of the runner), then the topology file's group settings, then
/// the flags.
pub fn options(
    args: &ConsumeArgs,
    file: FileGroup<'_>,
    concurrency: usize,
    batch_size: usize,
) -> WorkerOptions {
    let mut options = settings::worker_options(
        args,
        file,
        WorkerOptions {
            concurrency,
            batch_size: batch_size.max(BATCH_SIZE),
            block: MAX_WAIT,
            visibility_timeout: VISIBILITY_TIMEOUT,
            max_deliveries: MAX_DELIVERIES,
            retry_backoff: default_backoff(),
            shutdown_grace: GRACE,
            ..Default::default()
        },
    );
    options.reclaim_interval = options
        .retry_backoff
        .base
        .clamp(MIN_SCAN_INTERVAL, MAX_SCAN_INTERVAL);
    options
}

/// Runs `handler` over the group until `stop`: a plain stream, the partitions
/// of `--member`, or (a partitioned stream without `--member`) the partitions
/// this process's owner leases give it (leased membership, with the lease
/// settings of the flags or the topology file; the file's are ignored for a
/// plain stream, which has nothing to lease).
pub async fn run_worker<H: Handler>(
    client: &Client,
    args: &ConsumeArgs,
    file: FileGroup<'_>,
    partitions: Option<Partitions>,
    options: WorkerOptions,
    handler: H,
    stop: CancellationToken,
) -> Result<WorkerReport> {
    Ok(match partitions {
        None if args.lease_time.is_some() || args.lease_renew.is_some() => {
            anyhow::bail!(
                "--lease-time and --lease-renew need a partitioned stream (--partitions N above 1, or partitions in the topology file): a plain stream has no partitions to lease"
            )
        }
        None => {
            Worker::new(client, &args.stream, &args.group, options)
                .run(handler, stop)
                .await?
        }
        Some(p) => {
            let worker = PartitionedWorker::new(client, p, &args.group, options);
            let worker = match args.member {
                Some((i, n)) => worker.member(i, n),
                None => worker.leased(settings::lease_options(args, file.group)),
            };
            worker.run(handler, stop).await?
        }
    })
}

/// The logical stream a partitioned worker reads.
pub struct Logical {
    pub stream: String,
    /// Partition key to partition index.
    index: HashMap<String, usize>,
}

impl Logical {
    pub fn new(stream: &str, partitions: Option<&Partitions>) -> Option<Logical> {
        partitions.map(|p| Logical {
            stream: stream.to_owned(),
            index: p
                .keys()
                .iter()
                .enumerate()
                .map(|(i, k)| (k.clone(), i))
                .collect(),
        })
    }

    /// The logical stream's name and the partition index of an entry.
    pub fn of(&self, entry: &Entry) -> Option<(&str, usize)> {
        Some((self.stream.as_str(), *self.index.get(&*entry.stream)?))
    }
}

/// The JSON line an entry is given as (as `consume` prints it), with a
/// newline: for a partitioned stream with the logical stream's name and the
/// partition's index; `deliveries`, when given, as a field of that name.
pub fn input_line(
    entry: &Entry,
    partition: Option<(&str, usize)>,
    deliveries: Option<u32>,
) -> String {
    let mut line = Vec::with_capacity(256 + entry.fields.len() * 64);
    entry
        .write_json(&mut line, partition)
        .expect("writing to a Vec does not fail");
    if let Some(n) = deliveries {
        // After the other keys: the object's last `}` makes room for it.
        line.pop();
        line.extend_from_slice(format!(",\"deliveries\":{n}}}").as_bytes());
    }
    line.push(b'\n');
    String::from_utf8(line).expect("JSON text is UTF-8")
}

/// `--count`: stops the worker once `target` entries are done with
/// (acknowledged or dead-lettered).
pub struct StopAfter {
    target: u64,
    done: AtomicU64,
    stop: CancellationToken,
    /// To tell a last failed attempt (the worker dead-letters it) from one that
    /// will be retried.
    max_deliveries: u32,
}

impl StopAfter {
    pub fn new(count: Option<u64>, stop: &CancellationToken, max_deliveries: u32) -> Option<Self> {
        count.map(|target| StopAfter {
            target,
            done: AtomicU64::new(0),
            stop: stop.clone(),
            max_deliveries,
        })
    }

    /// Counts `outcome` of a delivery made for the `deliveries`-th time.
    pub fn note(&self, outcome: &Outcome, deliveries: u32) {
        let done = match outcome {
            Outcome::Ack | Outcome::DeadLetter { .. } => true,
            // The worker dead-letters a failure at the last allowed delivery.
            Outcome::Retry { .. } => deliveries >= self.max_deliveries,
            _ => false,
        };
        if done && self.done.fetch_add(1, Ordering::Relaxed) + 1 >= self.target {
            // In-flight entries still finish; the worker then flushes the
            // acknowledgements (this one's included) and returns.
            self.stop.cancel();
        }
    }
}

/// `delivered 10, acked 9, retried 1, dead-lettered 0, reclaimed 0`, plus what
/// was left unfinished when the grace ran out, if anything.
pub fn summary(r: &WorkerReport) -> String {
    let mut line = format!(
        "delivered {}, acked {}, retried {}, dead-lettered {}, reclaimed {}",
        r.delivered, r.acked, r.retried, r.dead_lettered, r.reclaimed
    );
    if r.unfinished > 0 {
        line.push_str(&format!(", unfinished {} (left pending)", r.unfinished));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_mentions_unfinished_only_when_some() {
        let mut r = WorkerReport::default();
        assert_eq!(
            summary(&r),
            "delivered 0, acked 0, retried 0, dead-lettered 0, reclaimed 0"
        );
        r.unfinished = 2;
        assert!(summary(&r).ends_with(", unfinished 2 (left pending)"));
    }

    #[test]
    fn count_stops_after_done_entries_only() {
        let stop = CancellationToken::new();
        let s = StopAfter::new(Some(2), &stop, 3).unwrap();
        s.note(&Outcome::retry("again"), 1);
        s.note(&Outcome::Ack, 1);
        assert!(!stop.is_cancelled());
        s.note(&Outcome::retry("last"), 3); // dead-lettered by the worker
        assert!(stop.is_cancelled());
    }
}
