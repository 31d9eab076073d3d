//! The worker's settings ([`WorkerOptions`]) and what it reports when it stops
//! ([`WorkerReport`]).

use std::time::Duration;

use crate::backoff::Backoff;
use crate::id::StartId;

/// Settings of a [`Worker`](super::Worker). Every knob is documented with its effect in the
/// README's "Tuning" section.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Entries handled at the same time.
    ///
    /// With 1, entries are handled one after another in stream order, and the
    /// worker reads ahead of the handler (one read per batch, not per entry):
    /// it holds at most as many entries as the handler, at its recent pace,
    /// finishes within half of `visibility_timeout`, between 1 and
    /// `batch_size`. A crash leaves the entries read and not handled pending,
    /// to be redelivered.
    pub concurrency: usize,
    /// Most entries fetched by one read (never more than free `concurrency`).
    pub batch_size: usize,
    /// How long one read waits for new entries (XREADGROUP BLOCK).
    pub block: Duration,
    /// Acknowledgements are gathered for up to this long and sent in one XACK.
    pub ack_flush_interval: Duration,
    /// At most this many ids per XACK.
    pub ack_batch_size: usize,
    /// Entries held by another consumer are taken over after this much idle time.
    /// Must exceed the longest handler run, or live consumers lose entries to
    /// others (handled twice, not lost).
    pub visibility_timeout: Duration,
    /// How often pending entries are scanned for reclaim and retry.
    pub reclaim_interval: Duration,
    /// Deliveries after which a failing entry is dead-lettered.
    pub max_deliveries: u32,
    /// Delay before retrying a failed entry, by delivery count.
    pub retry_backoff: Backoff,
    /// Delay between attempts to reach Redis again after an error.
    pub reconnect_backoff: Backoff,
    /// On shutdown, how long in-flight handlers may still run.
    pub shutdown_grace: Duration,
    /// Handle entries with the same envelope `key` one at a time, in order.
    pub ordered_by_key: bool,
    /// Skip envelopes whose `id` this group already handled, remembering ids for
    /// this long (SET NX with a TTL). `None`: no guard.
    pub idempotency_ttl: Option<Duration>,
    /// Where the group starts if this worker creates it.
    pub start: StartId,
    /// Approximate maximum length of the dead-letter stream; `None` keeps all.
    pub dead_letter_maxlen: Option<u64>,
    /// The consumer's name in the group; `None` for
    /// [`default_consumer_name`](crate::default_consumer_name). A worker
    /// restarted under the same name takes its own pending entries back at
    /// once, instead of after the visibility timeout.
    pub consumer_name: Option<String>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            concurrency: 256,
            batch_size: 128,
            block: Duration::from_secs(2),
            ack_flush_interval: Duration::from_millis(2),
            ack_batch_size: 512,
            visibility_timeout: Duration::from_secs(30),
            reclaim_interval: Duration::from_secs(1),
            max_deliveries: 5,
            retry_backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
            // Capped at 2 s so that, with the default connection timeouts, a
            // worker works again within 10 s of the network healing (the
            // README's "Faults" section adds it up).
            reconnect_backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(2)),
            shutdown_grace: Duration::from_secs(30),
            ordered_by_key: false,
            idempotency_ttl: None,
            start: StartId::Beginning,
            dead_letter_maxlen: None,
            consumer_name: None,
        }
    }
}

/// What a worker did, returned when it stops.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Deliveries handed to the handler (first deliveries and redeliveries).
    pub delivered: u64,
    /// Entries acknowledged.
    pub acked: u64,
    /// Handler results that asked for a retry (failures and panics included).
    pub retried: u64,
    /// Of those, panics.
    pub panicked: u64,
    /// Entries claimed from the pending list (other consumers' or own failures).
    pub reclaimed: u64,
    /// Entries moved to the dead-letter stream.
    pub dead_lettered: u64,
    /// Envelopes skipped by the idempotency guard as already handled.
    pub duplicates_skipped: u64,
    /// Envelopes whose id another delivery was handling at that moment (it
    /// held the idempotency lease): left pending, and retried after the retry
    /// backoff instead of being run at the same time.
    pub duplicates_deferred: u64,
    /// Pending entries found deleted from the stream (trimmed) and acknowledged.
    pub gone: u64,
    /// Handlers still running when the shutdown grace ran out (left pending).
    pub unfinished: u64,
    /// Times the group had to be recreated.
    pub groups_recreated: u64,
}

impl WorkerReport {
    /// Adds another report's counts to this one (for workers run side by side).
    pub fn add(&mut self, other: &WorkerReport) {
        self.delivered += other.delivered;
        self.acked += other.acked;
        self.retried += other.retried;
        self.panicked += other.panicked;
        self.reclaimed += other.reclaimed;
        self.dead_lettered += other.dead_lettered;
        self.duplicates_skipped += other.duplicates_skipped;
        self.duplicates_deferred += other.duplicates_deferred;
        self.gone += other.gone;
        self.unfinished += other.unfinished;
        self.groups_recreated += other.groups_recreated;
    }
}
