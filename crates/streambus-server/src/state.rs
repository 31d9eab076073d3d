//! [`AppState`]: what every route shares: configuration, Redis connections, the
//! producer, the catalog of streams, the relay, the scaler's sampler, the
//! metrics handle, and the owner of every task the service starts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use streambus::admin::monitor::MonitorOptions;
use streambus::admin::scaler::Advice;
use streambus::partition::{PartitionedProducer, Partitions};
use streambus::{Client, Connection, Producer, ProducerOptions};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::catalog::Catalog;
use crate::config::ServerConfig;
use crate::health::RedisHealth;
use crate::relay::Relay;
use crate::sampler::{self, Sampler};

/// The text the relay fans out: what a WebSocket text message carries, so
/// that each entry is encoded once and cloned (a reference count) per client.
pub(crate) type WsText = Utf8Bytes;

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
    /// Per partitioned stream (more than one partition), the producer that
    /// routes to its partitions. One per stream for the whole service, so
    /// that messages without a key take turns over the partitions.
    partitioned: HashMap<String, PartitionedProducer>,
    /// Which streams are shown; shared with the sampler.
    catalog: Arc<Catalog>,
    relay: Relay<WsText>,
    /// The advisors, fed by their own task on a fixed interval.
    sampler: Sampler,
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
    /// The scaler's sampler; aborted when the state is dropped.
    _sampler: AbortOnDropHandle<()>,
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
        streambus::admin::preflight::warn_about(&mut conn.clone()).await;
        let producer = Producer::new(
            &client,
            ProducerOptions {
                // The envelope adds an id and a timestamp to the body.
                max_message_bytes: config.max_body_bytes + 256,
                // An HTTP request waits this long for Redis, then gets 503.
                publish_timeout: config.publish_timeout,
                ..Default::default()
            },
        )
        .await?;
        let mut partitioned = HashMap::new();
        for (stream, &n) in &config.partitions {
            if n > 1 {
                let p = Partitions::new(stream, n)?;
                partitioned.insert(stream.clone(), producer.partitioned(p));
            }
        }
        let catalog = Arc::new(Catalog::new(
            &config,
            partitioned
                .iter()
                .map(|(s, p)| (s.clone(), p.partitions().clone()))
                .collect(),
            client.is_cluster(),
        ));
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
        let sampler = Sampler::new(config.advisor.clone(), config.scale_interval);
        let sampling = {
            let (catalog, conn) = (catalog.clone(), conn.clone());
            // Delivery counts (an XPENDING per group) are not needed for rates.
            let options = MonitorOptions {
                delivery_sample: 0,
                ..config.monitor.clone()
            };
            let take = move |asked: Vec<String>| {
                let (catalog, conn, options) = (catalog.clone(), conn.clone(), options.clone());
                async move { sampler::take(&catalog, conn, &options, asked).await }
            };
            // Owned by the state (aborted on drop); also stops at shutdown.
            AbortOnDropHandle::new(tokio::spawn(sampler.clone().run(take, shutdown.clone())))
        };
        Ok(AppState {
            inner: Arc::new(Inner {
                config,
                client,
                conn,
                producer,
                partitioned,
                catalog,
                relay,
                sampler,
                metrics,
                ws_slots,
                shutdown,
                clients: TaskTracker::new(),
                health,
                _watcher: watcher,
                _sampler: sampling,
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
        self.inner.catalog.partitions(stream)
    }

    /// Which streams the service shows.
    pub(crate) fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// The producer of a partitioned stream.
    pub(crate) fn partitioned_producer(&self, stream: &str) -> Option<&PartitionedProducer> {
        self.inner.partitioned.get(stream)
    }

    pub(crate) fn relay(&self) -> &Relay<WsText> {
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

    pub(crate) fn sampler(&self) -> &Sampler {
        &self.inner.sampler
    }

    /// How many samples the scaler's advisor of `group` on `stream` has had
    /// (for tests and diagnostics): one every
    /// [`ServerConfig::scale_interval`], however often clients ask.
    pub fn scale_samples(&self, stream: &str, group: &str) -> u64 {
        self.inner.sampler.samples(stream, group)
    }

    /// The scaler's latest advice for `group` on `stream`.
    pub(crate) fn advice(&self, stream: &str, group: &str) -> Option<Advice> {
        self.inner.sampler.advice(stream, group)
    }

    /// The interval of the scaler's samples.
    pub(crate) fn scale_interval(&self) -> Duration {
        self.inner.sampler.interval()
    }
}
