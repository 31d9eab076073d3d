//! streambus: a reliable event bus on Redis Streams.
//!
//! Publish events to named streams; handle them in consumer groups. **Nothing
//! is lost**: an entry leaves a group only by an acknowledgement after its
//! handler succeeded, or by an atomic move to the group's dead-letter stream.
//! A crash, a panic, a network cut or a Redis restart can cause a redelivery,
//! never a loss (with Redis persistence on). Entries that sat unacknowledged
//! past a visibility timeout are reclaimed and retried with backoff; poison
//! entries are dead-lettered after `max_deliveries`. On request: per-key order
//! and an idempotency guard that runs a duplicate's handler once.
//!
//! ```no_run
//! use streambus::{Client, Delivery, Message, Outcome, Producer, Worker};
//! use streambus::{CancellationToken, ProducerOptions, WorkerOptions};
//!
//! # async fn run() -> streambus::Result<()> {
//! let client = Client::open("redis://127.0.0.1:6379")?;
//!
//! let producer = Producer::new(&client, ProducerOptions::default()).await?;
//! let alert = serde_json::json!({"severity": "high", "host": "web-1"});
//! producer.publish("aurora:alerts", Message::json(&alert)?).await?;
//!
//! let options = WorkerOptions { concurrency: 16, ..Default::default() };
//! let worker = Worker::new(&client, "aurora:alerts", "alert-processor", options);
//! let shutdown = CancellationToken::new(); // cancel it to stop gracefully
//! let report = worker
//!     .run(|d: Delivery| async move {
//!         let alert: serde_json::Value = d.decode()?; // not JSON: dead-lettered
//!         println!("{} {}", d.entry.id, alert["host"]);
//!         Ok::<_, streambus::Error>(Outcome::Ack)
//!     }, shutdown)
//!     .await?;
//! println!("acked {}", report.acked);
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! Every component is built the same way: `X::new(&client, what it works on,
//! XOptions)`, `async` where it connects (and then checks the connection, so
//! a wrong address or password fails there).
//!
//! - [`Client`]: where Redis is (`redis://`, `rediss://` with [`TlsOptions`],
//!   a cluster), and [`Connection`]s that reconnect by themselves.
//! - [`Producer`]: pipelined XADD with trimming ([`Retention`]).
//! - [`Consumer`]: group reads and acknowledgements, by hand.
//! - [`Worker`]: runs a [`Handler`] over a group: concurrency, batched acks,
//!   retries with [`Backoff`], reclaim, dead letters, graceful shutdown. The
//!   handler gets a [`Delivery`] and answers with an [`Outcome`].
//! - [`Message`] is what is published, [`Envelope`] what is decoded
//!   ([`envelope`] holds the wire format); reads return [`Entry`]s with their
//!   raw [`Fields`] and an [`EntryId`].
//! - [`Error`] with an [`ErrorKind`] to match on.
//! - [`read`]: reading without a group (XRANGE, XREAD), for tails and tools.
//! - [`partition`]: partitioned streams for Redis Cluster.
//! - [`admin`]: monitor, cleanup, scaler, dead letters, groups, preflight.
//! - [`metrics`]: the metric names, recorded through the `metrics` facade.
//! - [`config`]: parsers for durations and sizes; [`keys`]: the key names
//!   streambus builds.
//! - [`redis`]: the redis-rs crate streambus is built on, re-exported for raw
//!   commands: a [`Connection`] implements its `aio::ConnectionLike`.

#![warn(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::panic, clippy::unwrap_used))]

pub mod admin;
mod backoff;
mod claim;
pub mod config;
mod connection;
mod consumer;
mod entry;
pub mod envelope;
mod error;
mod handler;
mod id;
pub mod keys;
pub mod metrics;
pub mod partition;
mod producer;
pub mod read;
mod reply;
mod worker;

/// The README's Rust examples, compiled as doctests so that they match the code.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeExamples;

/// The redis-rs crate that streambus is built on, re-exported on purpose: a
/// [`Connection`] implements [`redis::aio::ConnectionLike`], so that raw
/// commands (`redis::cmd("XLEN").arg(key).query_async(&mut conn)`) go through
/// the same reconnecting connection, with the same redis-rs version.
pub use redis;

pub use backoff::Backoff;
#[doc(hidden)]
pub use backoff::Jitter;
pub use connection::{Client, ConnectOptions, Connection, TlsOptions};
pub use consumer::{default_consumer_name, Consumer, ConsumerOptions};
pub use entry::{Entry, Fields};
pub use envelope::{Envelope, Message};
pub use error::{Error, ErrorKind, Result};
pub use handler::{Delivery, Handler, Outcome};
pub use id::{EntryId, StartId};
pub use producer::{Producer, ProducerOptions, Retention};
/// The cancellation token that stops a [`Worker`] (re-exported from `tokio-util`).
pub use tokio_util::sync::CancellationToken;
pub use worker::{Worker, WorkerOptions, WorkerReport};
