//! The no-op worker of every consume figure (in the bench process, in the
//! worker child, on one node and on the cluster): a handler that acknowledges
//! each delivery and says when the n-th one was handled, and the wait after it
//! until the group has nothing pending (handled is not acknowledged: the
//! worker sends its XACKs one flush interval later).
//!
//! A consume figure runs from the worker's start to the moment XPENDING of its
//! group says 0 on every stream it reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use streambus::{
    CancellationToken, Client, Connection, Delivery, Handler, Outcome, Worker, WorkerOptions,
    WorkerReport,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::{Error, Result};

/// How long a consume run may take before the bench gives up on it.
pub(crate) const LIMIT: Duration = Duration::from_secs(600);

/// A handler that acknowledges every delivery, and the signal it gives when
/// the `messages`-th one is handled.
pub(crate) fn ack_all(messages: u64) -> (impl Handler, Arc<Notify>) {
    let handled = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let handler = {
        let done = done.clone();
        move |_d: Delivery| {
            if handled.fetch_add(1, Ordering::Relaxed) + 1 == messages {
                done.notify_one();
            }
            std::future::ready(Outcome::Ack)
        }
    };
    (handler, done)
}

/// Waits for the signal of [`ack_all`], ten minutes at most.
pub(crate) async fn all_handled(done: &Notify) -> Result<()> {
    tokio::time::timeout(LIMIT, done.notified())
        .await
        .map_err(|_| Error::new("the worker did not finish within 10 minutes"))
}

/// Waits until `group` has nothing pending on any of `streams` (polled every
/// millisecond), then stops the worker of `task` and returns the time since
/// `started` (taken before the stop) with the worker's report.
pub(crate) async fn stop_when_acked(
    conn: &mut Connection,
    streams: &[impl AsRef<str>],
    group: &str,
    started: Instant,
    stop: &CancellationToken,
    task: JoinHandle<streambus::Result<WorkerReport>>,
) -> Result<(Duration, WorkerReport)> {
    loop {
        let mut pending = 0;
        for stream in streams {
            let (n, _, _, _): (u64, redis::Value, redis::Value, redis::Value) =
                redis::cmd("XPENDING")
                    .arg(stream.as_ref())
                    .arg(group)
                    .query_async(conn)
                    .await?;
            pending += n;
        }
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    stop.cancel();
    let report = task
        .await
        .map_err(|e| Error::new(format!("worker task: {e}")))??;
    Ok((elapsed, report))
}

/// Runs a worker with the no-op handler on `stream` until `messages` entries
/// were handled and acknowledged. The bench process runs it for the
/// in-process figures, the worker child for its own.
pub(crate) async fn consume(
    client: &Client,
    stream: &str,
    group: &str,
    options: WorkerOptions,
    messages: u64,
) -> Result<(Duration, WorkerReport)> {
    let (handler, done) = ack_all(messages);
    let stop = CancellationToken::new();
    let worker = Worker::new(
        client,
        stream,
        group,
        WorkerOptions {
            consumer_name: Some("bench".into()),
            ..options
        },
    );
    let started = Instant::now();
    let task = tokio::spawn(worker.run(handler, stop.clone()));
    // Stops the worker even if this future is dropped.
    let _stop_on_exit = stop.clone().drop_guard();
    all_handled(&done).await?;
    let mut conn = client.connect().await?;
    stop_when_acked(&mut conn, &[stream], group, started, &stop, task).await
}
