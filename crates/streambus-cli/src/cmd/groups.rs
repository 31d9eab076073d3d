//! `streambus groups`: list, create or destroy consumer groups.
//!
//! A partitioned stream has its groups on every partition: create and destroy
//! act on each; the list shows per group the totals over the partitions, then
//! each partition's groups.

use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::json;
use streambus::admin::group::{create_group, destroy_group, list_groups, GroupInfo};
use streambus::partition::Partitions;
use streambus::{Client, Connection, ErrorKind};

use crate::cli::GroupsArgs;
use crate::output::{self, Lines};
use crate::topology::Topology;

pub async fn run(client: &Client, args: GroupsArgs, topology: Option<&Topology>) -> Result<()> {
    let mut conn = super::connect(client).await?;
    if let Some(p) = super::partitions(args.partitions, topology, &args.stream)? {
        return partitioned(&mut conn, &args, &p).await;
    }
    let stream = &args.stream;
    let mut out = Lines::stdout();
    if let Some(group) = &args.create {
        let created = create_group(&mut conn, stream, group, args.from).await?;
        if args.json {
            out.json(&json!({ "stream": stream, "group": group, "created": created }))?;
        } else if created {
            out.line(format_args!("created group {group} on {stream}"))?;
        } else {
            out.line(format_args!("group {group} already exists on {stream}"))?;
        }
    } else if let Some(group) = &args.destroy {
        // XGROUP DESTROY does not say how much it dropped: look first.
        let groups = list_groups(&mut conn, stream).await?;
        let Some(info) = groups.iter().find(|g| &g.name == group) else {
            bail!("no group {group} on {stream}");
        };
        if !destroy_group(&mut conn, stream, group).await? {
            bail!("no group {group} on {stream}");
        }
        if args.json {
            out.json(&json!({
                "stream": stream,
                "group": group,
                "destroyed": true,
                "pending": info.pending,
            }))?;
        } else {
            out.line(format_args!(
                "destroyed group {group} (it had {} pending entries)",
                info.pending
            ))?;
        }
    } else {
        let groups = list_groups(&mut conn, stream).await?;
        if args.json {
            out.json(&groups)?;
        } else {
            for row in table(&groups) {
                out.line(row)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// One group over the partitions of a stream (`groups --json`).
#[derive(Debug, Serialize)]
struct GroupTotal {
    name: String,
    /// Partitions that have the group.
    partitions: usize,
    pending: u64,
    /// `None` when any partition cannot tell.
    lag: Option<u64>,
}

/// One partition's groups (`groups --json`).
#[derive(Debug, Serialize)]
struct PartitionGroups {
    partition: usize,
    key: String,
    /// Whether the partition's key exists (a missing one has no groups).
    exists: bool,
    groups: Vec<GroupInfo>,
}

/// `groups --json` of a partitioned stream.
#[derive(Debug, Serialize)]
struct PartitionedGroups<'a> {
    stream: &'a str,
    partitions: usize,
    groups: Vec<GroupTotal>,
    by_partition: Vec<PartitionGroups>,
}

async fn partitioned(conn: &mut Connection, args: &GroupsArgs, p: &Partitions) -> Result<()> {
    let stream = &args.stream;
    let n = p.len();
    let mut out = Lines::stdout();
    if let Some(group) = &args.create {
        let mut created = 0;
        for key in p.keys() {
            if create_group(conn, key, group, args.from).await? {
                created += 1;
            }
        }
        match created {
            c if args.json => out.json(&json!({
                "stream": stream,
                "group": group,
                "partitions": n,
                "created": c,
            }))?,
            0 => out.line(format_args!(
                "group {group} already exists on {stream} ({n} partitions)"
            ))?,
            c if c == n => out.line(format_args!(
                "created group {group} on {stream} ({n} partitions)"
            ))?,
            c => out.line(format_args!(
                "created group {group} on {c} of the {n} partitions of {stream} (the others had it)"
            ))?,
        }
    } else if let Some(group) = &args.destroy {
        let (mut destroyed, mut pending) = (0, 0);
        for part in list(conn, p).await? {
            let Some(info) = part.groups.iter().find(|g| &g.name == group) else {
                continue;
            };
            if destroy_group(conn, &part.key, group).await? {
                destroyed += 1;
                pending += info.pending;
            }
        }
        if destroyed == 0 {
            bail!("no group {group} on {stream} (on none of its {n} partitions)");
        }
        if args.json {
            out.json(&json!({
                "stream": stream,
                "group": group,
                "partitions": n,
                "destroyed": destroyed,
                "pending": pending,
            }))?;
        } else {
            out.line(format_args!(
                "destroyed group {group} on {destroyed} of the {n} partitions of {stream} (they had {pending} pending entries)"
            ))?;
        }
    } else {
        let parts = list(conn, p).await?;
        if !parts.iter().any(|part| part.exists) {
            bail!("stream {stream:?} does not exist: none of its {n} partitions does (create a group with `streambus groups {stream} --partitions {n} --create GROUP`)");
        }
        let totals = totals(&parts);
        if args.json {
            out.json(&PartitionedGroups {
                stream,
                partitions: n,
                groups: totals,
                by_partition: parts,
            })?;
        } else {
            for row in partitioned_tables(&totals, &parts) {
                out.line(row)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// The groups of every partition (none for a partition that does not exist).
async fn list(conn: &mut Connection, p: &Partitions) -> Result<Vec<PartitionGroups>> {
    let mut parts = Vec::with_capacity(p.len());
    for (i, key) in p.keys().iter().enumerate() {
        let (exists, groups) = match list_groups(conn, key).await {
            Ok(g) => (true, g),
            Err(e) if e.kind() == ErrorKind::NoStream => (false, Vec::new()),
            Err(e) => return Err(e.into()),
        };
        parts.push(PartitionGroups {
            partition: i,
            key: key.clone(),
            exists,
            groups,
        });
    }
    Ok(parts)
}

/// Per group name, in order of first appearance: sums over the partitions.
fn totals(parts: &[PartitionGroups]) -> Vec<GroupTotal> {
    let mut totals: Vec<GroupTotal> = Vec::new();
    for g in parts.iter().flat_map(|p| &p.groups) {
        match totals.iter_mut().find(|t| t.name == g.name) {
            Some(t) => {
                t.partitions += 1;
                t.pending += g.pending;
                t.lag = t.lag.zip(g.lag).map(|(a, b)| a + b);
            }
            None => totals.push(GroupTotal {
                name: g.name.clone(),
                partitions: 1,
                pending: g.pending,
                lag: g.lag,
            }),
        }
    }
    totals
}

/// The totals table, a blank line, then one row per group of each partition.
fn partitioned_tables(totals: &[GroupTotal], parts: &[PartitionGroups]) -> Vec<String> {
    let lag = |l: Option<u64>| l.map_or_else(|| "?".to_owned(), |l| l.to_string());
    let mut rows = vec![[
        "GROUP".to_owned(),
        "PARTITIONS".to_owned(),
        "PENDING".to_owned(),
        "LAG".to_owned(),
    ]];
    rows.extend(totals.iter().map(|t| {
        [
            t.name.clone(),
            format!("{}/{}", t.partitions, parts.len()),
            t.pending.to_string(),
            lag(t.lag),
        ]
    }));
    let mut lines = output::table(&rows);
    lines.push(String::new());
    let mut rows = vec![[
        "PARTITION".to_owned(),
        "KEY".to_owned(),
        "GROUP".to_owned(),
        "CONSUMERS".to_owned(),
        "PENDING".to_owned(),
        "LAST-DELIVERED".to_owned(),
        "LAG".to_owned(),
    ]];
    for part in parts {
        if part.groups.is_empty() {
            let what = if part.exists {
                "(no groups)"
            } else {
                "(missing)"
            };
            rows.push([
                part.partition.to_string(),
                part.key.clone(),
                what.to_owned(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        rows.extend(part.groups.iter().map(|g| {
            [
                part.partition.to_string(),
                part.key.clone(),
                g.name.clone(),
                g.consumers.to_string(),
                g.pending.to_string(),
                g.last_delivered_id.to_string(),
                lag(g.lag),
            ]
        }));
    }
    lines.extend(output::table(&rows));
    lines
}

/// An aligned table: a header, then one row per group. Lag is `?` when Redis
/// cannot tell.
fn table(groups: &[GroupInfo]) -> Vec<String> {
    let mut rows = vec![[
        "GROUP".to_owned(),
        "CONSUMERS".to_owned(),
        "PENDING".to_owned(),
        "LAST-DELIVERED".to_owned(),
        "LAG".to_owned(),
    ]];
    rows.extend(groups.iter().map(|g| {
        [
            g.name.clone(),
            g.consumers.to_string(),
            g.pending.to_string(),
            g.last_delivered_id.to_string(),
            g.lag.map_or_else(|| "?".to_owned(), |l| l.to_string()),
        ]
    }));
    output::table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_aligned() {
        let rows = table(&[]);
        assert_eq!(rows, ["GROUP  CONSUMERS  PENDING  LAST-DELIVERED  LAG"]);
    }
}
