//! The throughput-based [`Advisor`]: a pure function of two [`Sample`]s and its
//! own memory (no Redis, no clock).

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Sample, Suggestion};
use crate::metrics;

/// How the [`Advisor`] decides.
///
/// Not `#[non_exhaustive]`, so that callers can write
/// `AdvisorConfig { max_consumers: 8, ..Default::default() }`.
#[derive(Clone, Debug)]
pub struct AdvisorConfig {
    /// Never advise fewer consumers than this.
    pub min_consumers: u64,
    /// Never advise more consumers than this.
    pub max_consumers: u64,
    /// A lag should be drained within this time, on top of keeping up with
    /// arrivals: the target covers `arrival_rate + lag / target_drain`.
    pub target_drain: Duration,
    /// Minimum time between two changes of the advice, so that consumers started
    /// or stopped by the last change show in the rates before the next. Scaling
    /// in also waits until the demand has been low for this long.
    pub cooldown: Duration,
    /// Relative dead band against noise (0.2 = 20%): scale out only when the
    /// demand exceeds the current consumers' capacity by more than this; scale in
    /// only to a count that still leaves this much headroom.
    pub hysteresis: f64,
    /// Entries per second one consumer can process, if known. Otherwise the
    /// advisor learns it from intervals with a backlog (when consumers are busy,
    /// their ack rate is their capacity) and, before that, uses the ack rate seen
    /// so far as a lower bound (which errs towards more consumers).
    pub consumer_capacity: Option<f64>,
}

impl Default for AdvisorConfig {
    fn default() -> Self {
        AdvisorConfig {
            min_consumers: 1,
            max_consumers: 64,
            target_drain: Duration::from_secs(60),
            cooldown: Duration::from_secs(120),
            hysteresis: 0.2,
            consumer_capacity: None,
        }
    }
}

/// What the [`Advisor`] says.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Advice {
    /// Consumers the group should have.
    pub target: u64,
    /// Consumers it has (from the latest sample).
    pub current: u64,
    /// `OUT` if `target > current`, `IN` if below, else `NO_SCALE`.
    pub suggestion: Suggestion,
    /// Entries added per second over the interval; `None` if the server does not
    /// count them (before 7.0) or the stream was recreated.
    pub arrival_rate: Option<f64>,
    /// Entries acknowledged per second over the interval; `None` if unknown.
    pub ack_rate: Option<f64>,
    /// Time to drain the lag at the current rates: zero with no lag, `None` if it
    /// does not shrink (acks do not outpace arrivals) or is unknown.
    #[serde(
        rename = "drain_time_ms",
        serialize_with = "crate::admin::monitor::opt_ms"
    )]
    pub drain_time: Option<Duration>,
    /// Entries per second one consumer is taken to manage, if known.
    pub consumer_capacity: Option<f64>,
    /// Why, in words, for logs and the dashboard.
    pub reasons: Vec<String>,
}

impl Advice {
    /// Sets the [`metrics::GROUP_TARGET_CONSUMERS`] gauge for `stream`/`group`.
    pub fn record_metrics(&self, stream: &str, group: &str) {
        ::metrics::gauge!(
            metrics::GROUP_TARGET_CONSUMERS,
            "stream" => stream.to_owned(),
            "group" => group.to_owned()
        )
        .set(self.target as f64);
    }
}

/// A throughput-based scaling advisor with memory: the last change (for the
/// cool-down), since when demand has been low (for a stable scale-in), and the
/// learned per-consumer capacity.
#[derive(Clone, Debug)]
pub struct Advisor {
    /// The rules.
    config: AdvisorConfig,
    /// When the advice last differed from the consumers in place.
    last_change: Option<Instant>,
    /// Since when the demand has continuously fit in fewer consumers.
    low_since: Option<Instant>,
    /// Per-consumer ack rate measured while a backlog existed (smoothed).
    learned_capacity: Option<f64>,
}

impl Advisor {
    /// An advisor with `config` and no history.
    pub fn new(config: AdvisorConfig) -> Self {
        Advisor {
            config,
            last_change: None,
            low_since: None,
            learned_capacity: None,
        }
    }

    /// The rules in use.
    pub fn config(&self) -> &AdvisorConfig {
        &self.config
    }

    /// Advice from two samples of the same group (`prev` taken before `cur`), at
    /// time `now`. Pure: no I/O, no clock; the only state is the advisor's own.
    pub fn advise(&mut self, prev: &Sample, cur: &Sample, now: Instant) -> Advice {
        let cfg = &self.config;
        let min = cfg.min_consumers;
        let max = cfg.max_consumers.max(min);
        let current = cur.consumers;
        let mut reasons = Vec::new();

        let dt = cur.at.saturating_duration_since(prev.at).as_secs_f64();
        let rate = |a: Option<u64>, b: Option<u64>| match (a, b) {
            // A counter that went down means the stream or group was recreated.
            (Some(a), Some(b)) if dt > 0.0 && b >= a => Some((b - a) as f64 / dt),
            _ => None,
        };
        let arrival_rate = rate(prev.entries_added, cur.entries_added);
        let ack_rate = rate(prev.acked(), cur.acked());

        let drain_time = match (cur.lag, arrival_rate, ack_rate) {
            (Some(0), _, _) => Some(Duration::ZERO),
            (Some(lag), Some(arr), Some(ack)) if ack > arr => {
                Some(Duration::from_secs_f64(lag as f64 / (ack - arr)))
            }
            _ => None,
        };

        // Busy consumers ack at their capacity: learn it while a backlog exists.
        if let (Some(ack), Some(pl), Some(cl)) = (ack_rate, prev.lag, cur.lag) {
            if pl > 0 && cl > 0 && current > 0 && ack > 0.0 {
                let measured = ack / current as f64;
                self.learned_capacity = Some(match self.learned_capacity {
                    Some(old) => 0.5 * old + 0.5 * measured,
                    None => measured,
                });
            }
        }
        let capacity = cfg.consumer_capacity.or(self.learned_capacity).or_else(|| {
            // Not saturated yet: what they did is a lower bound of what they can.
            ack_rate
                .filter(|a| *a > 0.0 && current > 0)
                .map(|a| a / current as f64)
        });

        let lag = cur.lag;
        let demand = arrival_rate
            .map(|a| a + lag.unwrap_or(0) as f64 / cfg.target_drain.as_secs_f64().max(0.001));
        if lag.is_none() {
            reasons.push("Redis cannot tell the lag (entries deleted ahead of the group); target from arrivals only".to_owned());
        }

        // The consumer count the numbers call for, before hysteresis and bounds.
        let idle = arrival_rate == Some(0.0) && lag == Some(0) && cur.pending == 0;
        let wanted: Option<u64> = if idle {
            reasons.push("idle: nothing arrives, nothing is pending or undelivered".to_owned());
            Some(min)
        } else {
            match (demand, capacity) {
                (None, _) => {
                    reasons.push("arrival rate unknown (counter missing or reset); keeping the current count".to_owned());
                    None
                }
                (Some(_), _) if current == 0 => {
                    reasons.push("work is waiting and no consumer is reading".to_owned());
                    Some(min.max(1))
                }
                (Some(_), None) => {
                    reasons.push("no entry was acknowledged in the interval: consumer capacity unknown (stuck, or just started); keeping the current count".to_owned());
                    None
                }
                (Some(demand), Some(cap)) => {
                    let desired = demand / cap;
                    let h = cfg.hysteresis.max(0.0);
                    if desired > current as f64 * (1.0 + h) {
                        reasons.push(format!(
                            "demand {demand:.1}/s (arrivals plus lag drained within {}s) needs {desired:.2} consumers at {cap:.1}/s each",
                            cfg.target_drain.as_secs()
                        ));
                        Some(desired.ceil() as u64)
                    } else if ((desired * (1.0 + h)).ceil() as u64) < current {
                        reasons.push(format!(
                            "demand {demand:.1}/s needs only {desired:.2} consumers at {cap:.1}/s each"
                        ));
                        Some(((desired * (1.0 + h)).ceil() as u64).max(1))
                    } else {
                        reasons.push(format!(
                            "demand {demand:.1}/s fits {current} consumers at {cap:.1}/s each (within the {:.0}% band)",
                            h * 100.0
                        ));
                        None
                    }
                }
            }
        };

        let mut target = wanted.unwrap_or(current).clamp(min, max);
        if target != wanted.unwrap_or(current) {
            reasons.push(format!("bounded to {min}..={max} consumers"));
        }
        let out_of_bounds = current < min || current > max;

        // Scale in only once demand has stayed low for a cool-down.
        if target < current && !out_of_bounds {
            let since = *self.low_since.get_or_insert(now);
            let held = now.saturating_duration_since(since);
            if held < cfg.cooldown {
                reasons.push(format!(
                    "scale-in waits until demand has been low for {}s (so far {}s)",
                    cfg.cooldown.as_secs(),
                    held.as_secs()
                ));
                target = current;
            }
        } else {
            self.low_since = None;
        }
        // No change within a cool-down of the last one (bounds excepted).
        if target != current && !out_of_bounds {
            if let Some(last) = self.last_change {
                let since = now.saturating_duration_since(last);
                if since < cfg.cooldown {
                    reasons.push(format!(
                        "cool-down: last change {}s ago, next allowed after {}s",
                        since.as_secs(),
                        cfg.cooldown.as_secs()
                    ));
                    target = current;
                }
            }
        }
        if target != current {
            self.last_change = Some(now);
            self.low_since = None;
        }

        let suggestion = match target.cmp(&current) {
            std::cmp::Ordering::Greater => Suggestion::Out,
            std::cmp::Ordering::Less => Suggestion::In,
            std::cmp::Ordering::Equal => Suggestion::NoScale,
        };
        Advice {
            target,
            current,
            suggestion,
            arrival_rate,
            ack_rate,
            drain_time,
            consumer_capacity: capacity,
            reasons,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A sample `secs` after `t0`: `added` entries ever, `acked` acknowledged,
    /// `lag` undelivered, `pending` in flight.
    fn s(
        t0: Instant,
        secs: u64,
        added: u64,
        acked: u64,
        lag: u64,
        pending: u64,
        consumers: u64,
    ) -> Sample {
        Sample::new(
            t0 + Duration::from_secs(secs),
            Some(added),
            Some(acked + pending),
            Some(lag),
            pending,
            consumers,
        )
    }

    fn cfg() -> AdvisorConfig {
        AdvisorConfig {
            min_consumers: 1,
            max_consumers: 10,
            target_drain: Duration::from_secs(60),
            cooldown: Duration::from_secs(60),
            hysteresis: 0.2,
            consumer_capacity: None,
        }
    }

    #[test]
    fn steady_state_keeps_the_count() {
        let t0 = Instant::now();
        let mut a = Advisor::new(cfg());
        // 100/s arrive, 100/s acked, no lag, 4 consumers.
        let mut prev = s(t0, 0, 10_000, 9_990, 0, 10, 4);
        for i in 1..20 {
            let cur = s(t0, i * 10, 10_000 + i * 1000, 9_990 + i * 1000, 0, 10, 4);
            let adv = a.advise(&prev, &cur, cur.at);
            assert_eq!(adv.suggestion, Suggestion::NoScale, "{adv:?}");
            assert_eq!(adv.target, 4);
            assert_eq!(adv.arrival_rate, Some(100.0));
            assert_eq!(adv.ack_rate, Some(100.0));
            assert_eq!(adv.drain_time, Some(Duration::ZERO));
            prev = cur;
        }
    }

    #[test]
    fn rising_lag_scales_out() {
        let t0 = Instant::now();
        let mut a = Advisor::new(cfg());
        // 200/s arrive, 2 consumers ack 100/s together: lag grows by 1000 per 10 s.
        let prev = s(t0, 0, 10_000, 8_000, 1_000, 1_000, 2);
        let cur = s(t0, 10, 12_000, 9_000, 2_000, 1_000, 2);
        let adv = a.advise(&prev, &cur, cur.at);
        assert_eq!(adv.suggestion, Suggestion::Out, "{adv:?}");
        // 50/s per consumer; demand 200 + 2000/60 = 233/s -> 5 consumers.
        assert_eq!(adv.target, 5);
        assert_eq!(adv.drain_time, None, "acks do not outpace arrivals");
        assert_eq!(adv.consumer_capacity, Some(50.0));
    }

    #[test]
    fn idle_scales_in_after_the_cooldown() {
        let t0 = Instant::now();
        let mut a = Advisor::new(cfg());
        let quiet = |secs| s(t0, secs, 5_000, 5_000, 0, 0, 4);
        let adv = a.advise(&quiet(0), &quiet(10), t0 + Duration::from_secs(10));
        assert_eq!(adv.suggestion, Suggestion::NoScale, "{adv:?}");
        let adv = a.advise(&quiet(10), &quiet(40), t0 + Duration::from_secs(40));
        assert_eq!(adv.suggestion, Suggestion::NoScale, "{adv:?}");
        let adv = a.advise(&quiet(40), &quiet(70), t0 + Duration::from_secs(70));
        assert_eq!(adv.suggestion, Suggestion::In, "{adv:?}");
        assert_eq!(adv.target, 1);
    }

    #[test]
    fn noise_does_not_flap() {
        let t0 = Instant::now();
        let mut a = Advisor::new(AdvisorConfig {
            consumer_capacity: Some(25.0),
            ..cfg()
        });
        // 4 consumers at 25/s = 100/s; arrivals wobble 90..110/s, a small lag comes and goes.
        let mut added = 10_000;
        let mut acked = 10_000;
        let mut prev = s(t0, 0, added, acked, 0, 5, 4);
        for i in 1..50u64 {
            let rate = if i % 2 == 0 { 110 } else { 90 };
            added += rate * 10;
            acked += rate * 10;
            let lag = if i % 3 == 0 { 50 } else { 0 };
            let cur = s(t0, i * 10, added, acked, lag, 5, 4);
            let adv = a.advise(&prev, &cur, cur.at);
            assert_eq!(adv.suggestion, Suggestion::NoScale, "step {i}: {adv:?}");
            prev = cur;
        }
    }

    #[test]
    fn cooldown_after_a_change() {
        let t0 = Instant::now();
        let mut a = Advisor::new(AdvisorConfig {
            consumer_capacity: Some(10.0),
            ..cfg()
        });
        // 100/s with 2 consumers of 10/s: out to 10.
        let adv = a.advise(
            &s(t0, 0, 0, 0, 0, 0, 2),
            &s(t0, 10, 1000, 200, 800, 0, 2),
            t0 + Duration::from_secs(10),
        );
        assert_eq!((adv.suggestion, adv.target), (Suggestion::Out, 10));
        // The operator went to 5 only; still short, but within the cool-down.
        let adv = a.advise(
            &s(t0, 10, 1000, 200, 800, 0, 5),
            &s(t0, 20, 2000, 700, 1300, 0, 5),
            t0 + Duration::from_secs(20),
        );
        assert_eq!(adv.suggestion, Suggestion::NoScale, "{adv:?}");
        let adv = a.advise(
            &s(t0, 70, 7000, 3200, 3800, 0, 5),
            &s(t0, 80, 8000, 3700, 4300, 0, 5),
            t0 + Duration::from_secs(80),
        );
        assert_eq!(adv.suggestion, Suggestion::Out, "{adv:?}");
    }

    #[test]
    fn bounds_are_respected() {
        let t0 = Instant::now();
        let mut a = Advisor::new(AdvisorConfig {
            min_consumers: 2,
            max_consumers: 6,
            consumer_capacity: Some(1.0),
            ..cfg()
        });
        let adv = a.advise(
            &s(t0, 0, 0, 0, 0, 0, 3),
            &s(t0, 10, 10_000, 30, 9_970, 0, 3),
            t0 + Duration::from_secs(10),
        );
        assert_eq!(
            (adv.suggestion, adv.target),
            (Suggestion::Out, 6),
            "{adv:?}"
        );

        let mut a = Advisor::new(AdvisorConfig {
            min_consumers: 2,
            max_consumers: 6,
            cooldown: Duration::ZERO,
            ..cfg()
        });
        let quiet = |secs| s(t0, secs, 5, 5, 0, 0, 4);
        let adv = a.advise(&quiet(0), &quiet(10), t0 + Duration::from_secs(10));
        assert_eq!((adv.suggestion, adv.target), (Suggestion::In, 2), "{adv:?}");

        // Below the minimum: out at once, cool-down or not.
        let mut a = Advisor::new(AdvisorConfig {
            min_consumers: 2,
            ..cfg()
        });
        let adv = a.advise(
            &quiet(0),
            &s(t0, 10, 5, 5, 0, 0, 1),
            t0 + Duration::from_secs(10),
        );
        assert_eq!(
            (adv.suggestion, adv.target),
            (Suggestion::Out, 2),
            "{adv:?}"
        );
    }

    #[test]
    fn no_consumer_with_work_waiting() {
        let t0 = Instant::now();
        let mut a = Advisor::new(cfg());
        let adv = a.advise(
            &s(t0, 0, 0, 0, 0, 0, 0),
            &s(t0, 10, 100, 0, 100, 0, 0),
            t0 + Duration::from_secs(10),
        );
        assert_eq!(
            (adv.suggestion, adv.target),
            (Suggestion::Out, 1),
            "{adv:?}"
        );
    }

    #[test]
    fn unknown_lag_is_said() {
        let t0 = Instant::now();
        let mut a = Advisor::new(cfg());
        let mut cur = s(t0, 10, 1000, 1000, 0, 0, 2);
        cur.lag = None;
        let adv = a.advise(&s(t0, 0, 0, 0, 0, 0, 2), &cur, cur.at);
        assert!(
            adv.reasons
                .iter()
                .any(|r| r.contains("cannot tell the lag")),
            "{adv:?}"
        );
        assert_eq!(adv.drain_time, None);
    }

    #[test]
    fn counter_reset_holds() {
        let t0 = Instant::now();
        let mut a = Advisor::new(cfg());
        let adv = a.advise(
            &s(t0, 0, 1000, 1000, 0, 0, 3),
            &s(t0, 10, 10, 10, 0, 0, 3),
            t0 + Duration::from_secs(10),
        );
        assert_eq!(adv.arrival_rate, None);
        assert_eq!(adv.suggestion, Suggestion::NoScale);
    }
}
