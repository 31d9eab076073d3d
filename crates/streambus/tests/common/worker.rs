//! Starting a [`Worker`] of group `g`, and settings that make retries and
//! reclaims happen in milliseconds.

use std::time::Duration;

use streambus::{Backoff, CancellationToken, Client, Handler, Worker, WorkerOptions, WorkerReport};
use tokio::task::JoinHandle;

/// A running worker, and the token that stops it.
pub type Running = (
    JoinHandle<streambus::Result<WorkerReport>>,
    CancellationToken,
);

/// Fast settings, so retries and reclaims happen in milliseconds.
pub fn fast() -> WorkerOptions {
    WorkerOptions {
        concurrency: 8,
        block: Duration::from_millis(100),
        visibility_timeout: Duration::from_millis(200),
        reclaim_interval: Duration::from_millis(10),
        retry_backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(40)),
        reconnect_backoff: Backoff::new(Duration::from_millis(20), Duration::from_millis(200)),
        shutdown_grace: Duration::from_secs(5),
        ..Default::default()
    }
}

/// A worker of group `g` on `stream`, as consumer `name`, run by a task of
/// its own until the token is cancelled.
pub fn start<H: Handler>(
    client: &Client,
    stream: &str,
    name: &str,
    options: WorkerOptions,
    handler: H,
) -> Running {
    spawn(
        client,
        stream,
        WorkerOptions {
            consumer_name: Some(name.into()),
            ..options
        },
        handler,
    )
}

/// A worker of group `g` on `stream` with exactly `options` (its consumer
/// name included), run by a task of its own until the token is cancelled.
pub fn spawn<H: Handler>(
    client: &Client,
    stream: &str,
    options: WorkerOptions,
    handler: H,
) -> Running {
    let token = CancellationToken::new();
    let worker = Worker::new(client, stream, "g", options);
    (tokio::spawn(worker.run(handler, token.clone())), token)
}
