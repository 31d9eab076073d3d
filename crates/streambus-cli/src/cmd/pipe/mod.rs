//! `streambus consume --pipe CMD`: a [`streambus::Worker`] whose handler is a
//! long-running command in any language, started once (or `--concurrency`
//! copies), instead of a process per entry.
//!
//! The command reads one JSON line per entry on its stdin (the line `consume`
//! prints, with `deliveries`: 1 the first time) and answers one line per entry on its stdout, naming the entry id:
//! `ack ID`, `retry ID [DELAY] [REASON]` or `dead ID REASON` (see
//! [`protocol`]). Answers may come in any order. At most `--in-flight` entries
//! are handed out and not yet answered, over all copies.
//!
//! Guarantee: at-least-once, the worker's. An entry is acknowledged only after
//! the command answered `ack` for it. A copy that exits, or writes a line that
//! is not an answer, is restarted, and the entries it held are retried (with
//! the backoff, up to `--max-deliveries`); entries that came meanwhile wait
//! for the new copy. On Ctrl-C or SIGTERM no new entries are handed out, the
//! copies get until `--grace` to answer what they hold, then their input is
//! closed and they exit; what is unanswered stays pending.

mod copy;
mod protocol;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Result;
use streambus::default_consumer_name;
use streambus::partition::Partitions;
use streambus::{Client, Delivery, Handler, Outcome, WorkerOptions};
use tokio::sync::{mpsc, oneshot};

use super::runner::{self, Logical, StopAfter};
use super::settings::FileGroup;
use crate::cli::ConsumeArgs;
use crate::shutdown;

/// Copies of the command, by default.
const COPIES: usize = 1;
/// Entries handed out and not yet answered, over all copies, by default:
/// enough to keep a command that answers in microseconds busy, while a
/// crash retries no more than this.
pub const IN_FLIGHT: usize = 256;
/// Entries per read, by default.
const BATCH_SIZE: usize = 128;

pub async fn run(
    client: &Client,
    args: ConsumeArgs,
    command: String,
    file: FileGroup<'_>,
    partitions: Option<Partitions>,
) -> Result<()> {
    let copies = args.concurrency.unwrap_or(COPIES);
    let in_flight = args.in_flight.unwrap_or(IN_FLIGHT);
    if copies == 0 || in_flight == 0 {
        anyhow::bail!("--concurrency and --in-flight must be at least 1");
    }
    let mut options = runner::options(&args, file, in_flight, BATCH_SIZE.min(in_flight));
    // `--concurrency` counts copies here; the worker's concurrency is the
    // number of entries in flight.
    options.concurrency = in_flight;
    if args.count == Some(0) {
        return Ok(());
    }
    let consumer = args.consumer.clone().unwrap_or_else(default_consumer_name);
    let (stop, _signals) = shutdown::on_signal();
    let spec = Arc::new(copy::Spec {
        command,
        env: vec![
            ("STREAMBUS_STREAM", args.stream.clone()),
            ("STREAMBUS_GROUP", args.group.clone()),
            ("STREAMBUS_CONSUMER", consumer.clone()),
        ],
    });
    let mut senders = Vec::with_capacity(copies);
    let mut supervisors = Vec::with_capacity(copies);
    for i in 0..copies {
        let (tx, rx) = mpsc::channel(in_flight);
        senders.push(tx);
        supervisors.push(tokio::spawn(copy::supervise(
            i,
            spec.clone(),
            rx,
            stop.clone(),
        )));
    }
    let handler = Pipe {
        copies: senders,
        next: AtomicUsize::new(0),
        logical: Logical::new(&args.stream, partitions.as_ref()),
        stop_after: StopAfter::new(args.count, &stop, options.max_deliveries),
    };
    tracing::info!(stream = %args.stream, group = %args.group, %consumer, copies, in_flight, "piping entries to a command");
    let options = WorkerOptions {
        consumer_name: Some(consumer),
        ..options
    };
    let report = runner::run_worker(client, &args, file, partitions, options, handler, stop).await;
    // The handler is gone with the worker: the copies' input ends, and each
    // exits (or is killed after copy::EXIT_GRACE).
    for s in supervisors {
        let _ = s.await;
    }
    eprintln!("consumed: {}", runner::summary(&report?));
    Ok(())
}

/// The handler: hands the entry's line to a copy and waits for its answer.
struct Pipe {
    copies: Vec<mpsc::Sender<copy::Request>>,
    /// Round robin over the copies.
    next: AtomicUsize,
    logical: Option<Logical>,
    stop_after: Option<StopAfter>,
}

impl Handler for Pipe {
    async fn handle(&self, d: Delivery) -> Outcome {
        let partition = self.logical.as_ref().and_then(|l| l.of(&d.entry));
        let line = runner::input_line(&d.entry, partition, Some(d.deliveries));
        let (answer, answered) = oneshot::channel();
        let copy = &self.copies[self.next.fetch_add(1, Ordering::Relaxed) % self.copies.len()];
        let request = copy::Request {
            id: d.entry.id,
            line,
            answer,
        };
        let outcome = if copy.send(request).await.is_err() {
            Outcome::retry("the pipe command has stopped")
        } else {
            answered
                .await
                .unwrap_or_else(|_| Outcome::retry("the pipe command stopped before answering"))
        };
        if let Some(s) = &self.stop_after {
            s.note(&outcome, d.deliveries);
        }
        outcome
    }
}
