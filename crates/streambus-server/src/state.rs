//! [`AppState`]: what every route shares: configuration, Redis connections, the
//! producer, the relay, the scaler's memory, the metrics handle, and the owner
//! of every task the service starts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use streambus::monitor::StreamSnapshot;
use streambus::partition::{PartitionedProducer, Partitions};
use streambus::{Advice, Advisor, Client, Connection, Producer, ProducerOptions, Sample};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::health::RedisHealth;
use crate::relay::Relay;

/// Most (stream, group) pairs whose scaler history is kept; beyond it the pair
/// seen least recently is forgotten. Each entry is a few hundred bytes.
const MAX_SCALERS: usize = 1024;

/// Shortest interval the advisor is fed: rates over shorter intervals are noise,
/// and several dashboards polling at once must not shrink the interval.
const MIN_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// The state shared by all routes. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: ServerConfig,
    /// Where Redis is; relay readers open their own blocking connections from it.
    client: Client,
    /// The shared multiplexed connection for XINFO, XRANGE, PING.
    conn: Connection,
    /// Publishes for `POST /api/streams/{s}/messages`, pipelining concurrent
    /// requests on its own connection.
    producer: Producer,
    /// Per partitioned stream (more than one partition), its partitions and
    /// the producer that routes to them. One per stream for the whole service,
    /// so that messages without a key take turns over the partitions.
    partitioned: HashMap<String, PartitionedProducer>,
    relay: Relay,
    /// Scaler memory per (stream, group): the advisor's history and the
    /// previous sample it needs for rates.
    scalers: Mutex<HashMap<(String, String), ScaleState>>,
    metrics: PrometheusHandle,
    /// One permit per WebSocket client ([`ServerConfig::max_ws_clients`]).
    ws_slots: Arc<Semaphore>,
    /// Cancelled when the service shuts down: relay readers and WebSocket
    /// clients stop and close.
    shutdown: CancellationToken,
    /// Every WebSocket client task, so that shutdown can wait for their close
    /// frames to go out.
    clients: TaskTracker,
    /// Whether Redis is reachable, as the health watcher last saw it.
    health: RedisHealth,
    /// The health watcher; aborted when the state is dropped.
    _watcher: AbortOnDropHandle<()>,
}

/// The scaler's memory for one group.
struct ScaleState {
    advisor: Advisor,
    prev: Sample,
    last: Option<Advice>,
    used: Instant,
}

/// What the scaler said about one group, for `/scale`.
pub(crate) struct ScaleView {
    /// The advisor's advice; `None` until it has two samples.
    pub advice: Option<Advice>,
}

impl AppState {
    /// Connects to Redis (failing with a clear error when it cannot), installs
    /// the Prometheus recorder (once per process) and starts a relay reader for
    /// each configured stream.
    ///
    /// The configuration is not validated here: call
    /// [`ServerConfig::validate`] first (the CLI does, before binding).
    pub async fn new(config: ServerConfig, client: Client) -> streambus::Result<AppState> {
        let metrics = crate::metrics::install();
        let conn = client.connect().await?;
        streambus::preflight::warn_about(&mut conn.clone()).await;
        let producer = Producer::new(
            client.connect().await?,
            ProducerOptions {
                // The envelope adds an id and a timestamp to the body.
                max_message_bytes: config.max_body_bytes + 256,
                // An HTTP request waits this long for Redis, then gets 503.
                publish_timeout: config.publish_timeout,
                ..Default::default()
            },
        );
        let mut partitioned = HashMap::new();
        for (stream, &n) in &config.partitions {
            if n > 1 {
                let p = Partitions::new(stream, n)?;
                partitioned.insert(
                    stream.clone(),
                    PartitionedProducer::new(producer.clone(), p),
                );
            }
        }
        let shutdown = CancellationToken::new();
        let relay = Relay::new(&config, client.clone(), conn.clone(), shutdown.clone());
        for s in &config.streams {
            match partitioned.get(s) {
                Some(p) => relay.start_pinned_partitions(p.partitions()).await?,
                None => relay.start_pinned(s).await?,
            }
        }
        let ws_slots = Arc::new(Semaphore::new(config.max_ws_clients));
        let health = RedisHealth::default();
        // Owned by the state (aborted on drop); also stops at shutdown.
        let watcher = AbortOnDropHandle::new(tokio::spawn(health.clone().watch(
            conn.clone(),
            client.options().clone(),
            shutdown.clone(),
        )));
        Ok(AppState {
            inner: Arc::new(Inner {
                config,
                client,
                conn,
                producer,
                partitioned,
                relay,
                scalers: Mutex::new(HashMap::new()),
                metrics,
                ws_slots,
                shutdown,
                clients: TaskTracker::new(),
                health,
                _watcher: watcher,
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The Redis client.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// How many streams the relay reads right now (configured streams, plus
    /// streams with a WebSocket client).
    pub fn relay_streams(&self) -> usize {
        self.inner.relay.streams()
    }

    /// Begins shutdown: WebSocket clients get a close frame and relay readers
    /// stop. [`serve`](crate::serve) calls it when its shutdown future completes.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// A clone of the shared connection.
    pub(crate) fn conn(&self) -> Connection {
        self.inner.conn.clone()
    }

    pub(crate) fn producer(&self) -> &Producer {
        &self.inner.producer
    }

    /// The partitions of `stream`, when it is a partitioned stream.
    pub(crate) fn partitions(&self, stream: &str) -> Option<&Partitions> {
        self.inner.partitioned.get(stream).map(|p| p.partitions())
    }

    /// The producer of a partitioned stream.
    pub(crate) fn partitioned_producer(&self, stream: &str) -> Option<&PartitionedProducer> {
        self.inner.partitioned.get(stream)
    }

    /// The logical stream a key is a partition of, if any.
    pub(crate) fn logical_stream_of(&self, key: &str) -> Option<&str> {
        self.inner
            .partitioned
            .iter()
            .find(|(_, p)| p.partitions().keys().iter().any(|k| k == key))
            .map(|(s, _)| s.as_str())
    }

    pub(crate) fn relay(&self) -> &Relay {
        &self.inner.relay
    }

    pub(crate) fn metrics_handle(&self) -> &PrometheusHandle {
        &self.inner.metrics
    }

    pub(crate) fn ws_slots(&self) -> &Arc<Semaphore> {
        &self.inner.ws_slots
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    pub(crate) fn clients(&self) -> &TaskTracker {
        &self.inner.clients
    }

    pub(crate) fn health(&self) -> &RedisHealth {
        &self.inner.health
    }

    /// Checks a stream name from a request: 400 when it is not a valid name, 404
    /// when the service is limited to configured streams and this is not one.
    pub(crate) fn check_stream(&self, stream: &str) -> Result<(), ApiError> {
        streambus::keys::validate_name("stream", stream)
            .map_err(|e| ApiError::bad_request(e.message()))?;
        let configured = &self.inner.config.streams;
        if !configured.is_empty() && !configured.iter().any(|s| s == stream) {
            return Err(ApiError::not_found(format!(
                "stream {stream:?} is not served by this service"
            )));
        }
        Ok(())
    }

    /// Feeds the advisor of `group` with a fresh snapshot (at most once per
    /// [`MIN_SAMPLE_INTERVAL`]) and returns its latest advice. Also sets the
    /// target-consumers gauge.
    pub(crate) fn scale(&self, snapshot: &StreamSnapshot, group: &str) -> ScaleView {
        let now = Instant::now();
        let Some(cur) = Sample::from_snapshot(snapshot, group, now) else {
            return ScaleView { advice: None };
        };
        let key = (snapshot.stream.clone(), group.to_owned());
        let mut scalers = self
            .inner
            .scalers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !scalers.contains_key(&key) && scalers.len() >= MAX_SCALERS {
            if let Some(oldest) = scalers
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone())
            {
                scalers.remove(&oldest);
            }
        }
        let state = scalers.entry(key).or_insert_with(|| ScaleState {
            advisor: Advisor::new(self.inner.config.advisor.clone()),
            prev: cur,
            last: None,
            used: now,
        });
        state.used = now;
        if now.duration_since(state.prev.at) >= MIN_SAMPLE_INTERVAL {
            let advice = state.advisor.advise(&state.prev, &cur, now);
            advice.record_metrics(&snapshot.stream, group);
            state.prev = cur;
            state.last = Some(advice);
        }
        ScaleView {
            advice: state.last.clone(),
        }
    }
}
