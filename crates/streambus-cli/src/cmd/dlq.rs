//! `streambus dlq`: list, replay or purge the dead letters of a stream (kept in
//! `{STREAM}:dlq`, see `streambus::dead_letter`).

use anyhow::{bail, Result};
use streambus::dead_letter::{self, DeadLetter};
use streambus::{Client, Connection, EntryId};

use crate::cli::{DlqArgs, DlqCommand, DlqListArgs, DlqPurgeArgs, DlqReplayArgs};
use crate::output::{self, Lines};

/// Dead letters read per XRANGE while listing.
const PAGE: u64 = 500;
/// Widest reason and fields summary in the table, in characters.
const REASON_WIDTH: usize = 50;
const FIELDS_WIDTH: usize = 60;

pub async fn run(client: &Client, args: DlqArgs) -> Result<()> {
    let mut conn = super::connect(client).await?;
    match args.command {
        DlqCommand::List(args) => list(&mut conn, args).await,
        DlqCommand::Replay(args) => replay(&mut conn, args).await,
        DlqCommand::Purge(args) => purge(&mut conn, args).await,
    }
}

async fn list(conn: &mut Connection, args: DlqListArgs) -> Result<()> {
    let stream = &args.stream;
    let mut letters = Vec::new();
    let mut after = None;
    loop {
        let want = args
            .count
            .map_or(PAGE, |c| c.saturating_sub(letters.len() as u64).min(PAGE));
        if want == 0 {
            break;
        }
        let page = dead_letter::list(conn, stream, after, want as usize).await?;
        let full = page.len() as u64 >= want;
        after = page.last().map(|d| d.id);
        letters.extend(page);
        if !full {
            break;
        }
    }
    if letters.is_empty() {
        eprintln!("no dead letters for {stream}");
        return Ok(());
    }
    let mut out = Lines::stdout();
    if args.json {
        for letter in &letters {
            out.json(letter)?;
        }
    } else {
        for row in table(&letters) {
            out.line(row)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// A header, then one row per dead letter; `-` where a letter lacks metadata.
fn table(letters: &[DeadLetter]) -> Vec<String> {
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
    rows.extend(letters.iter().map(|d| {
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
    output::table(&rows)
}

async fn replay(conn: &mut Connection, args: DlqReplayArgs) -> Result<()> {
    let stream = &args.stream;
    let mut out = Lines::stdout();
    if args.all {
        let n = dead_letter::replay_all(conn, stream).await?;
        out.line(format_args!("replayed {n} dead letters onto {stream}"))?;
        out.flush()?;
        return Ok(());
    }
    let mut unknown: Vec<EntryId> = Vec::new();
    for &id in &args.ids {
        match dead_letter::replay(conn, stream, id).await? {
            Some(new_id) => {
                out.line(format_args!("replayed {id} as {new_id}"))?;
                // Each line as it happens: a later failure must not hide what
                // was already replayed.
                out.flush()?;
            }
            None => unknown.push(id),
        }
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

async fn purge(conn: &mut Connection, args: DlqPurgeArgs) -> Result<()> {
    let stream = &args.stream;
    if !args.yes {
        let n = dead_letter::count(conn, stream).await?;
        if n == 0 {
            eprintln!("no dead letters for {stream}");
            return Ok(());
        }
        bail!("this deletes {n} dead letters of {stream}; run again with --yes");
    }
    let n = dead_letter::purge(conn, stream).await?;
    let mut out = Lines::stdout();
    out.line(format_args!("purged {n} dead letters"))?;
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
