//! `streambus topology check|apply`: validate a topology file; create its
//! groups (and streams) in Redis.
//!
//! `apply` never destroys or changes anything that exists: it creates what is
//! missing and reports, per stream and group, `exists`, `created`, or
//! `differs (...)` for what it can see is not as the file says (a stream
//! longer or older than its retention allows). A group's start cannot be read
//! back from Redis, so an existing group is reported `exists`. Running it twice
//! is harmless: the second run reports everything `exists`.
//!
//! A partitioned stream (`partitions = N`) gets its groups on every partition;
//! it `exists` when any partition does, and a group is `created` when it was
//! missing on any partition.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Result};
use streambus::admin::group::{create_group, require_stream};
use streambus::config::format_duration;
use streambus::partition::Partitions;
use streambus::{Client, Connection, ErrorKind, Retention};

use crate::cli::{TopologyArgs, TopologyCommand};
use crate::output::Lines;
use crate::topology::{self, StreamSpec, Topology};

/// Slack over `max_len` before a stream counts as longer than its retention:
/// approximate trimming removes whole nodes (100 entries by default).
const MAXLEN_SLACK: u64 = 200;
/// Slack over `max_age`, for clocks and approximate trimming.
const MAXAGE_SLACK: Duration = Duration::from_secs(60);

pub async fn run(
    args: TopologyArgs,
    explicit: Option<&Path>,
    redis: Option<&str>,
    options: &streambus::ConnectOptions,
) -> Result<()> {
    match args.command {
        TopologyCommand::Check { file } => {
            let path = which(file, explicit)?;
            let t = Topology::load(&path)?;
            let mut out = Lines::stdout();
            out.line(format_args!(
                "ok: {} streams, {} groups",
                t.streams.len(),
                t.group_count()
            ))?;
            out.flush()?;
            Ok(())
        }
        TopologyCommand::Apply { file } => {
            let path = which(file, explicit)?;
            let t = Topology::load(&path)?;
            let url = redis
                .map(str::to_owned)
                .or_else(|| t.redis.clone())
                .unwrap_or_else(|| super::DEFAULT_REDIS.to_owned());
            let client = Client::open_with(&url, options.clone())?;
            let mut conn = super::connect(&client).await?;
            apply(&mut conn, &t).await
        }
    }
}

fn which(file: Option<PathBuf>, explicit: Option<&Path>) -> Result<PathBuf> {
    file.or_else(|| topology::locate(explicit)).ok_or_else(|| {
        anyhow!(
            "no topology file: name one (streambus topology check FILE, --config FILE or STREAMBUS_CONFIG), or create ./{} (start from streambus.example.toml)",
            topology::DEFAULT_FILE
        )
    })
}

async fn apply(conn: &mut Connection, t: &Topology) -> Result<()> {
    let mut out = Lines::stdout();
    let (mut streams_created, mut groups_created, mut differs) = (0, 0, 0);
    for (stream, spec) in &t.streams {
        // The keys: the stream itself, or its partitions.
        let keys = match spec.partitions.0 {
            1 => vec![stream.clone()],
            n => Partitions::new(stream, n)?.keys().to_vec(),
        };
        let mut existed = false;
        for key in &keys {
            match require_stream(conn, key).await {
                Ok(()) => existed = true,
                Err(e) if e.kind() == ErrorKind::NoStream => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut created_stream = false;
        let mut group_lines = Vec::new();
        for (group, g) in &spec.groups {
            let start = g.start.map(|s| s.0).unwrap_or_default();
            let mut created = false;
            for key in &keys {
                created |= create_group(conn, key, &group.0, start).await?;
            }
            if created {
                groups_created += 1;
                created_stream |= !existed;
                group_lines.push(format!(
                    "group {stream} {}: created (start {start})",
                    group.0
                ));
            } else {
                group_lines.push(format!("group {stream} {}: exists", group.0));
            }
        }
        let mut differs_why = None;
        if existed {
            for key in &keys {
                if let Some(why) = retention_differs(conn, key, spec).await? {
                    differs_why = Some(if keys.len() > 1 {
                        format!("partition {key}: {why}")
                    } else {
                        why
                    });
                    break;
                }
            }
        }
        let line = if existed {
            match differs_why {
                Some(why) => {
                    differs += 1;
                    format!("stream {stream}: differs ({why})")
                }
                None => format!("stream {stream}: exists"),
            }
        } else if created_stream {
            streams_created += 1;
            format!("stream {stream}: created")
        } else {
            format!(
                "stream {stream}: missing (it has no groups here: its first publish creates it)"
            )
        };
        out.line(line)?;
        for l in group_lines {
            out.line(l)?;
        }
    }
    out.line(format_args!(
        "applied: {} streams ({streams_created} created), {} groups ({groups_created} created), {differs} differ",
        t.streams.len(),
        t.group_count()
    ))?;
    out.flush()?;
    Ok(())
}

/// What is visibly not as the retention says, if anything.
async fn retention_differs(
    conn: &mut Connection,
    stream: &str,
    spec: &StreamSpec,
) -> Result<Option<String>> {
    match spec.retention.0 {
        Retention::MaxLen { len, .. } => {
            let n: u64 = redis::cmd("XLEN").arg(stream).query_async(conn).await?;
            Ok((n > len.saturating_add(MAXLEN_SLACK)).then(|| {
                format!("{n} entries, retention max_len {len}: the next publish trims it")
            }))
        }
        Retention::MaxAge(age) => {
            let first = streambus::read::range_after(conn, stream, None, 1).await?;
            let Some(first) = first.first() else {
                return Ok(None);
            };
            let first_ms = first.id.ms;
            let now_ms = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let oldest = Duration::from_millis(now_ms.saturating_sub(first_ms));
            Ok((oldest > age + MAXAGE_SLACK).then(|| {
                format!(
                    "oldest entry {} is {} old, retention max_age {}: the next publish trims it",
                    first.id,
                    format_duration(oldest),
                    format_duration(age)
                )
            }))
        }
        _ => Ok(None),
    }
}
