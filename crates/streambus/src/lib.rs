//! streambus: a reliable event bus on Redis Streams.
//!
//! Publish events to named streams; read them through consumer groups; nothing is
//! lost: an entry leaves a group only when it is acknowledged.
//!
//! ```no_run
//! use streambus::{Client, Consumer, ConsumerOptions, Message, Producer, ProducerOptions};
//!
//! # async fn run() -> streambus::Result<()> {
//! let client = Client::open("redis://127.0.0.1:6379")?;
//! let producer = Producer::new(client.connect().await?, ProducerOptions::default());
//! producer
//!     .publish("aurora:alerts", Message::json(&serde_json::json!({"severity": "high"}))?)
//!     .await?;
//!
//! let mut consumer = Consumer::new(
//!     &client,
//!     "aurora:alerts",
//!     "alert-processor",
//!     "worker-1",
//!     ConsumerOptions::default(),
//! )
//! .await?;
//! let batch = consumer.next_batch().await?;
//! for entry in &batch {
//!     if let Some(envelope) = entry.envelope()? {
//!         println!("{} {}", envelope.id, envelope.data);
//!     }
//! }
//! let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
//! consumer.ack(&ids).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - [`connection`]: [`Client`] (where Redis is: one server or a cluster) and
//!   [`Connection`]s by role (shared, or one per blocking reader).
//! - [`envelope`]: the wire format ([`Message`] to publish, [`Envelope`] decoded).
//! - [`entry`]: what reads return ([`Entry`] with its raw [`Fields`]).
//! - [`id`]: typed stream ids ([`EntryId`], [`StartId`]).
//! - [`producer`]: [`Producer`], pipelined XADD with trimming ([`Retention`]).
//! - [`read`]: reading without a group (XRANGE, XREVRANGE, XREAD).
//! - [`consumer`]: [`Consumer`], group reads and acknowledgements.
//! - [`worker`]: [`Worker`], the handler runtime: concurrency, batched acks,
//!   retries with backoff, reclaim, dead letters, graceful shutdown.
//! - [`handler`]: [`Handler`], [`Delivery`] and the handler's [`Outcome`].
//! - [`claim`]: the reclaim decisions (pure) and XPENDING/XCLAIM, over the
//!   one [`PendingEntry`](claim::PendingEntry).
//! - [`dead_letter`]: the dead-letter stream: atomic move, list, replay, purge.
//! - [`backoff`]: exponential [`Backoff`] with jitter (pure).
//! - [`monitor`]: stream/group/consumer snapshots ([`StreamSnapshot`]), the
//!   consumer [`Status`] (pure), and the safe [`cleanup`](monitor::cleanup) of
//!   dead consumers; one file each under `monitor/`.
//! - [`scaler`]: the reference IN/OUT/NO_SCALE rule
//!   ([`rate_and_suggestion`](scaler::rate_and_suggestion)), the throughput
//!   [`Advisor`] (both pure) and the [`Sample`] they read;
//!   one file each under `scaler/`.
//! - [`group`]: create, destroy and list consumer groups.
//! - [`keys`]: every key name streambus builds (dead letters, hash tags).
//! - [`metrics`]: metric names (Prometheus-style) recorded through the `metrics` facade.
//! - [`partition`]: partitioned streams for Redis Cluster (routing, workers, totals).
//! - [`preflight`]: warnings about server settings that weaken the guarantees.
//! - [`config`]: parsers for durations and sizes.
//! - [`error`]: the one [`Error`] type, with an [`ErrorKind`].
//!
//! Internal: `reply` parses every Redis reply (`XREAD`, `XPENDING`,
//! `XINFO STREAM | GROUPS | CONSUMERS`) in one place, one type per reply, and
//! treats a malformed reply as an error, never as a default.

#![warn(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::panic, clippy::unwrap_used))]

pub mod backoff;
pub mod claim;
pub mod config;
pub mod connection;
pub mod consumer;
pub mod dead_letter;
pub mod entry;
pub mod envelope;
pub mod error;
pub mod group;
pub mod handler;
pub mod id;
pub mod keys;
pub mod metrics;
pub mod monitor;
pub mod partition;
pub mod preflight;
pub mod producer;
pub mod read;
mod reply;
pub mod scaler;
pub mod worker;

pub use backoff::Backoff;
pub use connection::{Client, ConnectOptions, Connection};
pub use consumer::{Consumer, ConsumerOptions};
pub use entry::{Entry, Fields};
pub use envelope::{Envelope, Message};
pub use error::{Error, ErrorKind, Result};
pub use handler::{Delivery, Handler, Outcome};
pub use id::{EntryId, StartId};
pub use monitor::{CleanupOptions, CleanupReport, Monitor, MonitorOptions, Status, StreamSnapshot};
pub use producer::{Producer, ProducerOptions, Retention};
pub use scaler::{Advice, Advisor, AdvisorConfig, Sample, Suggestion};
/// The cancellation token that stops a [`Worker`] (re-exported from `tokio-util`).
pub use tokio_util::sync::CancellationToken;
pub use worker::{Worker, WorkerOptions, WorkerReport};
