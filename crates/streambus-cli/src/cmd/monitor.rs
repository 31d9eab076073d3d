//! `streambus monitor`: the health of a stream, its groups and their consumers
//! (`streambus::admin::monitor`), once or every `--watch` interval; `--cleanup` hands
//! the pending entries of dead consumers to live ones and deletes the dead.
//!
//! # Text
//!
//! One line for the stream, then per group one line and a consumer table in
//! the reference package's columns (`Consumer`, `Idle`, `Pending`, `Status`,
//! the status in its words: `OK`, `WARNING - idle for long time`, ...). A lag
//! Redis cannot tell is printed `?` and explained in a footnote.
//!
//! # JSON (`--json`)
//!
//! The snapshot, one compact document per line (one in all without `--watch`):
//!
//! - `stream`, `server_time_ms`, `length`, `first_entry_id`,
//!   `first_entry_age_ms`, `last_entry_id`, `last_entry_age_ms`,
//!   `last_generated_id`, `entries_added`, `max_deleted_entry_id`;
//! - `groups[]`: `name`, `pending`, `lag` (`null` when Redis cannot tell),
//!   `entries_read`, `last_delivered_id`, `oldest_pending_id`,
//!   `oldest_pending_age_ms`, `oldest_pending_idle_ms`, `delivery_counts`
//!   (`{sampled, min, max}` or `null`);
//! - `groups[].consumers[]`: `name`, `pending`, `idle_ms`, `inactive_ms`
//!   (Redis 7.2+, else `null`), `status` (`OK`, `IDLE`, `STALLED`,
//!   `TOO_MANY_PENDING`).
//!
//! Ids are strings (`"1712345678901-0"`), ages and idle times milliseconds,
//! absent values `null`.
//!
//! # Faults (`--watch`)
//!
//! The first snapshot must succeed. After it, a snapshot that fails is shown
//! in place of the snapshot, and the next interval tries again (on a new
//! connection if the old one failed: see `streambus::Connection`), so the
//! screen recovers by itself when Redis is back. In text, `Redis unreachable
//! for 3.2s: <error>` (or `error: <error>` for a failure that waiting does
//! not mend, such as the stream deleted meanwhile); with `--json`, one line
//! `{"stream", "error", "since", "down_ms"}`: `error` begins with
//! `redis unreachable: ` when Redis could not be reached or did not answer,
//! `since` is when the first failed snapshot of this outage was taken (ms
//! since the Unix epoch), `down_ms` how long ago that was. Without a screen
//! to redraw, stderr also gets one warning when the outage begins and one
//! line when it ends.
//!
//! With `--cleanup --json`, the cleanup report instead: `dry_run`,
//! `moved[]` (`from`, `to`, `count`), `deleted[]` (consumer names),
//! `skipped[]` (`consumer`, `pending`, `reason`: `no_live_consumer`,
//! `has_pending`, `active`, `gone`), `vanished`.
//!
//! # Partitioned streams
//!
//! The logical totals ([`streambus::partition::snapshot`]): one line for the
//! stream (length over all partitions), one per group (pending and lag over
//! all partitions), then a section per partition as above. `--json` prints
//! the `PartitionedSnapshot`: `stream`, `length`, `groups[]` (`name`,
//! `pending`, `lag`, `partitions`: how many partitions have the group) and
//! `partitions[]` (each partition's snapshot, as above; missing partitions are
//! left out) and `owners[]`: for each group with leased membership
//! (`consume --exec/--pipe` without `--member`), `group`, `leased`,
//! `members` (live consumer names), `unowned` (partitions without an owner)
//! and `partitions[]` with `partition`, `key`, `owner` (null: none),
//! `held_ms`, `renewed_ms_ago`, `expires_in_ms`, `lag` and `pending`; the
//! text form shows them after the group totals. `--cleanup` cleans up each partition; with `--json`, one
//! document `{"stream", "partitions": [{"partition", "key", "report"}]}`.

use std::io::IsTerminal;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Result};
use streambus::admin::monitor::{self, CleanupOptions, CleanupReport, GroupSnapshot};
use streambus::admin::monitor::{Monitor, MonitorOptions, StreamSnapshot};
use streambus::config::format_duration;
use streambus::partition::{self, PartitionOwners, PartitionedSnapshot, Partitions};
use streambus::{Client, Connection, ErrorKind};

use super::retry::{one_line, Outage};
use crate::cli::MonitorArgs;
use crate::output::{self, Lines};
use crate::shutdown;
use crate::topology::Topology;

/// Moves the cursor home and clears the screen (ANSI), before each redraw on a
/// terminal.
const CLEAR: &str = "\x1b[H\x1b[2J";
/// What a `?` lag means, printed once below the groups when one has it.
const LAG_FOOTNOTE: &str = "? lag: unknown (entries were deleted)";

pub async fn run(client: &Client, args: MonitorArgs, topology: Option<&Topology>) -> Result<()> {
    let conn = super::connect(client).await?;
    let partitions = super::partitions(args.partitions, topology, &args.stream)?;
    if args.cleanup {
        return match partitions {
            Some(p) => cleanup_partitions(conn, &args, &p).await,
            None => cleanup(conn, &args).await,
        };
    }
    let options = MonitorOptions {
        idle_threshold: args.idle_threshold,
        pending_warning: args.pending_warning,
        group: args.group.clone(),
        ..Default::default()
    };
    let mut source = match partitions {
        Some(p) => Source::Partitioned(conn, p, options),
        None => Source::Plain(Monitor::new(client, options).await?),
    };
    let mut out = Lines::stdout();
    let Some(interval) = args.watch else {
        let snap = source.snapshot(&args.stream).await?;
        print(&mut out, &snap, args.json)?;
        return out.flush().map_err(Into::into);
    };
    watch(&mut source, &mut out, &args.stream, interval, args.json).await
}

/// Where snapshots come from: one stream, or the partitions of one.
enum Source {
    Plain(Monitor),
    Partitioned(Connection, Partitions, MonitorOptions),
}

/// A snapshot of either kind.
enum Snapshot {
    Plain(StreamSnapshot),
    Partitioned(PartitionedSnapshot),
}

impl Source {
    async fn snapshot(&mut self, stream: &str) -> Result<Snapshot> {
        match self {
            Source::Plain(m) => Ok(Snapshot::Plain(m.snapshot(stream).await?)),
            Source::Partitioned(conn, p, options) => {
                let snap = partition::snapshot(conn, p, options).await?;
                if snap.partitions.is_empty() {
                    bail!(
                        "stream {stream:?} does not exist: none of its {} partitions does",
                        p.len()
                    );
                }
                Ok(Snapshot::Partitioned(snap))
            }
        }
    }
}

/// A snapshot every `interval` until Ctrl-C or SIGTERM (then exit 0).
///
/// The first snapshot must succeed (a missing stream or group is an error);
/// a later failure (Redis away, the stream deleted meanwhile) is shown in the
/// snapshot's place (see the module docs) and the next interval tries again.
async fn watch(
    source: &mut Source,
    out: &mut Lines,
    stream: &str,
    interval: Duration,
    json: bool,
) -> Result<()> {
    let (stop, _signals) = shutdown::on_signal();
    // Redraw in place only for a person: a pipe or file gets every snapshot.
    let redraw = !json && std::io::stdout().is_terminal();
    let mut ticker = tokio::time::interval(interval);
    // A slow snapshot delays the next one instead of causing a burst.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shown = 0u64;
    // The screen says it when redrawing; otherwise stderr gets the
    // beginning and the end of an outage.
    let mut outage = Outage::new(format!("monitor {stream}"))
        .every(interval)
        .quiet(redraw);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        // Cancelling a snapshot loses nothing: it only reads.
        let snap = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            r = source.snapshot(stream) => r,
        };
        let shot = match snap {
            Ok(snap) => {
                outage.ok();
                Shot::Snapshot(snap)
            }
            Err(e) if shown == 0 => return Err(e),
            Err(e) => {
                let error = crate::error_line(&e);
                let unreachable = e
                    .downcast_ref::<streambus::Error>()
                    .is_some_and(streambus::Error::is_retryable);
                if unreachable {
                    // Its backoff is not used: the interval paces the retries.
                    let _ = outage.failed(&error);
                } else {
                    eprintln!("error: {error}");
                }
                Shot::Failed { error, unreachable }
            }
        };
        if redraw {
            out.line(format_args!(
                "{CLEAR}every {}: streambus monitor {stream} (Ctrl-C to stop)\n",
                format_duration(interval)
            ))?;
        } else if shown > 0 && !json {
            out.line("")?;
        }
        match &shot {
            Shot::Snapshot(snap) => print(out, snap, json)?,
            Shot::Failed { error, unreachable } => {
                let since = outage.since();
                let down = since.map_or(Duration::ZERO, |(at, _)| at.elapsed());
                if json {
                    let since_ms = since.and_then(|(_, wall)| {
                        wall.duration_since(UNIX_EPOCH)
                            .ok()
                            .map(|d| d.as_millis() as u64)
                    });
                    let error = if *unreachable {
                        format!("redis unreachable: {}", one_line(error))
                    } else {
                        error.clone()
                    };
                    out.json(&serde_json::json!({
                        "stream": stream,
                        "error": error,
                        "since": since_ms,
                        "down_ms": down.as_millis() as u64,
                    }))?;
                } else if *unreachable {
                    out.line(format_args!(
                        "Redis unreachable for {}: {error} (trying again every {})",
                        format_duration(down),
                        format_duration(interval)
                    ))?;
                } else {
                    out.line(format_args!("error: {error}"))?;
                }
            }
        }
        out.flush()?;
        shown += 1;
    }
}

/// What one interval shows: a snapshot, or why there is none.
enum Shot {
    Snapshot(Snapshot),
    Failed {
        /// The error on one line.
        error: String,
        /// Redis could not be reached or did not answer (a retryable error).
        unreachable: bool,
    },
}

fn print(out: &mut Lines, snap: &Snapshot, json: bool) -> std::io::Result<()> {
    let lines = match (snap, json) {
        (Snapshot::Plain(s), true) => return out.json(s),
        (Snapshot::Partitioned(s), true) => return out.json(s),
        (Snapshot::Plain(s), false) => render(s),
        (Snapshot::Partitioned(s), false) => render_partitioned(s),
    };
    for line in lines {
        out.line(line)?;
    }
    Ok(())
}

/// The text form of a partitioned stream: totals, then each partition.
fn render_partitioned(snap: &PartitionedSnapshot) -> Vec<String> {
    let mut lines = vec![format!(
        "stream {}: {} partitions present, length {}",
        snap.stream,
        snap.partitions.len(),
        snap.length
    )];
    if snap.groups.is_empty() {
        lines.push("no consumer groups".to_owned());
    }
    for g in &snap.groups {
        let lag = g.lag.map_or_else(|| "?".to_owned(), |l| l.to_string());
        lines.push(format!(
            "group {}: pending {}, lag {lag} (on {} partitions)",
            g.name, g.pending, g.partitions
        ));
    }
    for o in &snap.owners {
        lines.extend(owner_lines(o));
    }
    for part in &snap.partitions {
        lines.push(String::new());
        lines.push(format!("partition {}:", part.stream));
        lines.extend(render(part).into_iter().map(|l| format!("  {l}")));
    }
    lines
}

/// A leased group's owners: the live members and the partitions without an
/// owner, then per partition its owner, the lease's age, time since its last
/// renewal and until its expiry, and the group's lag and pending there.
fn owner_lines(o: &PartitionOwners) -> Vec<String> {
    let secs = |ms: Option<u64>| {
        ms.map_or_else(
            || "-".to_owned(),
            |ms| format!("{:.1}s", ms as f64 / 1000.0),
        )
    };
    let members = if o.members.is_empty() {
        "none".to_owned()
    } else {
        o.members.join(", ")
    };
    let mut lines = vec![format!(
        "group {}: leased, {} live members ({members}), {} partitions without an owner",
        o.group,
        o.members.len(),
        o.unowned
    )];
    for p in &o.partitions {
        let lag = p.lag.map_or_else(|| "?".to_owned(), |l| l.to_string());
        lines.push(match &p.owner {
            Some(owner) => format!(
                "  partition {}: owner {owner}, held {}, renewed {} ago, expires in {}, lag {lag}, pending {}",
                p.partition,
                secs(p.held_ms),
                secs(p.renewed_ms_ago),
                secs(p.expires_in_ms),
                p.pending
            ),
            None => format!(
                "  partition {}: NO OWNER, lag {lag}, pending {}",
                p.partition, p.pending
            ),
        });
    }
    lines
}

/// The text form of a snapshot (see the module docs).
fn render(snap: &StreamSnapshot) -> Vec<String> {
    let mut lines = vec![stream_line(snap)];
    if snap.groups.is_empty() {
        lines.push("no consumer groups".to_owned());
    }
    for g in &snap.groups {
        lines.push(group_line(g));
        if g.consumers.is_empty() {
            lines.push("  no consumers".to_owned());
            continue;
        }
        let mut rows = vec![[
            "Consumer".to_owned(),
            "Idle".to_owned(),
            "Pending".to_owned(),
            "Status".to_owned(),
        ]];
        rows.extend(g.consumers.iter().map(|c| {
            [
                c.name.clone(),
                format_duration(c.idle),
                c.pending.to_string(),
                c.status.reference_text().to_owned(),
            ]
        }));
        lines.extend(output::table(&rows).into_iter().map(|r| format!("  {r}")));
    }
    if snap.groups.iter().any(|g| g.lag.is_none()) {
        lines.push(LAG_FOOTNOTE.to_owned());
    }
    lines
}

fn stream_line(snap: &StreamSnapshot) -> String {
    let end = |id: Option<streambus::EntryId>, age: Option<Duration>| match (id, age) {
        (Some(id), Some(age)) => format!("{id} ({} ago)", format_duration(age)),
        (Some(id), None) => id.to_string(),
        _ => "-".to_owned(),
    };
    let added = snap
        .entries_added
        .map_or_else(|| "?".to_owned(), |n| n.to_string());
    format!(
        "stream {}: length {}, first {}, last {}, entries added {added}",
        snap.stream,
        snap.length,
        end(snap.first_entry_id, snap.first_entry_age),
        end(snap.last_entry_id, snap.last_entry_age),
    )
}

fn group_line(g: &GroupSnapshot) -> String {
    let lag = g.lag.map_or_else(|| "?".to_owned(), |l| l.to_string());
    let consumers = match g.consumers.len() {
        1 => "1 consumer".to_owned(),
        n => format!("{n} consumers"),
    };
    let mut line = format!(
        "group {}: {consumers}, pending {}, lag {lag}, last delivered {}",
        g.name, g.pending, g.last_delivered_id
    );
    if let Some(age) = g.oldest_pending_age {
        line.push_str(&format!(", oldest pending {} old", format_duration(age)));
        if let Some(idle) = g.oldest_pending_idle {
            line.push_str(&format!(" (idle {})", format_duration(idle)));
        }
    }
    if let Some(d) = &g.delivery_counts {
        line.push_str(&format!(
            ", deliveries {}..{} over the {} oldest pending",
            d.min, d.max, d.sampled
        ));
    }
    line
}

async fn cleanup(mut conn: streambus::Connection, args: &MonitorArgs) -> Result<()> {
    // clap enforces it (`requires`); this keeps the function honest on its own.
    let Some(group) = args.group.as_deref() else {
        anyhow::bail!("--cleanup needs --group");
    };
    let options = CleanupOptions {
        idle_threshold: args.idle_threshold,
        dry_run: args.dry_run,
        ..Default::default()
    };
    let report = monitor::cleanup(&mut conn, &args.stream, group, &options).await?;
    let mut out = Lines::stdout();
    if args.json {
        out.json(&report)?;
    } else {
        for line in cleanup_lines(&report, group, args.idle_threshold) {
            out.line(line)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// `--cleanup` on each partition that exists.
async fn cleanup_partitions(
    mut conn: Connection,
    args: &MonitorArgs,
    p: &Partitions,
) -> Result<()> {
    // clap enforces it (`requires`); this keeps the function honest on its own.
    let Some(group) = args.group.as_deref() else {
        bail!("--cleanup needs --group");
    };
    let options = CleanupOptions {
        idle_threshold: args.idle_threshold,
        dry_run: args.dry_run,
        ..Default::default()
    };
    let mut out = Lines::stdout();
    let mut reports = Vec::new();
    for (i, key) in p.keys().iter().enumerate() {
        let report = match monitor::cleanup(&mut conn, key, group, &options).await {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::NoStream => continue,
            Err(e) => return Err(e.into()),
        };
        if !args.json {
            out.line(format_args!("partition {i} ({key}):"))?;
            for line in cleanup_lines(&report, group, args.idle_threshold) {
                out.line(format_args!("  {line}"))?;
            }
        }
        reports.push(serde_json::json!({ "partition": i, "key": key, "report": report }));
    }
    if args.json {
        out.json(&serde_json::json!({ "stream": args.stream, "partitions": reports }))?;
    }
    out.flush()?;
    Ok(())
}

/// The report in words; "would ..." in a dry run.
fn cleanup_lines(report: &CleanupReport, group: &str, threshold: Duration) -> Vec<String> {
    let dry = report.dry_run;
    let verb = |done: &str, would: &str| {
        if dry {
            format!("would {would}")
        } else {
            done.to_owned()
        }
    };
    let mut lines = Vec::new();
    for m in &report.moved {
        lines.push(format!(
            "{} {} from {} to {}",
            verb("moved", "move"),
            pending_entries(m.count),
            m.from,
            m.to
        ));
    }
    for name in &report.deleted {
        lines.push(format!("{} consumer {name}", verb("deleted", "delete")));
    }
    for s in &report.skipped {
        lines.push(format!(
            "{} consumer {} ({} pending): {}",
            verb("skipped", "skip"),
            s.consumer,
            s.pending,
            s.reason
        ));
    }
    if report.vanished > 0 {
        lines.push(format!(
            "{} left by themselves before they could be moved (acknowledged or deleted)",
            pending_entries(report.vanished)
        ));
    }
    if lines.is_empty() {
        lines.push(format!(
            "no consumer of group {group} has been idle for more than {}: nothing {}",
            format_duration(threshold),
            if dry { "would change" } else { "to clean up" }
        ));
    }
    lines
}

fn pending_entries(n: u64) -> String {
    if n == 1 {
        "1 pending entry".to_owned()
    } else {
        format!("{n} pending entries")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_report_says_nothing_happens() {
        let mut report = CleanupReport::default();
        let lines = cleanup_lines(&report, "g", Duration::from_secs(60));
        assert_eq!(
            lines,
            ["no consumer of group g has been idle for more than 1m00s: nothing to clean up"]
        );
        report.dry_run = true;
        let lines = cleanup_lines(&report, "g", Duration::from_secs(60));
        assert!(lines[0].ends_with("nothing would change"), "{lines:?}");
    }
}
