//! `streambus tail`: print entries as JSON lines, like tail(1); `--follow` keeps
//! printing new ones. Plain XREAD: tail never changes any group's state.
//!
//! A partitioned stream: the history of every partition, merged by entry id
//! (ids are the masters' clocks: close to publishing order across partitions,
//! exact within one); then, with `--follow`, one reader per partition (each on
//! its own blocking connection), printed in order of arrival. Each line has a
//! `partition` field.
//!
//! # Faults
//!
//! With `--follow`, tail outlives Redis being away: a read that fails in a way
//! that waiting mends (no connection, no reply in time, a reset, Redis
//! loading) is retried after the backoff of [`super::retry::RETRY`] (50 ms
//! doubling to 2 s), on a new connection, from the last id printed: no gap
//! and no duplicate. One warning goes to stderr when Redis goes away and one
//! line when it is back. A permanent error (a wrong password, NOPERM, the key
//! turned into something else) ends it. Without `--follow`, tail is one
//! request and fails at once, like any one-shot command.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use streambus::admin::group::require_stream;
use streambus::partition::Partitions;
use streambus::read::{last, last_id, read_after};
use streambus::Jitter;
use streambus::{Client, Entry, EntryId, ErrorKind, StartId};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::retry::{pause, Outage, RETRY};
use crate::cli::TailArgs;
use crate::output::Lines;
use crate::shutdown;
use crate::topology::Topology;

/// Entries printed without --from and without --count.
const DEFAULT_COUNT: u64 = 10;
/// Most entries one read returns while catching up.
const PAGE: u64 = 1000;
/// How long one XREAD of --follow blocks before it is issued again. Its reply
/// is given this plus the response timeout, so it also bounds how long a read
/// on a connection that went silent takes to fail: short, so that tail is back
/// within 10 s of the network healing (an XREAD every 2 s costs nothing).
const BLOCK: Duration = Duration::from_secs(2);

pub async fn run(client: &Client, args: TailArgs, topology: Option<&Topology>) -> Result<()> {
    if let Some(p) = super::partitions(args.partitions, topology, &args.stream)? {
        return run_partitioned(client, args, p).await;
    }
    let mut conn = super::connect(client).await?;
    match require_stream(&mut conn, &args.stream).await {
        Ok(()) => {}
        // --follow waits for the stream to appear (XREAD on a missing key blocks).
        Err(e) if e.kind() == ErrorKind::NoStream && args.follow => {}
        Err(e) => return Err(e.into()),
    }
    let stream = args.stream.as_str();
    let mut out = Lines::stdout();

    // Where the history ends (the last id printed or skipped), and how many
    // more entries may be printed.
    let (mut cursor, mut left) = match args.from {
        None => {
            // Like tail(1): the last N, in stream order. Read at least one entry,
            // to know where --follow continues.
            let count = args.count.unwrap_or(DEFAULT_COUNT);
            let newest = last(&mut conn, stream, count.max(1) as usize).await?;
            let cursor = newest.last().map_or(EntryId::ZERO, |e| e.id);
            // With --count 0, the one entry read only marks where to follow from.
            let skip = newest.len().saturating_sub(count as usize);
            for entry in &newest[skip..] {
                out.entry(entry)?;
            }
            out.flush()?;
            // The count was for the history; following is unlimited, as with `tail -f`.
            (cursor, None)
        }
        Some(StartId::End) => (
            last_id(&mut conn, stream).await?.unwrap_or(EntryId::ZERO),
            args.count,
        ),
        Some(StartId::Beginning) => (EntryId::ZERO, args.count),
        Some(StartId::After(id)) => (id, args.count),
    };

    // Only a following tail needs more than the default Ctrl-C (which ends
    // a one-shot tail at once).
    let (stop, _signals) = if args.follow {
        let (stop, signals) = shutdown::on_signal();
        (stop, Some(signals))
    } else {
        (CancellationToken::new(), None)
    };
    let mut outage = Outage::new(format!("following {stream:?}"));
    // Catch up with what is there now (only --from 0 / --from ID have any).
    if args.from.is_some() {
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            let page = left.map_or(PAGE, |l| l.min(PAGE));
            if page == 0 {
                return Ok(());
            }
            let entries = match read_after(&mut conn, stream, cursor, page as usize, None).await {
                Ok(entries) => {
                    outage.ok();
                    entries
                }
                // Following: wait Redis out, as below.
                Err(e) if args.follow && e.is_retryable() => {
                    if !pause(outage.failed(&e), &stop).await {
                        return Ok(());
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if entries.is_empty() {
                break;
            }
            for entry in &entries {
                out.entry(entry)?;
                cursor = entry.id;
            }
            out.flush()?;
            left = left.map(|l| l - entries.len() as u64);
        }
    }
    if !args.follow {
        return Ok(());
    }

    // It dials anew by itself after a failure (see `streambus::Connection`).
    let Some(mut blocking) = connect_following(client, &mut outage, &stop).await? else {
        return Ok(());
    };
    loop {
        let page = left.map_or(PAGE, |l| l.min(PAGE));
        if page == 0 {
            return Ok(());
        }
        let read = tokio::select! {
            // Cancelling a plain XREAD loses nothing: no state changes on the server.
            () = stop.cancelled() => return Ok(()),
            r = read_after(&mut blocking, stream, cursor, page as usize, Some(BLOCK)) => r,
        };
        let entries = match read {
            Ok(entries) => {
                outage.ok();
                entries
            }
            // From `cursor` again: after the last entry printed.
            Err(e) if e.is_retryable() => {
                if !pause(outage.failed(&e), &stop).await {
                    return Ok(());
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        for entry in &entries {
            out.entry(entry)?;
            cursor = entry.id;
        }
        out.flush()?;
        left = left.map(|l| l - entries.len() as u64);
    }
}

/// The blocking connection of a follow, once the history is printed: Redis
/// going away just then is waited out like any later fault (`None` if stopped
/// meanwhile); only a permanent failure is an error.
async fn connect_following(
    client: &Client,
    outage: &mut Outage,
    stop: &CancellationToken,
) -> Result<Option<streambus::Connection>> {
    loop {
        match client.connect_blocking(BLOCK).await {
            Ok(conn) => return Ok(Some(conn)),
            Err(e) if e.is_retryable() => {
                if !pause(outage.failed(&e), stop).await {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn run_partitioned(client: &Client, args: TailArgs, partitions: Partitions) -> Result<()> {
    let mut conn = super::connect(client).await?;
    let keys = partitions.keys();
    let mut exists = false;
    for key in keys {
        match require_stream(&mut conn, key).await {
            Ok(()) => exists = true,
            Err(e) if e.kind() == ErrorKind::NoStream => {}
            Err(e) => return Err(e.into()),
        }
    }
    // --follow waits for the partitions to appear.
    if !exists && !args.follow {
        bail!(
            "stream {:?} does not exist: none of its {} partitions does (publish to it with --partitions {})",
            args.stream,
            keys.len(),
            keys.len()
        );
    }
    let stream = args.stream.as_str();
    let mut out = Lines::stdout();
    let n = keys.len();

    // Per partition, where its history ends; and how many more may be printed.
    let (mut cursors, mut left) = match args.from {
        None => {
            // The last N of the logical stream: the last N of each partition,
            // merged, the last N of those.
            let count = args.count.unwrap_or(DEFAULT_COUNT);
            let mut cursors = Vec::with_capacity(n);
            let mut newest: Vec<(usize, Entry)> = Vec::new();
            for (i, key) in keys.iter().enumerate() {
                let entries = last(&mut conn, key, count.max(1) as usize).await?;
                cursors.push(entries.last().map_or(EntryId::ZERO, |e| e.id));
                newest.extend(entries.into_iter().map(|e| (i, e)));
            }
            newest.sort_by_key(|(_, e)| e.id);
            let skip = newest.len().saturating_sub(count as usize);
            for (i, entry) in &newest[skip..] {
                out.partition_entry(entry, stream, *i)?;
            }
            out.flush()?;
            (cursors, None)
        }
        Some(StartId::End) => {
            let mut cursors = Vec::with_capacity(n);
            for key in keys {
                cursors.push(last_id(&mut conn, key).await?.unwrap_or(EntryId::ZERO));
            }
            (cursors, args.count)
        }
        Some(StartId::Beginning) => (vec![EntryId::ZERO; n], args.count),
        Some(StartId::After(id)) => (vec![id; n], args.count),
    };

    if args.from.is_some() {
        // A k-way merge by id over one page per partition at a time.
        let page = (PAGE as usize / n).max(10);
        let mut bufs: Vec<VecDeque<Entry>> = vec![VecDeque::new(); n];
        let mut exhausted = vec![false; n];
        let mut printed = 0u64;
        while left != Some(0) {
            for i in 0..n {
                if bufs[i].is_empty() && !exhausted[i] {
                    let got = read_after(&mut conn, &keys[i], cursors[i], page, None).await?;
                    exhausted[i] = got.len() < page;
                    bufs[i].extend(got);
                }
            }
            let Some(i) = (0..n)
                .filter(|&i| !bufs[i].is_empty())
                .min_by_key(|&i| bufs[i][0].id)
            else {
                break;
            };
            let Some(entry) = bufs[i].pop_front() else {
                break;
            };
            out.partition_entry(&entry, stream, i)?;
            cursors[i] = entry.id;
            left = left.map(|l| l - 1);
            printed += 1;
            if printed.is_multiple_of(PAGE) {
                out.flush()?;
            }
        }
        out.flush()?;
        if left == Some(0) {
            return Ok(());
        }
    }
    if !args.follow {
        return Ok(());
    }

    let (stop, _signals) = shutdown::on_signal();
    // One outage for all partitions; the readers wait it out themselves.
    let mut outage = Outage::new(format!("following {stream:?}"));
    let mut down = std::collections::BTreeSet::new();
    // Bound: one message per partition waiting to be handled; a reader waits
    // for room before it reads again.
    let (tx, mut rx) = mpsc::channel(n);
    // Owned here: the readers are aborted when tail returns.
    let mut readers = JoinSet::new();
    for (i, key) in keys.iter().enumerate() {
        let Some(blocking) = connect_following(client, &mut outage, &stop).await? else {
            return Ok(());
        };
        readers.spawn(follow_partition(
            blocking,
            key.clone(),
            i,
            cursors[i],
            tx.clone(),
        ));
    }
    drop(tx);
    loop {
        let (i, news) = tokio::select! {
            // Cancelling a plain XREAD loses nothing: no state changes on the server.
            () = stop.cancelled() => return Ok(()),
            got = rx.recv() => match got {
                Some(got) => got,
                None => bail!("every partition reader stopped"),
            },
        };
        let entries = match news {
            News::Entries(entries) => entries,
            News::Down(e) => {
                if down.is_empty() {
                    // The readers keep their own backoff.
                    let _ = outage.failed(&e);
                }
                down.insert(i);
                continue;
            }
            News::Up => {
                down.remove(&i);
                if down.is_empty() {
                    outage.ok();
                }
                continue;
            }
            News::Failed(e) => {
                return Err(anyhow::Error::from(e))
                    .with_context(|| format!("following partition {i} of {stream}"))
            }
        };
        for entry in &entries {
            if left == Some(0) {
                break;
            }
            out.partition_entry(entry, stream, i)?;
            left = left.map(|l| l - 1);
        }
        out.flush()?;
        if left == Some(0) {
            return Ok(());
        }
    }
}

/// What a partition reader tells the printing loop.
enum News {
    /// The next entries, after the last ones sent.
    Entries(Vec<Entry>),
    /// A read failed in a way that waiting mends; the reader retries.
    Down(streambus::Error),
    /// A read succeeded again after `Down`.
    Up,
    /// A permanent failure; the reader stopped.
    Failed(streambus::Error),
}

/// Reads one partition after `cursor` and sends its batches until the
/// receiver is gone. A read that fails in a way that waiting mends is retried
/// after the backoff, from the same cursor (`Down` at the first failure, `Up`
/// at the next success); a permanent failure is sent, then it stops.
async fn follow_partition(
    mut conn: streambus::Connection,
    key: String,
    index: usize,
    mut cursor: EntryId,
    tx: mpsc::Sender<(usize, News)>,
) {
    let mut failures = 0u32;
    let mut jitter = Jitter::new();
    loop {
        let news = match read_after(&mut conn, &key, cursor, PAGE as usize, Some(BLOCK)).await {
            Ok(entries) => {
                if failures > 0 {
                    failures = 0;
                    if tx.send((index, News::Up)).await.is_err() {
                        return;
                    }
                }
                if entries.is_empty() {
                    continue;
                }
                cursor = entries.last().map_or(cursor, |e| e.id);
                News::Entries(entries)
            }
            Err(e) if e.is_retryable() => {
                failures = failures.saturating_add(1);
                if failures == 1 && tx.send((index, News::Down(e))).await.is_err() {
                    return;
                }
                tokio::time::sleep(RETRY.delay_with_jitter(failures, jitter.next_unit())).await;
                continue;
            }
            Err(e) => {
                let _ = tx.send((index, News::Failed(e))).await;
                return;
            }
        };
        if tx.send((index, news)).await.is_err() {
            return;
        }
    }
}
