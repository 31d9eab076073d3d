//! The end of a run: the dead letters found, and the summary that proves
//! nothing was lost.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use streambus::config::format_duration;
use streambus::{Connection, WorkerReport};

use super::pipeline::{self, lock, Stats, ALERTS, STAGES};
use super::{DLQ_PAGE, DRAIN_DEADLINE};

/// This run's dead letters, by stream: (alert ids, reasons seen).
pub(super) struct DeadLetters {
    ids: pipeline::IdSet,
    /// Dead letters of this run in `{aurora:alerts}:dlq`.
    in_alerts_dlq: u64,
    /// One reason, as an example.
    example_reason: Option<String>,
}

pub(super) async fn dead_letters(conn: &mut Connection, run: &str) -> Result<DeadLetters> {
    let mut out = DeadLetters {
        ids: pipeline::IdSet::default(),
        in_alerts_dlq: 0,
        example_reason: None,
    };
    for stage in STAGES {
        let mut after = None;
        loop {
            let page =
                streambus::admin::dead_letter::list(conn, stage.stream, after, DLQ_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for dl in &page {
                let Some(data) = dl.fields.get_str("data") else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                    continue;
                };
                if v["run"] != run {
                    continue;
                }
                if let Some(id) = v["alert_id"].as_u64() {
                    out.ids.insert(id);
                }
                if stage.stream == ALERTS {
                    out.in_alerts_dlq += 1;
                }
                if out.example_reason.is_none() {
                    out.example_reason = dl.reason.clone();
                }
            }
            if page.len() < DLQ_PAGE {
                break;
            }
        }
    }
    Ok(out)
}

pub(super) struct Summary {
    pub(super) lines: Vec<String>,
    pub(super) lost: u64,
}

impl Summary {
    pub(super) fn new(
        stats: &Stats,
        reports: &[WorkerReport],
        dead: &DeadLetters,
        cut_skipped: Option<&str>,
        elapsed: Duration,
        drained: bool,
    ) -> Summary {
        let published_ids = lock(&stats.published_ids);
        let final_ids = lock(&stats.final_ids);
        let lost = published_ids
            .iter()
            .filter(|id| !final_ids.contains(*id) && !dead.ids.contains(*id))
            .count() as u64;
        let reclaimed: u64 = reports.iter().map(|r| r.reclaimed).sum();
        let retried: u64 = reports.iter().map(|r| r.retried).sum();
        let security = stats.security_published.load(Ordering::Relaxed);
        let cps = stats.cps_published.load(Ordering::Relaxed);
        let malformed = stats.malformed_published.load(Ordering::Relaxed);
        let mut lines = vec![
            format!("demo summary ({}):", format_duration(elapsed)),
            format!(
                "  published:     {} alerts ({security} security, {cps} CPS)",
                published_ids.len()
            ),
            format!(
                "  processed:     {}",
                STAGES
                    .iter()
                    .enumerate()
                    .map(|(i, s)| format!("{} {}", s.group, stats.processed(i)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!(
                "  redelivered:   {} (reclaimed {reclaimed}, retried {retried})",
                reclaimed + retried
            ),
            format!(
                "  dead-lettered: {} ({} in {{{ALERTS}}}:dlq{})",
                dead.ids.len(),
                dead.in_alerts_dlq,
                dead.example_reason
                    .as_deref()
                    .map(|r| format!("; e.g. {}", crate::output::cell(r, 100)))
                    .unwrap_or_default()
            ),
            format!("  malformed:     {malformed} sent"),
            format!(
                "  network cut:   {}",
                cut_summary(cut_skipped, &stats.cut, drained)
            ),
        ];
        let failures = stats.publish_failures.load(Ordering::Relaxed);
        if failures > 0 {
            lines.push(format!(
                "  publish errors: {failures} alerts (not counted as published)"
            ));
        }
        if !drained {
            lines.push(format!(
                "  not drained within {}: alerts still in flight count as lost",
                format_duration(DRAIN_DEADLINE)
            ));
        }
        lines.push(format!("lost: {lost}"));
        match stats.latency_quantiles(&[0.5, 0.99]) {
            Some(q) => lines.push(format!(
                "latency alert → result: p50 {}, p99 {} ({} samples)",
                format_duration(q[0]),
                format_duration(q[1]),
                lock(&stats.latencies).len()
            )),
            None => lines.push("latency alert → result: no results".to_owned()),
        }
        Summary { lines, lost }
    }

    pub(super) fn print(&self) -> Result<()> {
        let mut out = crate::output::Lines::stdout();
        for l in &self.lines {
            out.line(l)?;
        }
        out.flush()?;
        Ok(())
    }
}

/// The summary's word on the network cut.
pub(super) fn cut_summary(
    skipped: Option<&str>,
    cut: &pipeline::CutTimes,
    drained: bool,
) -> String {
    let Some(length) = cut.length() else {
        return match skipped {
            Some(why) => format!("skipped ({why})"),
            None => "none (the run ended before it)".to_owned(),
        };
    };
    let length = format_duration(length);
    match cut.resumed_after() {
        Some(after) => format!(
            "{length} black hole; work resumed {} after healing",
            format_duration(after)
        ),
        // Drained: every alert was handled, so none was published during it.
        None if drained => {
            format!("{length} black hole; no alert published during it to time the recovery")
        }
        None => format!("{length} black hole; work had not resumed by the end"),
    }
}
