//! `streambus tail`: print entries as JSON lines, like tail(1); `--follow` keeps
//! printing new ones. Plain XREAD: tail never changes any group's state.

use std::time::Duration;

use anyhow::Result;
use streambus::group::require_stream;
use streambus::read::{last, last_id, read_after};
use streambus::{Client, EntryId, ErrorKind, StartId};

use crate::cli::TailArgs;
use crate::output::Lines;
use crate::shutdown;

/// Entries printed without --from and without --count.
const DEFAULT_COUNT: u64 = 10;
/// Most entries one read returns while catching up.
const PAGE: u64 = 1000;
/// How long one XREAD of --follow blocks before it is issued again.
const BLOCK: Duration = Duration::from_secs(5);

pub async fn run(client: &Client, args: TailArgs) -> Result<()> {
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
