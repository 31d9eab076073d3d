//! A worker and a steady publisher through a fault, and the figures of the
//! recovery: every envelope handled (lost = 0), nothing pending, and the time
//! from the end of the fault ("heal") to the first entry handled after it and
//! to the last one.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streambus::{
    Backoff, CancellationToken, Client, Delivery, ErrorKind, Message, Producer, ProducerOptions,
    WorkerOptions, WorkerReport,
};
use streambus_testkit::{unique_prefix, FaultProxy};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::proxied::{defaults, fast, recovery, settle};
use super::worker::Running;

/// Every delivery handled: when, and the envelope id.
pub type Handled = Arc<Mutex<Vec<(Instant, String)>>>;

/// A worker of group `g` on `stream` with exactly `options`, that records
/// every delivery it handles.
pub fn recording_worker(
    client: &Client,
    stream: &str,
    options: WorkerOptions,
) -> (Handled, Running) {
    let handled = Handled::default();
    let seen = handled.clone();
    let running = super::worker::spawn(client, stream, options, move |d: Delivery| {
        let seen = seen.clone();
        async move {
            let env = d.envelope().unwrap().unwrap();
            seen.lock().unwrap().push((Instant::now(), env.id));
        }
    });
    (handled, running)
}

/// Waits (`deadline` at most) until `handled` holds at least `n` deliveries.
pub async fn wait_handled(handled: &Handled, n: usize, deadline: Duration) {
    super::wait_for(deadline, || async { handled.lock().unwrap().len() >= n }).await
}

/// Waits (`deadline` at most) until every envelope id of `ids` was handled.
pub async fn wait_all_handled(handled: &Handled, ids: &HashSet<String>, deadline: Duration) {
    super::wait_for(deadline, || async {
        let handled = handled.lock().unwrap();
        let seen: HashSet<&String> = handled.iter().map(|(_, id)| id).collect();
        ids.iter().all(|id| seen.contains(id))
    })
    .await
}

/// Worker settings of the fault runs: short, or the defaults (with room for
/// the many redeliveries a fault may cause).
fn worker_options() -> WorkerOptions {
    let options = if defaults() {
        WorkerOptions {
            concurrency: 16,
            max_deliveries: 1000,
            visibility_timeout: Duration::from_secs(10),
            ..Default::default()
        }
    } else {
        WorkerOptions {
            concurrency: 16,
            block: Duration::from_millis(200),
            visibility_timeout: Duration::from_secs(2),
            reclaim_interval: Duration::from_millis(200),
            max_deliveries: 1000,
            retry_backoff: Backoff::new(Duration::from_millis(20), Duration::from_millis(200)),
            reconnect_backoff: Backoff::new(Duration::from_millis(20), Duration::from_millis(300)),
            shutdown_grace: Duration::from_secs(5),
            ..Default::default()
        }
    };
    WorkerOptions {
        consumer_name: Some("w1".into()),
        ..options
    }
}

pub struct Run {
    pub stream: String,
    pub group: String,
    /// Envelope ids published (and confirmed written).
    pub published: Arc<Mutex<Vec<String>>>,
    pub handled: Handled,
    stop: CancellationToken,
    worker: JoinHandle<streambus::Result<WorkerReport>>,
    publisher: Option<JoinHandle<()>>,
}

impl Run {
    /// A worker through `proxy`, and a publisher of `total` envelopes at about
    /// `per_sec`, straight to `redis_url`.
    pub async fn start(
        label: &str,
        proxy: &FaultProxy,
        redis_url: &str,
        total: usize,
        per_sec: u64,
    ) -> Run {
        let stream = format!("{}:s", unique_prefix(label));
        let client = Client::open_with(&proxy.url(), fast()).unwrap();
        let (handled, (worker, stop)) = recording_worker(&client, &stream, worker_options());
        // The group exists before the first publish (the worker makes it).
        super::wait_for_group(&super::connect(redis_url).await, &stream).await;
        let mut run = Run {
            stream,
            group: "g".to_string(),
            published: Arc::default(),
            handled,
            stop,
            worker,
            publisher: None,
        };
        run.publish(redis_url, total, per_sec);
        run
    }

    /// Starts the publisher of `total` envelopes at about `per_sec`.
    fn publish(&mut self, redis_url: &str, total: usize, per_sec: u64) {
        self.publisher = Some(tokio::spawn(publish_steadily(
            Client::open_with(redis_url, fast()).unwrap(),
            self.stream.clone(),
            total,
            per_sec,
            self.published.clone(),
        )));
    }

    /// Once the publisher is done: forgets what was published and handled, and
    /// publishes `total` envelopes anew at about `per_sec`, to the same worker.
    pub async fn publish_anew(&mut self, redis_url: &str, total: usize, per_sec: u64) {
        self.publisher.take().unwrap().await.unwrap();
        self.published.lock().unwrap().clear();
        self.handled.lock().unwrap().clear();
        self.publish(redis_url, total, per_sec);
    }

    pub fn handled_count(&self) -> usize {
        self.handled.lock().unwrap().len()
    }

    /// Waits until at least `n` entries were handled.
    pub async fn handled_at_least(&self, n: usize) {
        wait_handled(&self.handled, n, Duration::from_secs(10)).await
    }

    /// Waits for the publisher, then until every published id was handled and
    /// nothing is pending; stops the worker. Prints the figures of the fault
    /// `what` (the first and last entry handled after `healed`), and holds the
    /// first to [`recovery()`].
    pub async fn finish(mut self, redis_url: &str, healed: Instant, what: &str) {
        self.publisher.take().unwrap().await.unwrap();
        let published: HashSet<String> = self.published.lock().unwrap().iter().cloned().collect();
        wait_all_handled(&self.handled, &published, settle()).await;
        let mut conn = super::connect(redis_url).await;
        let (stream, group) = (&self.stream, &self.group);
        super::wait_for(settle(), || {
            let mut conn = conn.clone();
            async move { super::pending_count(&mut conn, stream, group).await == 0 }
        })
        .await;
        self.stop.cancel();
        let stopped = tokio::time::timeout(settle(), self.worker)
            .await
            .expect("the worker stops")
            .unwrap()
            .unwrap();
        conn = super::connect(redis_url).await;
        assert_eq!(
            super::pending_count(&mut conn, &self.stream, &self.group).await,
            0
        );
        let handled = self.handled.lock().unwrap();
        let seen: HashSet<&String> = handled.iter().map(|(_, id)| id).collect();
        let lost = published.iter().filter(|id| !seen.contains(id)).count();
        assert_eq!(lost, 0, "lost entries");
        let after: Vec<Instant> = handled
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| *t >= healed)
            .collect();
        let first = after.iter().min().map_or(Duration::ZERO, |t| *t - healed);
        let last = after.iter().max().map_or(Duration::ZERO, |t| *t - healed);
        eprintln!(
            "published {}, deliveries {}, duplicates {}, reconnect report {stopped:?}",
            published.len(),
            handled.len(),
            handled.len() - seen.len()
        );
        report(what, first, last);
    }
}

/// Publishes `total` envelopes at about `per_sec`, recording the ids that were
/// written. A publish that fails `Unconfirmed` is published again with the
/// same envelope (so a consumer may see it twice, never lose it).
pub async fn publish_steadily(
    client: Client,
    stream: String,
    total: usize,
    per_sec: u64,
    published: Arc<Mutex<Vec<String>>>,
) {
    let producer = Producer::new(&client, ProducerOptions::default())
        .await
        .unwrap();
    let every = Duration::from_micros(1_000_000 / per_sec.max(1));
    let mut tick = tokio::time::interval(every);
    for i in 0..total {
        tick.tick().await;
        let mut message = Message::json(&serde_json::json!({ "n": i })).unwrap();
        let id = message.envelope_id().unwrap().to_owned();
        loop {
            match producer.publish(&stream, message).await {
                Ok(_) => break,
                Err(mut e)
                    if e.kind() == ErrorKind::Unconfirmed || e.kind() == ErrorKind::Unavailable =>
                {
                    message = e.take_unpublished().expect("the message comes back");
                }
                Err(e) => panic!("publish failed: {e}"),
            }
        }
        published.lock().unwrap().push(id);
    }
}

/// Prints the figures of a run, and holds the first entry handled after the
/// heal to [`recovery()`].
fn report(what: &str, first: Duration, last: Duration) {
    eprintln!("{what}: heal -> first entry handled {first:?}, -> all handled {last:?}");
    assert!(
        first <= recovery(),
        "{what}: first entry after heal took {first:?} (bound {:?})",
        recovery()
    );
}
