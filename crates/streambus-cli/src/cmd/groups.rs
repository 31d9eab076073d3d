//! `streambus groups`: list, create or destroy consumer groups.

use anyhow::{bail, Result};
use streambus::group::{create_group, destroy_group, list_groups, GroupInfo};
use streambus::Client;

use crate::cli::GroupsArgs;
use crate::output::{self, Lines};

pub async fn run(client: &Client, args: GroupsArgs) -> Result<()> {
    let mut conn = super::connect(client).await?;
    let stream = &args.stream;
    let mut out = Lines::stdout();
    if let Some(group) = &args.create {
        if create_group(&mut conn, stream, group, args.from).await? {
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
        out.line(format_args!(
            "destroyed group {group} (it had {} pending entries)",
            info.pending
        ))?;
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
