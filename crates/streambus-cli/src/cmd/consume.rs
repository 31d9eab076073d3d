//! `streambus consume`: read through a consumer group, print, then acknowledge.
//!
//! Guarantee: an entry is acknowledged only after its line was written and
//! flushed to stdout. If printing fails (or the process dies) the entries stay
//! pending, and a consumer restarted with the same `--consumer` name prints
//! them first.
//!
//! With `--exec`, a [`streambus::Worker`] runs a command per entry instead
//! (see [`super::exec`]).

use std::time::Duration;

use anyhow::{Context, Result};
use streambus::consumer::default_consumer_name;
use streambus::{Client, Consumer, ConsumerOptions};

use crate::cli::ConsumeArgs;
use crate::output::Lines;
use crate::shutdown;
use crate::topology::{GroupSpec, Topology};

/// Default of `--batch-size` (its help text states it).
pub const BATCH_SIZE: usize = 10;
/// Default of `--max-wait`.
pub const MAX_WAIT: Duration = Duration::from_secs(2);

/// What the topology file says about the stream and group being consumed.
#[derive(Clone, Copy, Default)]
pub struct Defaults<'a> {
    pub group: Option<&'a GroupSpec>,
    pub dead_letter_maxlen: Option<u64>,
}

impl<'a> Defaults<'a> {
    pub fn of(topology: Option<&'a Topology>, stream: &str, group: &str) -> Self {
        let Some(t) = topology else {
            return Defaults::default();
        };
        Defaults {
            group: t.group(stream, group),
            dead_letter_maxlen: t
                .stream(stream)
                .and_then(|s| s.dead_letter.as_ref())
                .and_then(|d| d.max_len),
        }
    }
}

pub async fn run(client: &Client, args: ConsumeArgs, topology: Option<&Topology>) -> Result<()> {
    let defaults = Defaults::of(topology, &args.stream, &args.group);
    if let Some(command) = args.exec.clone() {
        return super::exec::run(client, args, command, defaults).await;
    }
    let name = args.consumer.unwrap_or_else(default_consumer_name);
    let spec = defaults.group.cloned().unwrap_or_default();
    let batch_size = args
        .batch_size
        .or(spec.batch_size.map(|n| n.0))
        .unwrap_or(BATCH_SIZE);
    let max_wait = args
        .max_wait
        .or(spec.max_wait.map(|d| d.0))
        .unwrap_or(MAX_WAIT);
    let options = ConsumerOptions {
        batch_size,
        max_wait,
        start: args.from.or(spec.start.map(|s| s.0)).unwrap_or_default(),
        ..Default::default()
    };
    let mut consumer = Consumer::new(client, &args.stream, &args.group, &name, options).await?;
    tracing::info!(stream = %args.stream, group = %args.group, consumer = %name, "consuming");

    let (stop, _signals) = shutdown::on_signal();
    let mut out = Lines::stdout();
    let mut left = args.count;
    // A read in flight is never cancelled: entries it took are delivered to this
    // consumer, so they are printed and acknowledged before we stop.
    while !stop.is_cancelled() && left != Some(0) {
        let batch = match left {
            // Never take more than will be printed: an entry delivered and not
            // printed would sit in this consumer's pending list.
            Some(l) if l < batch_size as u64 => consumer.read(l as usize, Some(max_wait)).await?,
            _ => consumer.next_batch().await?,
        };
        if batch.is_empty() {
            continue;
        }
        for entry in &batch {
            out.entry(entry)?;
        }
        out.flush()?;
        let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
        consumer
            .ack(&ids)
            .await
            .with_context(|| format!("{} entries were printed but not acknowledged", ids.len()))?;
        left = left.map(|l| l.saturating_sub(batch.len() as u64));
    }
    Ok(())
}
