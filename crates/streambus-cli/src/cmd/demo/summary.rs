//! The end of a run: the dead letters found, and the summary that proves
//! nothing was lost.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
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

/// The end of a run, as facts: printed as text ([`Summary::lines`]) or, with
/// `demo --json`, as one JSON object. Durations in milliseconds.
#[derive(Debug, Serialize)]
pub(super) struct Summary {
    #[serde(rename = "duration_ms", serialize_with = "ms")]
    duration: Duration,
    published: Published,
    /// Handler runs that succeeded, per group in pipeline order.
    processed: Vec<Processed>,
    redelivered: Redelivered,
    dead_lettered: DeadLettered,
    /// Malformed alerts sent on purpose (each must be dead-lettered).
    malformed_sent: u64,
    network_cut: NetworkCut,
    /// Alerts whose publish failed (not counted as published).
    publish_errors: u64,
    /// Whether every group drained within the deadline (if not, alerts still
    /// in flight count as lost).
    drained: bool,
    /// Published alerts neither handled to the end nor dead-lettered.
    pub(super) lost: u64,
    /// Alert → result; `None` when no result came.
    latency: Option<Latency>,
}

#[derive(Debug, Serialize)]
struct Published {
    alerts: u64,
    security: u64,
    cps: u64,
}

#[derive(Debug, Serialize)]
struct Processed {
    group: &'static str,
    processed: u64,
}

#[derive(Debug, Serialize)]
struct Redelivered {
    total: u64,
    reclaimed: u64,
    retried: u64,
}

#[derive(Debug, Serialize)]
struct DeadLettered {
    /// This run's alerts dead-lettered, over every stage.
    alerts: u64,
    /// Of those, the dead letters in `{aurora:alerts}:dlq`.
    in_alerts_dlq: u64,
    example_reason: Option<String>,
}

#[derive(Debug, Serialize)]
struct NetworkCut {
    /// Why there was none, when it was skipped.
    skipped: Option<String>,
    /// How long the workers' network was cut; `None`: no cut.
    #[serde(rename = "length_ms", serialize_with = "opt_ms")]
    length: Option<Duration>,
    /// From the heal to the first alert processed that was published during
    /// the cut; `None` when no such alert was processed.
    #[serde(rename = "resumed_after_ms", serialize_with = "opt_ms")]
    resumed_after: Option<Duration>,
}

#[derive(Debug, Serialize)]
struct Latency {
    #[serde(rename = "p50_ms", serialize_with = "fractional_ms")]
    p50: Duration,
    #[serde(rename = "p99_ms", serialize_with = "fractional_ms")]
    p99: Duration,
    samples: usize,
}

/// Whole milliseconds, as `monitor --json` writes durations.
fn ms<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn opt_ms<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match d {
        Some(d) => ms(d, s),
        None => s.serialize_none(),
    }
}

/// Milliseconds with a fraction, as `bench --json` writes latencies.
fn fractional_ms<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
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
        let latency = stats.latency_quantiles(&[0.5, 0.99]).map(|q| Latency {
            p50: q[0],
            p99: q[1],
            samples: lock(&stats.latencies).len(),
        });
        Summary {
            duration: elapsed,
            published: Published {
                alerts: published_ids.len(),
                security: stats.security_published.load(Ordering::Relaxed),
                cps: stats.cps_published.load(Ordering::Relaxed),
            },
            processed: STAGES
                .iter()
                .enumerate()
                .map(|(i, s)| Processed {
                    group: s.group,
                    processed: stats.processed(i),
                })
                .collect(),
            redelivered: Redelivered {
                total: reclaimed + retried,
                reclaimed,
                retried,
            },
            dead_lettered: DeadLettered {
                alerts: dead.ids.len(),
                in_alerts_dlq: dead.in_alerts_dlq,
                example_reason: dead.example_reason.clone(),
            },
            malformed_sent: stats.malformed_published.load(Ordering::Relaxed),
            network_cut: NetworkCut {
                skipped: cut_skipped.map(str::to_owned),
                length: stats.cut.length(),
                resumed_after: stats.cut.resumed_after(),
            },
            publish_errors: stats.publish_failures.load(Ordering::Relaxed),
            drained,
            lost,
            latency,
        }
    }

    /// The summary as people read it.
    fn lines(&self) -> Vec<String> {
        let p = &self.published;
        let r = &self.redelivered;
        let d = &self.dead_lettered;
        let mut lines = vec![
            format!("demo summary ({}):", format_duration(self.duration)),
            format!(
                "  published:     {} alerts ({} security, {} CPS)",
                p.alerts, p.security, p.cps
            ),
            format!(
                "  processed:     {}",
                self.processed
                    .iter()
                    .map(|s| format!("{} {}", s.group, s.processed))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!(
                "  redelivered:   {} (reclaimed {}, retried {})",
                r.total, r.reclaimed, r.retried
            ),
            format!(
                "  dead-lettered: {} ({} in {{{ALERTS}}}:dlq{})",
                d.alerts,
                d.in_alerts_dlq,
                d.example_reason
                    .as_deref()
                    .map(|r| format!("; e.g. {}", crate::output::cell(r, 100)))
                    .unwrap_or_default()
            ),
            format!("  malformed:     {} sent", self.malformed_sent),
            format!(
                "  network cut:   {}",
                cut_summary(&self.network_cut, self.drained)
            ),
        ];
        if self.publish_errors > 0 {
            lines.push(format!(
                "  publish errors: {} alerts (not counted as published)",
                self.publish_errors
            ));
        }
        if !self.drained {
            lines.push(format!(
                "  not drained within {}: alerts still in flight count as lost",
                format_duration(DRAIN_DEADLINE)
            ));
        }
        lines.push(format!("lost: {}", self.lost));
        match &self.latency {
            Some(l) => lines.push(format!(
                "latency alert → result: p50 {}, p99 {} ({} samples)",
                format_duration(l.p50),
                format_duration(l.p99),
                l.samples
            )),
            None => lines.push("latency alert → result: no results".to_owned()),
        }
        lines
    }

    /// On stdout: the lines, or with `json` one JSON object.
    pub(super) fn print(&self, json: bool) -> Result<()> {
        let mut out = crate::output::Lines::stdout();
        if json {
            out.json(self)?;
        } else {
            for l in self.lines() {
                out.line(l)?;
            }
        }
        out.flush()?;
        Ok(())
    }
}

/// The summary's word on the network cut.
fn cut_summary(cut: &NetworkCut, drained: bool) -> String {
    let Some(length) = cut.length else {
        return match &cut.skipped {
            Some(why) => format!("skipped ({why})"),
            None => "none (the run ended before it)".to_owned(),
        };
    };
    let length = format_duration(length);
    match cut.resumed_after {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json_say_the_same() {
        let ms = Duration::from_millis;
        let summary = Summary {
            duration: ms(3200),
            published: Published {
                alerts: 900,
                security: 675,
                cps: 225,
            },
            processed: vec![Processed {
                group: "alert-processor",
                processed: 661,
            }],
            redelivered: Redelivered {
                total: 7,
                reclaimed: 5,
                retried: 2,
            },
            dead_lettered: DeadLettered {
                alerts: 14,
                in_alerts_dlq: 14,
                example_reason: None,
            },
            malformed_sent: 14,
            network_cut: NetworkCut {
                skipped: None,
                length: Some(ms(500)),
                resumed_after: Some(ms(1250)),
            },
            publish_errors: 0,
            drained: true,
            lost: 0,
            latency: Some(Latency {
                p50: Duration::from_micros(2500),
                p99: ms(40),
                samples: 886,
            }),
        };
        assert_eq!(
            summary.lines(),
            [
                "demo summary (3.2s):",
                "  published:     900 alerts (675 security, 225 CPS)",
                "  processed:     alert-processor 661",
                "  redelivered:   7 (reclaimed 5, retried 2)",
                "  dead-lettered: 14 (14 in {aurora:alerts}:dlq)",
                "  malformed:     14 sent",
                "  network cut:   500ms black hole; work resumed 1.2s after healing",
                "lost: 0",
                "latency alert → result: p50 2ms, p99 40ms (886 samples)",
            ]
        );
        let v = serde_json::to_value(&summary).unwrap();
        assert_eq!(v["duration_ms"], 3200);
        assert_eq!(
            v["network_cut"],
            serde_json::json!({"skipped": null, "length_ms": 500, "resumed_after_ms": 1250})
        );
        assert_eq!(v["latency"]["p50_ms"], 2.5);
        assert_eq!(v["processed"][0]["group"], "alert-processor");
        assert_eq!(v["lost"], 0);
    }
}
