//! `streambus consume`: read through a consumer group, print, then acknowledge.
//!
//! Guarantee: an entry is acknowledged only after its line was written and
//! flushed to stdout. If printing fails (or the process dies) the entries stay
//! pending, and a consumer restarted with the same `--consumer` name prints
//! them first.
//!
//! With `--exec`, a [`streambus::Worker`] runs a command per entry instead
//! (see [`super::exec`]).

use anyhow::{Context, Result};
use streambus::consumer::default_consumer_name;
use streambus::{Client, Consumer, ConsumerOptions};

use crate::cli::ConsumeArgs;
use crate::output::Lines;
use crate::shutdown;

pub async fn run(client: &Client, args: ConsumeArgs) -> Result<()> {
    if let Some(command) = args.exec.clone() {
        return super::exec::run(client, args, command).await;
    }
    let name = args.consumer.unwrap_or_else(default_consumer_name);
    let options = ConsumerOptions {
        batch_size: args.batch_size,
        max_wait: args.max_wait,
        start: args.from,
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
            Some(l) if l < args.batch_size as u64 => {
                consumer.read(l as usize, Some(args.max_wait)).await?
            }
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
