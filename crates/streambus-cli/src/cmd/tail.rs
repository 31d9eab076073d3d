//! `streambus tail`: print entries as JSON lines, like tail(1); `--follow` keeps
//! printing new ones. Plain XREAD: tail never changes any group's state.
//!
//! A partitioned stream: the history of every partition, merged by entry id
//! (ids are the masters' clocks: close to publishing order across partitions,
//! exact within one); then, with `--follow`, one reader per partition (each on
//! its own blocking connection), printed in order of arrival. Each line has a
//! `partition` field.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use streambus::group::require_stream;
use streambus::partition::Partitions;
use streambus::read::{last, last_id, read_after};
use streambus::{Client, Entry, EntryId, ErrorKind, StartId};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::cli::TailArgs;
use crate::output::Lines;
use crate::shutdown;
use crate::topology::Topology;

/// Entries printed without --from and without --count.
const DEFAULT_COUNT: u64 = 10;
/// Most entries one read returns while catching up.
const PAGE: u64 = 1000;
/// How long one XREAD of --follow blocks before it is issued again.
const BLOCK: Duration = Duration::from_secs(5);

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

    // Catch up with what is there now (only --from 0 / --from ID have any).
    if args.from.is_some() {
        loop {
            let page = left.map_or(PAGE, |l| l.min(PAGE));
            if page == 0 {
                return Ok(());
            }
            let entries = read_after(&mut conn, stream, cursor, page as usize, None).await?;
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

    let (stop, _signals) = shutdown::on_signal();
    let mut blocking = client.connect_blocking(BLOCK).await?;
    loop {
        let page = left.map_or(PAGE, |l| l.min(PAGE));
        if page == 0 {
            return Ok(());
        }
        let entries = tokio::select! {
            // Cancelling a plain XREAD loses nothing: no state changes on the server.
            () = stop.cancelled() => return Ok(()),
            r = read_after(&mut blocking, stream, cursor, page as usize, Some(BLOCK)) => r?,
        };
        for entry in &entries {
            out.entry(entry)?;
            cursor = entry.id;
        }
        out.flush()?;
        left = left.map(|l| l - entries.len() as u64);
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
    // Bound: one batch per partition waiting to be printed; a reader waits
    // for room before it reads again.
    let (tx, mut rx) = mpsc::channel(n);
    // Owned here: the readers are aborted when tail returns.
    let mut readers = JoinSet::new();
    for (i, key) in keys.iter().enumerate() {
        let blocking = client.connect_blocking(BLOCK).await?;
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
        let (i, entries) = tokio::select! {
            // Cancelling a plain XREAD loses nothing: no state changes on the server.
            () = stop.cancelled() => return Ok(()),
            got = rx.recv() => match got {
                Some(got) => got,
                None => bail!("every partition reader stopped"),
            },
        };
        let entries = entries.with_context(|| format!("following partition {i} of {stream}"))?;
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

/// Reads one partition after `cursor` and sends its batches (partition index,
/// entries) until the receiver is gone; a failed read is sent, then it stops.
async fn follow_partition(
    mut conn: streambus::Connection,
    key: String,
    index: usize,
    mut cursor: EntryId,
    tx: mpsc::Sender<(usize, streambus::Result<Vec<Entry>>)>,
) {
    loop {
        let got = read_after(&mut conn, &key, cursor, PAGE as usize, Some(BLOCK)).await;
        let failed = got.is_err();
        if let Ok(entries) = &got {
            if entries.is_empty() {
                continue;
            }
            cursor = entries.last().map_or(cursor, |e| e.id);
        }
        if tx.send((index, got)).await.is_err() || failed {
            return;
        }
    }
}
