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
//!
//! # Faults
//!
//! Once started, consume outlives Redis being away (a lost network, a reset,
//! a restart): a failed read or acknowledgement is retried after [`RETRY`](super::retry::RETRY)'s
//! backoff, for as long as it takes, on new connections (a [`Feed`] drops its
//! [`Consumer`] after a failure and builds a new one, which re-reads the
//! entries delivered to its name first: those whose delivery reply was lost).
//! One warning goes to stderr when Redis goes away and one line when it is
//! back ([`Outage`]). Only a permanent error (a wrong password, NOPERM,
//! WRONGTYPE, a missing group with `--no-create`) stops it, with that error.
//!
//! No entry is printed twice in one run: the ids printed and not yet
//! acknowledged are remembered, and when one comes back (re-read after a
//! reconnect) it is acknowledged without being printed. A group that vanished
//! (Redis restarted without persistence) is recreated from the start of the
//! stream, unless `--no-create`; entries up to the last one printed before
//! are then acknowledged without being printed, too.

use std::time::Duration;

use anyhow::{bail, Result};
use streambus::admin::group;
use streambus::default_consumer_name;
use streambus::partition::Partitions;
use streambus::{
    Client, Consumer, ConsumerOptions, Entry, EntryId, ErrorKind, StartId, WorkerOptions,
};
use tokio_util::sync::CancellationToken;

use super::retry::{pause, Outage};
use super::settings::{self, FileGroup, MAX_WAIT};

/// Default of `--batch-size` when printing: a read returns what is there at
/// once, so a large batch costs no latency, and a pipe gets one read (and
/// one XACK) per thousand entries instead of per ten. 2000 (read ahead as two
/// reads of 1000, see `run`) against 1000 (two of 500): 300,000 entries to a
/// pipe in 0.865 against 0.906 of the wall time of one read of 1000
/// (`farm-bench -n 8`), for 5 MiB more peak RSS (22.7 MiB).
const PRINT_BATCH_SIZE: usize = 2000;
use crate::cli::ConsumeArgs;
use crate::output::Lines;
use crate::shutdown;
use crate::topology::Topology;

pub async fn run(client: &Client, args: ConsumeArgs, topology: Option<&Topology>) -> Result<()> {
    let file = FileGroup::of(topology, &args.stream, &args.group);
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
        return super::exec::run(client, args, command, file, partitions).await;
    }
    if let Some(command) = args.pipe.clone() {
        return super::pipe::run(client, args, command, file, partitions).await;
    }
    let name = args.consumer.clone().unwrap_or_else(default_consumer_name);
    let o = settings::worker_options(
        &args,
        file,
        WorkerOptions {
            batch_size: PRINT_BATCH_SIZE,
            block: MAX_WAIT,
            ..Default::default()
        },
    );
    let (batch_size, max_wait) = (o.batch_size, o.block);
    let options = ConsumerOptions {
        batch_size,
        max_wait,
        start: o.start,
        create_group: !args.no_create,
        consumer_name: Some(name.clone()),
    };
    if let Some(p) = partitions {
        return consume_partitions(client, &args, &name, options, p).await;
    }
    // A failure to start is reported at once (a wrong address or password
    // should not look like an outage); faults after that are waited out.
    let mut feed = Feed::start(client, &args.stream, &args.group, &name, options).await?;
    tracing::info!(stream = %args.stream, group = %args.group, consumer = %name, "consuming");

    let (stop, _signals) = shutdown::on_signal();
    let mut outage = Outage::new(format!("consuming {:?}", args.stream));
    let mut out = Lines::stdout();
    let mut left = args.count;
    // While one batch is printed, the next one is read (when the last reads
    // came back full: the stream most likely has more), in two halves, one on
    // each of the consumer's two connections, so that Redis serves them and
    // their replies are parsed on two other threads meanwhile (each
    // connection's replies are parsed by one task: with one read of the whole
    // batch, that parser was what every batch waited for). They carry the
    // acknowledgements of the batches printed before this one, never of this
    // one: print, flush, then acknowledge.
    let mut ahead: Vec<Ahead> = Vec::new();
    // A read in flight is never cancelled: entries it took are delivered to this
    // consumer, so they are printed and acknowledged before we stop.
    loop {
        let batch = if !ahead.is_empty() {
            feed.take_ahead(std::mem::take(&mut ahead), &mut outage, &stop)
                .await?
        } else if stop.is_cancelled() || left == Some(0) {
            break;
        } else {
            // What is there, at once (up to batch_size), else wait up to
            // max_wait; and never more than will be printed: an entry
            // delivered and not printed would sit in this consumer's pending
            // list.
            let count = left.map_or(batch_size, |l| (l as usize).min(batch_size));
            let read = Read::Upto(count, Some(max_wait));
            feed.read(read, &mut outage, &stop).await?
        };
        left = left.map(|l| l.saturating_sub(batch.len() as u64));
        if feed.last_read_full && !stop.is_cancelled() {
            // One batch in two halves (never more than will still be printed
            // after this batch), so that what is held stays a batch being
            // printed and at most one batch read ahead.
            let total = left.map_or(batch_size, |l| (l as usize).min(batch_size));
            let first = total.div_ceil(2);
            for (count, shared) in [(first, false), (total - first, true)] {
                if count == 0 {
                    break;
                }
                let Some(sent) = feed.send_ahead(count, shared) else {
                    break;
                };
                ahead.push(sent);
            }
        }
        for entry in &batch {
            out.entry(entry)?;
        }
        // Printed and flushed: a later read acknowledges them.
        out.flush()?;
        feed.printed();
    }
    feed.ack(&mut outage, &stop).await?;
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
    let mut feeds = Vec::new();
    for (i, key) in partitions.keys().iter().enumerate() {
        if members.is_some_and(|(m, n)| i % n != m) {
            continue;
        }
        let f = Feed::start(client, key, &args.group, name, options.clone()).await?;
        feeds.push((i, f));
    }
    let wait = (options.max_wait / feeds.len() as u32).max(Duration::from_millis(10));
    tracing::info!(stream = %args.stream, partitions = feeds.len(), group = %args.group, consumer = %name, "consuming");

    let (stop, _signals) = shutdown::on_signal();
    // One outage for all partitions: they live on one Redis (or one cluster).
    let mut outage = Outage::new(format!("consuming {:?}", args.stream));
    let mut out = Lines::stdout();
    let mut left = args.count;
    let mut idle = false;
    while !stop.is_cancelled() && left != Some(0) {
        let mut found = false;
        for (i, feed) in &mut feeds {
            if stop.is_cancelled() || left == Some(0) {
                break;
            }
            // Never take more than will be printed (see `run`).
            let count = left.map_or(batch_size, |l| (l as usize).min(batch_size));
            let read = Read::Upto(count, idle.then_some(wait));
            let batch = feed.read(read, &mut outage, &stop).await?;
            found |= !batch.is_empty();
            for entry in &batch {
                out.partition_entry(entry, &args.stream, *i)?;
            }
            out.flush()?;
            feed.printed();
            feed.ack(&mut outage, &stop).await?;
            left = left.map(|l| l.saturating_sub(batch.len() as u64));
        }
        idle = !found;
    }
    Ok(())
}

/// A read sent ahead ([`Feed::send_ahead`]) whose reply is not taken yet.
struct Ahead {
    read: tokio::task::JoinHandle<streambus::Result<Vec<Entry>>>,
    /// The acknowledgements it carries.
    acks: Vec<EntryId>,
    requested: usize,
}

/// How a [`Feed`] reads.
#[derive(Clone, Copy)]
enum Read {
    /// [`Consumer::read`]: up to this many, as soon as any are there, waiting
    /// up to the duration (if any) while there are none.
    Upto(usize, Option<Duration>),
}

/// One stream (or partition) read through the group, across faults: what to
/// print, and the acknowledgements of what was printed.
struct Feed<'a> {
    client: &'a Client,
    stream: String,
    group: &'a str,
    name: &'a str,
    options: ConsumerOptions,
    /// `None` after a failure: the next read or acknowledgement builds a new
    /// one on new connections (an old socket may be silently dead, and each
    /// would cost a timeout to find out). A new consumer first re-reads the
    /// entries delivered to this name and not acknowledged: among them, any
    /// whose delivery reply was lost.
    consumer: Option<Consumer>,
    /// Entries printed (or passed over) whose acknowledgement is not confirmed.
    /// One that is read again is acknowledged, not printed again.
    unacked: Vec<EntryId>,
    /// Entries of the batch being printed: acknowledged once it is flushed
    /// ([`Feed::printed`]).
    in_hand: Vec<EntryId>,
    /// The last read brought as many entries as it asked for.
    last_read_full: bool,
    /// The highest id printed in this run.
    printed_through: Option<EntryId>,
    /// After the group was recreated from the start of the stream: entries up
    /// to this id were printed before it vanished (or delivered to another
    /// consumer of the old group), so they are acknowledged, not printed.
    skip_through: Option<EntryId>,
}

impl<'a> Feed<'a> {
    async fn start(
        client: &'a Client,
        stream: &str,
        group: &'a str,
        name: &'a str,
        options: ConsumerOptions,
    ) -> Result<Feed<'a>> {
        let consumer = Consumer::new(client, stream, group, options.clone()).await?;
        Ok(Feed {
            client,
            stream: stream.to_owned(),
            group,
            name,
            options,
            consumer: Some(consumer),
            unacked: Vec::new(),
            in_hand: Vec::new(),
            last_read_full: false,
            printed_through: None,
            skip_through: None,
        })
    }

    /// The entries to print from one read; none when the read failed in a way
    /// that waiting mends (the wait is done here) or when stopped while
    /// waiting. An error only for a permanent failure.
    async fn read(
        &mut self,
        read: Read,
        outage: &mut Outage,
        stop: &CancellationToken,
    ) -> Result<Vec<Entry>> {
        let Read::Upto(count, block) = read;
        // The acknowledgements of what was printed (and flushed) go with the
        // next read, in one round trip; only when that finds nothing does a
        // blocking read follow. They are put back if the round trip fails.
        let acks = std::mem::take(&mut self.unacked);
        let ready = self.consumer(outage, stop).await.map(|c| c.is_some());
        let consumer = match (ready, self.consumer.as_mut()) {
            (Ok(true), Some(c)) => c,
            (ready, _) => {
                self.unacked = acks;
                ready?;
                return Ok(Vec::new());
            }
        };
        let (got, acks) = if acks.is_empty() {
            (consumer.read(count, block).await, acks)
        } else {
            match consumer.ack_and_read(&acks, count).await {
                Ok(entries) if entries.is_empty() && block.is_some() => {
                    (consumer.read(count, block).await, Vec::new())
                }
                Ok(entries) => (Ok(entries), Vec::new()),
                Err(e) => (Err(e), acks),
            }
        };
        self.unacked = acks;
        match got {
            Ok(entries) => {
                outage.ok();
                self.last_read_full = entries.len() >= count;
                Ok(self.sort_out(entries))
            }
            Err(e) => {
                self.failed(e, outage, stop).await?;
                Ok(Vec::new())
            }
        }
    }

    /// Sends a read now, without waiting for its reply, with the
    /// acknowledgements of what was printed (none left for a second read);
    /// on the consumer's shared connection with `shared`, else on its read
    /// connection. `None` when the next read must be an ordinary one (no
    /// consumer after a failure, or own pending entries still to re-read
    /// first).
    fn send_ahead(&mut self, count: usize, shared: bool) -> Option<Ahead> {
        let consumer = self.consumer.as_ref().filter(|c| !c.is_recovering())?;
        let acks = std::mem::take(&mut self.unacked);
        let read = if shared {
            tokio::spawn(consumer.read_ahead_shared(acks.clone(), count))
        } else {
            tokio::spawn(consumer.read_ahead(acks.clone(), count))
        };
        Some(Ahead {
            read,
            acks,
            requested: count,
        })
    }

    /// The entries to print from reads sent ahead (see [`Feed::read`]), in
    /// stream order: each read took a contiguous run of new entries, and
    /// Redis may have served them in either order. If any of them failed,
    /// none is printed: what the others took stays pending to this consumer
    /// and is re-read by the next one, in order with what the failed read may
    /// have taken.
    async fn take_ahead(
        &mut self,
        sent: Vec<Ahead>,
        outage: &mut Outage,
        stop: &CancellationToken,
    ) -> Result<Vec<Entry>> {
        let mut batches = Vec::with_capacity(sent.len());
        let mut full = true;
        let mut failure = None;
        for sent in sent {
            let got = sent.read.await.unwrap_or_else(|e| {
                Err(streambus::Error::new(
                    ErrorKind::Redis,
                    format!("read task failed: {e}"),
                ))
            });
            match got {
                Ok(entries) => {
                    full &= entries.len() >= sent.requested;
                    batches.push(entries);
                }
                Err(e) => {
                    // Its acknowledgements may not have been applied: again later.
                    self.unacked.extend(sent.acks);
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            if !batches.iter().all(Vec::is_empty) {
                tracing::debug!(stream = %self.stream, "a read failed; the entries of the other are re-read from the pending list");
            }
            self.last_read_full = false;
            self.failed(e, outage, stop).await?;
            return Ok(Vec::new());
        }
        outage.ok();
        self.last_read_full = full;
        batches.sort_by_key(|b| b.first().map(|e| e.id));
        Ok(self.sort_out(batches.concat()))
    }

    /// The batch in hand is printed and flushed: its entries are acknowledged
    /// with the next read (or by [`Feed::ack`]).
    fn printed(&mut self) {
        self.unacked.append(&mut self.in_hand);
    }

    /// Notes every entry read as to be acknowledged once printed, and returns
    /// those not printed before (see [`Feed::unacked`], [`Feed::skip_through`]).
    fn sort_out(&mut self, entries: Vec<Entry>) -> Vec<Entry> {
        let mut print = Vec::with_capacity(entries.len());
        // Ids still to acknowledge from before (a failed acknowledgement, then a
        // re-read): usually none. A read has no duplicates of its own.
        let earlier: std::collections::HashSet<EntryId> =
            self.unacked.iter().chain(&self.in_hand).copied().collect();
        for entry in entries {
            let seen = earlier.contains(&entry.id);
            let again = seen || self.skip_through.is_some_and(|s| entry.id <= s);
            if !seen {
                self.in_hand.push(entry.id);
            }
            if again {
                tracing::debug!(id = %entry.id, "read again; acknowledged without printing it again");
                continue;
            }
            self.printed_through = self.printed_through.max(Some(entry.id));
            print.push(entry);
        }
        print
    }

    /// Acknowledges everything printed (or passed over), retrying until it is
    /// done. An error for a permanent failure, or when stopped while Redis
    /// is away with acknowledgements outstanding (after one attempt: a stop
    /// with Redis there acknowledges what was printed).
    async fn ack(&mut self, outage: &mut Outage, stop: &CancellationToken) -> Result<()> {
        while !self.unacked.is_empty() {
            let ids = self.unacked.clone();
            if let Some(consumer) = self.consumer(outage, stop).await? {
                match consumer.ack(&ids).await {
                    Ok(_) => {
                        outage.ok();
                        self.unacked.clear();
                        continue;
                    }
                    Err(e) => self.failed(e, outage, stop).await?,
                }
            }
            if stop.is_cancelled() {
                bail!(
                    "stopped while Redis was unreachable: {} entries of {:?} were printed but not acknowledged; a consumer started with the same --consumer ({}) prints them again",
                    self.unacked.len(),
                    self.stream,
                    self.name
                );
            }
        }
        Ok(())
    }

    /// The consumer, built anew after a failure; `None` when building it
    /// failed in a way that waiting mends (the wait is done here).
    async fn consumer(
        &mut self,
        outage: &mut Outage,
        stop: &CancellationToken,
    ) -> Result<Option<&mut Consumer>> {
        if self.consumer.is_none() {
            match self.rebuild().await {
                Ok(c) => self.consumer = Some(c),
                Err(e) => {
                    self.failed(e, outage, stop).await?;
                    return Ok(None);
                }
            }
        }
        Ok(self.consumer.as_mut())
    }

    /// A new consumer on new connections. The group existed when consume
    /// started: if it has to be created now, it vanished (Redis restarted
    /// without persistence, or someone deleted it), and it is recreated from
    /// the start of the stream, so that entries published since are not
    /// skipped; those printed before are passed over ([`Feed::skip_through`]).
    async fn rebuild(&mut self) -> streambus::Result<Consumer> {
        let mut shared = self.client.connect().await?;
        if self.options.create_group {
            let created =
                group::create_group(&mut shared, &self.stream, self.group, StartId::Beginning)
                    .await?;
            if created {
                eprintln!(
                    "warning: group {:?} of stream {:?} was gone (Redis restarted without persistence, or the group was deleted): recreated it from the start of the stream; entries printed before are not printed again",
                    self.group, self.stream
                );
                self.skip_through = self.skip_through.max(self.printed_through);
            }
        }
        let options = ConsumerOptions {
            // Done just above, or not wanted.
            create_group: false,
            ..self.options.clone()
        };
        Consumer::new(self.client, &self.stream, self.group, options).await
    }

    /// After a failed request: a vanished group is recreated (unless
    /// `--no-create`), a failure that waiting mends is waited out (the
    /// consumer is rebuilt for the next attempt), anything else is returned.
    async fn failed(
        &mut self,
        e: streambus::Error,
        outage: &mut Outage,
        stop: &CancellationToken,
    ) -> Result<()> {
        if e.kind() == ErrorKind::NoGroup {
            if self.options.create_group {
                // The next consumer recreates it (see `rebuild`).
                self.consumer = None;
                return Ok(());
            }
            return Err(anyhow::Error::from(e).context(format!(
                "group {:?} of stream {:?} does not exist (or vanished: Redis restarted without persistence?), and --no-create forbids creating it",
                self.group, self.stream
            )));
        }
        if !e.is_retryable() {
            return Err(e.into());
        }
        tracing::debug!(stream = %self.stream, error = %e, "request failed; retrying on a new connection");
        self.consumer = None;
        let delay = outage.failed(&e);
        // Stopped meanwhile: the caller sees `stop` and ends.
        let _ = pause(delay, stop).await;
        Ok(())
    }
}
