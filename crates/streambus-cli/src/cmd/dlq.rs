//! `streambus dlq`: list, replay or purge the dead letters of a stream (kept in
//! `{STREAM}:dlq`, see `streambus::admin::dead_letter`).
//!
//! A partitioned stream has a dead-letter stream per partition (in the
//! partition's slot): `list` merges them by id (with a `PARTITION` column, or
//! a `partition` field in JSON), `replay` puts a dead letter back onto its own
//! partition, `purge` empties them all.

use anyhow::{bail, Result};
use serde_json::json;
use streambus::admin::dead_letter::{self, DeadLetter};
use streambus::{Client, Connection, EntryId};

use crate::cli::{DlqArgs, DlqCommand, DlqListArgs, DlqPurgeArgs, DlqReplayArgs, PartitionsArg};
use crate::output::{self, Lines};
use crate::topology::Topology;

/// Dead letters read per XRANGE while listing.
const PAGE: u64 = 500;
/// Widest reason and fields summary in the table, in characters.
const REASON_WIDTH: usize = 50;
const FIELDS_WIDTH: usize = 60;

pub async fn run(client: &Client, args: DlqArgs, topology: Option<&Topology>) -> Result<()> {
    let mut conn = super::connect(client).await?;
    let (stream, partitions) = match &args.command {
        DlqCommand::List(a) => (&a.stream, a.partitions),
        DlqCommand::Replay(a) => (&a.stream, a.partitions),
        DlqCommand::Purge(a) => (&a.stream, a.partitions),
    };
    let sources = sources(stream, partitions, topology)?;
    match args.command {
        DlqCommand::List(args) => list(&mut conn, args, &sources).await,
        DlqCommand::Replay(args) => replay(&mut conn, args, &sources).await,
        DlqCommand::Purge(args) => purge(&mut conn, args, &sources).await,
    }
}

/// The streams whose dead letters are meant: the stream itself (no index), or
/// each partition (its index and key).
fn sources(
    stream: &str,
    arg: PartitionsArg,
    topology: Option<&Topology>,
) -> Result<Vec<(Option<usize>, String)>> {
    Ok(match super::partitions(arg, topology, stream)? {
        None => vec![(None, stream.to_owned())],
        Some(p) => p
            .keys()
            .iter()
            .enumerate()
            .map(|(i, k)| (Some(i), k.clone()))
            .collect(),
    })
}

async fn list(
    conn: &mut Connection,
    args: DlqListArgs,
    sources: &[(Option<usize>, String)],
) -> Result<()> {
    let stream = &args.stream;
    // (partition, dead letter); the oldest `count` of each partition, then
    // the oldest `count` of those.
    let mut letters: Vec<(Option<usize>, DeadLetter)> = Vec::new();
    for (index, key) in sources {
        let mut got = 0u64;
        let mut after = None;
        loop {
            let want = args.count.map_or(PAGE, |c| c.saturating_sub(got).min(PAGE));
            if want == 0 {
                break;
            }
            let page = dead_letter::list(conn, key, after, want as usize).await?;
            let full = page.len() as u64 >= want;
            after = page.last().map(|d| d.id);
            got += page.len() as u64;
            letters.extend(page.into_iter().map(|d| (*index, d)));
            if !full {
                break;
            }
        }
    }
    if sources.len() > 1 {
        letters.sort_by_key(|(_, d)| d.id);
        if let Some(c) = args.count {
            letters.truncate(c as usize);
        }
    }
    if letters.is_empty() {
        eprintln!("no dead letters for {stream}");
        return Ok(());
    }
    let mut out = Lines::stdout();
    if args.json {
        for (index, letter) in &letters {
            match index {
                None => out.json(letter)?,
                Some(i) => {
                    let mut v = serde_json::to_value(letter).map_err(std::io::Error::from)?;
                    v["partition"] = (*i).into();
                    out.json(&v)?;
                }
            }
        }
    } else if sources.len() > 1 {
        let rows = rows(letters.iter().map(|(_, d)| d));
        let partition =
            |i: Option<usize>| i.map_or_else(|| "PARTITION".to_owned(), |i| i.to_string());
        let indexes = std::iter::once(None).chain(letters.iter().map(|(i, _)| *i));
        let rows: Vec<[String; 8]> = indexes
            .zip(rows)
            .map(|(i, [a, b, c, d, e, f, g])| [partition(i), a, b, c, d, e, f, g])
            .collect();
        for row in output::table(&rows) {
            out.line(row)?;
        }
    } else {
        let letters: Vec<&DeadLetter> = letters.iter().map(|(_, d)| d).collect();
        for row in output::table(&rows(letters)) {
            out.line(row)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// A header, then one row per dead letter; `-` where a letter lacks metadata.
#[cfg(test)]
fn table(letters: &[DeadLetter]) -> Vec<String> {
    output::table(&rows(letters))
}

/// The header and one row per dead letter.
fn rows<'a>(letters: impl IntoIterator<Item = &'a DeadLetter>) -> Vec<[String; 7]> {
    let dash = || "-".to_owned();
    let mut rows = vec![[
        "ID".to_owned(),
        "SOURCE-ID".to_owned(),
        "DELIVERIES".to_owned(),
        "GROUP".to_owned(),
        "CONSUMER".to_owned(),
        "REASON".to_owned(),
        "FIELDS".to_owned(),
    ]];
    rows.extend(letters.into_iter().map(|d| {
        let fields: Vec<String> = d
            .fields
            .iter()
            .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
            .collect();
        [
            d.id.to_string(),
            d.source_id.map_or_else(dash, |id| id.to_string()),
            d.deliveries.map_or_else(dash, |n| n.to_string()),
            d.group.clone().unwrap_or_else(dash),
            d.consumer.clone().unwrap_or_else(dash),
            d.reason
                .as_deref()
                .map_or_else(dash, |r| output::cell(r, REASON_WIDTH)),
            output::cell(&fields.join(" "), FIELDS_WIDTH),
        ]
    }));
    rows
}

async fn replay(
    conn: &mut Connection,
    args: DlqReplayArgs,
    sources: &[(Option<usize>, String)],
) -> Result<()> {
    let stream = &args.stream;
    let mut out = Lines::stdout();
    if args.all {
        let mut n = 0;
        for (_, key) in sources {
            n += dead_letter::replay_all(conn, key).await?;
        }
        if args.json {
            out.json(&json!({ "stream": stream, "replayed": n }))?;
        } else {
            out.line(format_args!("replayed {n} dead letters onto {stream}"))?;
        }
        out.flush()?;
        return Ok(());
    }
    let mut unknown: Vec<EntryId> = Vec::new();
    'ids: for &id in &args.ids {
        // A dead letter goes back onto its own partition: the first whose
        // dead-letter stream has this id.
        for (index, key) in sources {
            if let Some(new_id) = dead_letter::replay(conn, key, id).await? {
                match index {
                    _ if args.json => out.json(&json!({
                        "id": id.to_string(),
                        "new_id": new_id.to_string(),
                        "partition": index,
                    }))?,
                    None => out.line(format_args!("replayed {id} as {new_id}"))?,
                    Some(i) => {
                        out.line(format_args!("replayed {id} as {new_id} (partition {i})"))?
                    }
                }
                // Each line as it happens: a later failure must not hide what
                // was already replayed.
                out.flush()?;
                continue 'ids;
            }
        }
        unknown.push(id);
    }
    if !unknown.is_empty() {
        let ids: Vec<String> = unknown.iter().map(ToString::to_string).collect();
        bail!(
            "no dead letter {} for {stream} (the others were replayed)",
            ids.join(", ")
        );
    }
    Ok(())
}

async fn purge(
    conn: &mut Connection,
    args: DlqPurgeArgs,
    sources: &[(Option<usize>, String)],
) -> Result<()> {
    let stream = &args.stream;
    if !args.yes {
        let mut n = 0;
        for (_, key) in sources {
            n += dead_letter::count(conn, key).await?;
        }
        if n == 0 {
            eprintln!("no dead letters for {stream}");
            return Ok(());
        }
        bail!("this deletes {n} dead letters of {stream}; run again with --yes");
    }
    let mut n = 0;
    for (_, key) in sources {
        n += dead_letter::purge(conn, key).await?;
    }
    let mut out = Lines::stdout();
    if args.json {
        out.json(&json!({ "stream": stream, "purged": n }))?;
    } else {
        out.line(format_args!("purged {n} dead letters"))?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use streambus::Entry;

    #[test]
    fn table_shows_metadata_and_a_fields_summary() {
        let entry = Entry {
            stream: "{s}:dlq".into(),
            id: EntryId::new(5, 0),
            fields: streambus::Fields::from_pairs([
                ("data", "{\"n\":1}"),
                ("reason", "command exited 65 (EX_DATAERR)"),
                ("group", "g"),
                ("consumer", "c"),
                ("deliveries", "1"),
                ("source_id", "1-0"),
                ("source_stream", "s"),
            ]),
        };
        let rows = table(&[DeadLetter::from_entry(entry)]);
        assert_eq!(rows.len(), 2);
        assert!(
            rows[0].starts_with("ID   SOURCE-ID  DELIVERIES  GROUP"),
            "{rows:?}"
        );
        assert!(
            rows[1].starts_with("5-0  1-0        1           g"),
            "{rows:?}"
        );
        assert!(
            rows[1].ends_with("command exited 65 (EX_DATAERR)  data={\"n\":1}"),
            "{rows:?}"
        );
    }
}
