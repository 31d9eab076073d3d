//! `streambus consume`: read through a consumer group, print, then acknowledge.
//!
//! Guarantee: an entry is acknowledged only after its line was written and
//! flushed to stdout. If printing fails (or the process dies) the entries stay
//! pending, and a consumer restarted with the same `--consumer` name prints
//! them first.
//!
//! With `--exec`, a [`streambus::Worker`] runs a command per entry instead
//! (see [`super::exec`]).
//!
//! A partitioned stream: one [`Consumer`] per partition (of this member's,
//! with `--member`), read in turn; each batch is printed, then acknowledged,
//! as above. A read never asks for more entries than may still be printed.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use streambus::consumer::default_consumer_name;
use streambus::partition::Partitions;
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
    let partitions = super::partitions(args.partitions, topology, &args.stream)?;
    if let Some((i, n)) = args.member {
        match &partitions {
            None => bail!(
                "--member {i}/{n} needs a partitioned stream (--partitions N above 1, or partitions in the topology file)"
            ),
            Some(p) if i >= p.len() => bail!(
                "member {i}/{n} would read no partition: {} has only {} partitions (use at most {} members)",
                args.stream,
                p.len(),
                p.len()
            ),
            Some(_) => {}
        }
    }
    if let Some(command) = args.exec.clone() {
        return super::exec::run(client, args, command, defaults, partitions).await;
    }
    let name = args.consumer.clone().unwrap_or_else(default_consumer_name);
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
    if let Some(p) = partitions {
        return consume_partitions(client, &args, &name, options, p).await;
    }
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

/// Each assigned partition in turn: a read that does not wait, so that a busy
/// partition never waits behind an idle one; after a round that found nothing,
/// each read waits a share of `max_wait`, so that an idle stream is not polled
/// hot (a new entry is seen within about `max_wait`).
async fn consume_partitions(
    client: &Client,
    args: &ConsumeArgs,
    name: &str,
    options: ConsumerOptions,
    partitions: Partitions,
) -> Result<()> {
    let batch_size = options.batch_size;
    let members = args.member;
    let mut consumers = Vec::new();
    for (i, key) in partitions.keys().iter().enumerate() {
        if members.is_some_and(|(m, n)| i % n != m) {
            continue;
        }
        let c = Consumer::new(client, key, &args.group, name, options.clone()).await?;
        consumers.push((i, c));
    }
    let wait = (options.max_wait / consumers.len() as u32).max(Duration::from_millis(10));
    tracing::info!(stream = %args.stream, partitions = consumers.len(), group = %args.group, consumer = %name, "consuming");

    let (stop, _signals) = shutdown::on_signal();
    let mut out = Lines::stdout();
    let mut left = args.count;
    let mut idle = false;
    while !stop.is_cancelled() && left != Some(0) {
        let mut found = false;
        for (i, consumer) in &mut consumers {
            if stop.is_cancelled() || left == Some(0) {
                break;
            }
            // Never take more than will be printed (see `run`).
            let count = left.map_or(batch_size, |l| (l as usize).min(batch_size));
            let batch = consumer.read(count, idle.then_some(wait)).await?;
            if batch.is_empty() {
                continue;
            }
            found = true;
            for entry in &batch {
                out.partition_entry(entry, &args.stream, *i)?;
            }
            out.flush()?;
            let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
            consumer.ack(&ids).await.with_context(|| {
                format!(
                    "{} entries of partition {i} were printed but not acknowledged",
                    ids.len()
                )
            })?;
            left = left.map(|l| l.saturating_sub(batch.len() as u64));
        }
        idle = !found;
    }
    Ok(())
}
