//! `streambus scale`: how many consumers a group should have.
//!
//! Two answers, from `streambus::admin::scaler`:
//!
//! 1. The reference package's rule, in its words: `Consumers should be OUT as
//!    stream length (..) / pending (..) rate is ..%`, with the group's lag as
//!    the "stream length". When Redis cannot tell the lag, that is said instead
//!    of a guess.
//! 2. The throughput [`Advisor`]: two samples `--window` apart give the arrival
//!    and ack rates, the time to drain the lag and a target consumer count, with
//!    its reasons. One run has no history, so the advisor's scale-in (which
//!    waits until demand has been low for its cool-down) shows as a reason, not
//!    as a target below the current count.
//!
//! With `--partitions N` (or the topology file's `partitions`) the samples add
//! up every partition of the stream, and the consumers counted are the distinct
//! consumer names: one per member process. The advice never goes above N
//! consumers (one partition is served by one member at a time).
//!
//! `--json` prints one object: `rate` and `suggestion` (the reference rule;
//! `null` when the lag is unknown), `sentence` (its line, or `null`),
//! `window_ms`, and `advice` (`target`, `current`, `suggestion`,
//! `arrival_rate`, `ack_rate`, `drain_time_ms`, `consumer_capacity`, `reasons`).

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;
use streambus::admin::scaler::{self, Advice, Sample};
use streambus::admin::scaler::{Advisor, AdvisorConfig};
use streambus::config::format_duration;
use streambus::Client;

use super::settings::layered;
use crate::cli::ScaleArgs;
use crate::output::Lines;
use crate::topology::Topology;

pub async fn run(client: &Client, args: ScaleArgs, topology: Option<&Topology>) -> Result<()> {
    let partitions = super::partitions(args.partitions, topology, &args.stream)?;
    scaler::validate_thresholds(args.scale_out_rate, args.scale_in_rate)
        .context("invalid --scale-out-rate / --scale-in-rate")?;
    // The topology file has no scaler settings: flags over the defaults.
    let defaults = AdvisorConfig::default();
    let mut max_consumers = layered(args.max_consumers, None, defaults.max_consumers);
    if let Some(p) = &partitions {
        // More members than partitions would have nothing to read.
        max_consumers = max_consumers.min(p.len() as u64);
    }
    let config = AdvisorConfig {
        min_consumers: layered(args.min_consumers, None, defaults.min_consumers),
        max_consumers,
        target_drain: layered(args.target_drain, None, defaults.target_drain),
        ..defaults
    };
    if config.min_consumers > config.max_consumers {
        bail!(
            "--min-consumers ({}) is above --max-consumers ({})",
            config.min_consumers,
            config.max_consumers
        );
    }
    if config.target_drain.is_zero() {
        bail!("--target-drain must be above zero");
    }

    let mut conn = super::connect(client).await?;
    let sample = |conn: &mut streambus::Connection| {
        let partitions = partitions.clone();
        let (stream, group) = (args.stream.clone(), args.group.clone());
        let mut conn = conn.clone();
        async move {
            match partitions {
                Some(p) => streambus::partition::sample(&mut conn, &p, &group).await,
                None => scaler::sample(&mut conn, &stream, &group).await,
            }
        }
    };
    let first = sample(&mut conn).await?;
    let reference = first.lag.map(|lag| {
        let (rate, suggestion) = scaler::rate_and_suggestion(
            lag,
            first.pending,
            first.consumers,
            args.scale_out_rate,
            args.scale_in_rate,
        );
        let sentence = scaler::reference_sentence(
            lag,
            first.pending,
            first.consumers,
            args.scale_out_rate,
            args.scale_in_rate,
        );
        (rate, suggestion, sentence)
    });

    let mut out = Lines::stdout();
    if !args.json {
        match &reference {
            Some((_, _, sentence)) => out.line(sentence)?,
            None => out.line(format_args!(
                "No reference suggestion: Redis cannot tell the lag of group {} \
                 (entries were deleted), and streambus does not guess it (pending {})",
                args.group, first.pending
            ))?,
        }
        // Seen before the wait, not after it.
        out.flush()?;
    }

    let progress = std::io::stderr().is_terminal();
    if progress {
        eprint!("sampling for {}...", format_duration(args.window));
    }
    tokio::time::sleep(args.window).await;
    let second = sample(&mut conn).await;
    if progress {
        // Erase the progress line.
        eprint!("\r\x1b[K");
    }
    let second = second?;
    let advice = Advisor::new(config).advise(&first, &second, second.at);

    if args.json {
        let (rate, suggestion, sentence) = match reference {
            Some((rate, suggestion, sentence)) => (Some(rate), Some(suggestion), Some(sentence)),
            None => (None, None, None),
        };
        out.json(&json!({
            "rate": rate,
            "suggestion": suggestion,
            "sentence": sentence,
            "window_ms": u64::try_from(args.window.as_millis()).unwrap_or(u64::MAX),
            "advice": advice,
        }))?;
    } else {
        for line in advice_lines(&advice, &second, args.window) {
            out.line(line)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The advice in words: target, rates, drain time, then the reasons.
fn advice_lines(advice: &Advice, cur: &Sample, window: Duration) -> Vec<String> {
    let rate = |r: Option<f64>| r.map_or_else(|| "unknown".to_owned(), |r| format!("{r:.1}/s"));
    let drain = match (
        advice.drain_time,
        cur.lag,
        advice.arrival_rate,
        advice.ack_rate,
    ) {
        (Some(d), Some(0), _, _) if d.is_zero() => "0ms (nothing undelivered)".to_owned(),
        (Some(d), _, _, _) => format_duration(d),
        (None, Some(_), Some(_), Some(_)) => {
            "never at these rates (acks do not outpace arrivals)".to_owned()
        }
        _ => "unknown".to_owned(),
    };
    let mut lines = vec![
        format!(
            "target consumers: {} (now {}, {}), over {}",
            advice.target,
            advice.current,
            advice.suggestion,
            format_duration(window)
        ),
        format!("arrival rate: {}", rate(advice.arrival_rate)),
        format!("ack rate: {}", rate(advice.ack_rate)),
        format!("drain time: {drain}"),
    ];
    if let Some(cap) = advice.consumer_capacity {
        lines.push(format!("consumer capacity: {cap:.1}/s each"));
    }
    lines.extend(advice.reasons.iter().map(|r| format!("reason: {r}")));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn advice_is_spelled_out() {
        let t0 = Instant::now();
        let prev = Sample::new(t0, Some(0), Some(0), Some(0), 0, 2);
        let cur = Sample::new(
            t0 + Duration::from_secs(10),
            Some(1000),
            Some(200),
            Some(800),
            0,
            2,
        );
        let advice = Advisor::new(AdvisorConfig {
            consumer_capacity: Some(10.0),
            ..Default::default()
        })
        .advise(&prev, &cur, cur.at);
        let lines = advice_lines(&advice, &cur, Duration::from_secs(10));
        assert!(lines[0].starts_with("target consumers: "), "{lines:?}");
        assert!(lines[0].contains("(now 2, OUT)"), "{lines:?}");
        assert_eq!(lines[1], "arrival rate: 100.0/s");
        assert_eq!(lines[2], "ack rate: 20.0/s");
        assert_eq!(
            lines[3],
            "drain time: never at these rates (acks do not outpace arrivals)"
        );
        assert!(lines.iter().any(|l| l.starts_with("reason: ")), "{lines:?}");
    }
}
