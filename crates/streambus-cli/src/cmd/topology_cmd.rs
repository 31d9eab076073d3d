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
//!
//! With `--json`, each prints one JSON object instead of text: `check` what
//! the file has ([`Checked`]), `apply` what it found and did ([`Applied`]),
//! the same facts as the text. When `apply` fails part way, the text of the
//! streams done so far is printed, the JSON object is not (the error is on
//! stderr either way).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Result};
use serde::Serialize;
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
        TopologyCommand::Check { file, json } => {
            let path = which(file, explicit)?;
            let t = Topology::load(&path)?;
            let mut out = Lines::stdout();
            if json {
                out.json(&Checked::of(&path, &t))?;
            } else {
                out.line(format_args!(
                    "ok: {} streams, {} groups",
                    t.streams.len(),
                    t.group_count()
                ))?;
            }
            out.flush()?;
            Ok(())
        }
        TopologyCommand::Apply { file, json } => {
            let path = which(file, explicit)?;
            let t = Topology::load(&path)?;
            let url = redis
                .map(str::to_owned)
                .or_else(|| t.redis.clone())
                .unwrap_or_else(|| super::DEFAULT_REDIS.to_owned());
            let client = Client::open_with(&url, options.clone())?;
            let mut conn = super::connect(&client).await?;
            let mut out = Lines::stdout();
            let mut streams = Vec::with_capacity(t.streams.len());
            for (stream, spec) in &t.streams {
                let outcome = apply_stream(&mut conn, stream, spec).await?;
                if !json {
                    for line in outcome.lines() {
                        out.line(line)?;
                    }
                }
                streams.push(outcome);
            }
            let summary = ApplySummary::of(&streams);
            if json {
                out.json(&Applied {
                    file: path.display().to_string(),
                    redis: client.display_url(),
                    streams,
                    summary,
                })?;
            } else {
                out.line(summary.line())?;
            }
            out.flush()?;
            Ok(())
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

/// `topology check --json`: what the file has.
#[derive(Debug, Serialize)]
struct Checked<'a> {
    file: String,
    streams: Vec<CheckedStream<'a>>,
    summary: CheckSummary,
}

#[derive(Debug, Serialize)]
struct CheckedStream<'a> {
    stream: &'a str,
    partitions: u32,
    /// The group names, in the file's (sorted) order.
    groups: Vec<&'a str>,
}

#[derive(Debug, Serialize)]
struct CheckSummary {
    streams: usize,
    groups: usize,
}

impl<'a> Checked<'a> {
    fn of(path: &Path, t: &'a Topology) -> Checked<'a> {
        Checked {
            file: path.display().to_string(),
            streams: t
                .streams
                .iter()
                .map(|(stream, spec)| CheckedStream {
                    stream,
                    partitions: spec.partitions.0,
                    groups: spec.groups.keys().map(|g| g.0.as_str()).collect(),
                })
                .collect(),
            summary: CheckSummary {
                streams: t.streams.len(),
                groups: t.group_count(),
            },
        }
    }
}

/// `topology apply --json`: what was found and done.
#[derive(Debug, Serialize)]
struct Applied<'a> {
    file: String,
    /// Where (the password masked).
    redis: &'a str,
    streams: Vec<StreamOutcome>,
    summary: ApplySummary,
}

/// What `apply` found and did for one stream of the file.
#[derive(Debug, Serialize)]
struct StreamOutcome {
    stream: String,
    partitions: u32,
    status: StreamStatus,
    /// Why it differs, or why a missing stream was left missing.
    detail: Option<String>,
    groups: Vec<GroupOutcome>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum StreamStatus {
    Exists,
    /// Visibly not as the file says (see [`retention_differs`]).
    Differs,
    /// Created with its first group.
    Created,
    /// Neither there nor created: the file gives it no group.
    Missing,
}

#[derive(Debug, Serialize)]
struct GroupOutcome {
    group: String,
    /// `created` when it was missing (on any partition).
    status: GroupStatus,
    /// Where a created group starts; `None` for one that exists (its start
    /// cannot be read back from Redis).
    start: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum GroupStatus {
    Exists,
    Created,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize)]
struct ApplySummary {
    streams: usize,
    streams_created: usize,
    groups: usize,
    groups_created: usize,
    differ: usize,
}

/// Why a stream is missing after `apply`.
const MISSING: &str = "it has no groups here: its first publish creates it";

impl StreamOutcome {
    /// The text lines: the stream's, then one per group.
    fn lines(&self) -> Vec<String> {
        let stream = &self.stream;
        let status = match (self.status, &self.detail) {
            (StreamStatus::Exists, _) => "exists".to_owned(),
            (StreamStatus::Created, _) => "created".to_owned(),
            (StreamStatus::Differs, Some(why)) => format!("differs ({why})"),
            (StreamStatus::Differs, None) => "differs".to_owned(),
            (StreamStatus::Missing, _) => format!("missing ({MISSING})"),
        };
        let mut lines = vec![format!("stream {stream}: {status}")];
        for g in &self.groups {
            lines.push(match (&g.status, &g.start) {
                (GroupStatus::Created, Some(start)) => {
                    format!("group {stream} {}: created (start {start})", g.group)
                }
                (GroupStatus::Created, None) => format!("group {stream} {}: created", g.group),
                (GroupStatus::Exists, _) => format!("group {stream} {}: exists", g.group),
            });
        }
        lines
    }
}

impl ApplySummary {
    fn of(streams: &[StreamOutcome]) -> ApplySummary {
        let count = |status| streams.iter().filter(|s| s.status == status).count();
        let groups = streams.iter().flat_map(|s| &s.groups);
        ApplySummary {
            streams: streams.len(),
            streams_created: count(StreamStatus::Created),
            groups: groups.clone().count(),
            groups_created: groups.filter(|g| g.status == GroupStatus::Created).count(),
            differ: count(StreamStatus::Differs),
        }
    }

    fn line(&self) -> String {
        format!(
            "applied: {} streams ({} created), {} groups ({} created), {} differ",
            self.streams, self.streams_created, self.groups, self.groups_created, self.differ
        )
    }
}

/// Creates the missing groups of one stream (on every partition) and reports
/// what it found and did.
async fn apply_stream(
    conn: &mut Connection,
    stream: &str,
    spec: &StreamSpec,
) -> Result<StreamOutcome> {
    // The keys: the stream itself, or its partitions.
    let keys = match spec.partitions.0 {
        1 => vec![stream.to_owned()],
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
    let mut groups = Vec::with_capacity(spec.groups.len());
    for (group, g) in &spec.groups {
        let start = g.start.map(|s| s.0).unwrap_or_default();
        let mut created = false;
        for key in &keys {
            created |= create_group(conn, key, &group.0, start).await?;
        }
        created_stream |= created && !existed;
        groups.push(GroupOutcome {
            group: group.0.clone(),
            status: if created {
                GroupStatus::Created
            } else {
                GroupStatus::Exists
            },
            start: created.then(|| start.to_string()),
        });
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
    let (status, detail) = match (existed, differs_why) {
        (true, Some(why)) => (StreamStatus::Differs, Some(why)),
        (true, None) => (StreamStatus::Exists, None),
        (false, _) if created_stream => (StreamStatus::Created, None),
        (false, _) => (StreamStatus::Missing, Some(MISSING.to_owned())),
    };
    Ok(StreamOutcome {
        stream: stream.to_owned(),
        partitions: spec.partitions.0,
        status,
        detail,
        groups,
    })
}

/// What is visibly not as the retention says, if anything.
async fn retention_differs(
    conn: &mut Connection,
    stream: &str,
    spec: &StreamSpec,
) -> Result<Option<String>> {
    match spec.retention.retention {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str, start: Option<&str>) -> GroupOutcome {
        GroupOutcome {
            group: name.to_owned(),
            status: match start {
                Some(_) => GroupStatus::Created,
                None => GroupStatus::Exists,
            },
            start: start.map(str::to_owned),
        }
    }

    fn stream(
        status: StreamStatus,
        detail: Option<&str>,
        groups: Vec<GroupOutcome>,
    ) -> StreamOutcome {
        StreamOutcome {
            stream: "s".to_owned(),
            partitions: 1,
            status,
            detail: detail.map(str::to_owned),
            groups,
        }
    }

    #[test]
    fn text_and_json_say_the_same() {
        let streams = [
            stream(StreamStatus::Created, None, vec![group("g", Some("0"))]),
            stream(
                StreamStatus::Differs,
                Some("300 entries"),
                vec![group("a", None), group("b", Some("$"))],
            ),
            stream(StreamStatus::Missing, Some(MISSING), vec![]),
        ];
        assert_eq!(
            streams[0].lines(),
            ["stream s: created", "group s g: created (start 0)"]
        );
        assert_eq!(
            streams[1].lines(),
            [
                "stream s: differs (300 entries)",
                "group s a: exists",
                "group s b: created (start $)"
            ]
        );
        assert_eq!(
            streams[2].lines(),
            ["stream s: missing (it has no groups here: its first publish creates it)"]
        );
        let summary = ApplySummary::of(&streams);
        assert_eq!(
            summary.line(),
            "applied: 3 streams (1 created), 3 groups (2 created), 1 differ"
        );
        let v = serde_json::to_value(&streams[1]).unwrap();
        assert_eq!(v["status"], "differs");
        assert_eq!(v["detail"], "300 entries");
        assert_eq!(
            v["groups"][0],
            serde_json::json!({"group": "a", "status": "exists", "start": null})
        );
        assert_eq!(v["groups"][1]["start"], "$");
    }
}
