//! The reference package's rule: its utilization rate and its `IN` / `OUT` /
//! `NO_SCALE` suggestion, bit for bit.

use std::fmt;

use serde::Serialize;

use crate::admin::monitor::GroupSnapshot;
use crate::error::{Error, ErrorKind, Result};

/// The reference package's default scale-out threshold, percent.
pub const DEFAULT_SCALE_OUT: f64 = 50.0;
/// The reference package's default scale-in threshold, percent.
pub const DEFAULT_SCALE_IN: f64 = 10.0;

/// Which way to scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub enum Suggestion {
    /// Fewer consumers (`IN`).
    #[serde(rename = "IN")]
    In,
    /// More consumers (`OUT`).
    #[serde(rename = "OUT")]
    Out,
    /// Keep them (`NO_SCALE`).
    #[serde(rename = "NO_SCALE")]
    NoScale,
}

impl Suggestion {
    /// `IN`, `OUT` or `NO_SCALE`, as the reference package prints them.
    pub fn as_str(self) -> &'static str {
        match self {
            Suggestion::In => "IN",
            Suggestion::Out => "OUT",
            Suggestion::NoScale => "NO_SCALE",
        }
    }
}

impl fmt::Display for Suggestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks the two thresholds as the reference package does: both within
/// 0..=100, scale-in not above scale-out.
pub fn validate_thresholds(scale_out: f64, scale_in: f64) -> Result<()> {
    let bad = |m: &str| Err(Error::new(ErrorKind::InvalidInput, m.to_owned()));
    if !(0.0..=100.0).contains(&scale_in) {
        return bad("the scale-in rate must be within 0 and 100");
    }
    if !(0.0..=100.0).contains(&scale_out) {
        return bad("the scale-out rate must be within 0 and 100");
    }
    if scale_in > scale_out {
        return bad("the scale-out rate must not be below the scale-in rate");
    }
    Ok(())
}

/// The reference package's rate as a value and as Python prints it.
///
/// Python computes `round(max(min(u / p * 100, 100), 1), 4)`; `min` and `max`
/// return their *first* smallest/largest argument, so a clamped rate is the
/// `int` 100 or 1 (printed `100`, `1`), while an exact 100.0 stays a float
/// (`100.0`). No pending entries gives the int `0`.
fn reference_rate(undelivered: u64, pending: u64) -> (f64, String) {
    if pending == 0 {
        return (0.0, "0".to_owned());
    }
    // Same operations in the same order as Python: divide, then multiply.
    let x = undelivered as f64 / pending as f64 * 100.0;
    if x > 100.0 {
        return (100.0, "100".to_owned());
    }
    if x < 1.0 {
        return (1.0, "1".to_owned());
    }
    let r = round4(x);
    (r, python_float(r))
}

/// Python's `round(x, 4)` for a float: correctly rounded to 4 decimals (ties to
/// even on the exact binary value), then the nearest float. Rust's `{:.4}` rounds
/// the exact value the same way.
fn round4(x: f64) -> f64 {
    format!("{x:.4}").parse().unwrap_or(x)
}

/// Python's `repr` of a float in the range the rate can take (1..=100): the
/// shortest text that reads back to it, with `.0` for whole numbers.
fn python_float(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

/// The reference package's decision.
///
/// `rate` is 0 when nothing is pending, else `undelivered / pending * 100`
/// clamped to 1..=100 and rounded to 4 places. Then, first match wins:
///
/// | condition | suggestion |
/// |---|---|
/// | rate is 0 and nothing is undelivered | `NO_SCALE` |
/// | rate is 0 and something is undelivered | `OUT` |
/// | rate < `scale_in` and more than one consumer | `IN` |
/// | rate ≥ `scale_out` | `OUT` |
/// | otherwise | `NO_SCALE` |
///
/// The reference's defaults are [`DEFAULT_SCALE_OUT`] (50) and
/// [`DEFAULT_SCALE_IN`] (10). `undelivered` is the group's lag (the reference
/// called it "stream length").
pub fn rate_and_suggestion(
    undelivered: u64,
    pending: u64,
    consumers: u64,
    scale_out: f64,
    scale_in: f64,
) -> (f64, Suggestion) {
    let (rate, _) = reference_rate(undelivered, pending);
    let suggestion = if rate == 0.0 && undelivered == 0 {
        Suggestion::NoScale
    } else if rate == 0.0 {
        Suggestion::Out
    } else if rate < scale_in && consumers > 1 {
        Suggestion::In
    } else if rate >= scale_out {
        Suggestion::Out
    } else {
        Suggestion::NoScale
    };
    (rate, suggestion)
}

/// The reference package's output line, e.g.
/// `Consumers should be IN as stream length (11) / pending (83) rate is 13.253%`,
/// with the rate printed as Python prints it.
pub fn reference_sentence(
    undelivered: u64,
    pending: u64,
    consumers: u64,
    scale_out: f64,
    scale_in: f64,
) -> String {
    let (_, suggestion) = rate_and_suggestion(undelivered, pending, consumers, scale_out, scale_in);
    let (_, rate) = reference_rate(undelivered, pending);
    format!(
        "Consumers should be {suggestion} as stream length ({undelivered}) / pending ({pending}) rate is {rate}%"
    )
}

/// [`rate_and_suggestion`] for a group of a monitor snapshot, with its lag as the
/// undelivered count. `None` when Redis cannot tell the lag: streambus does not
/// guess it.
pub fn reference_decision(
    group: &GroupSnapshot,
    scale_out: f64,
    scale_in: f64,
) -> Option<(f64, Suggestion)> {
    let lag = group.lag?;
    Some(rate_and_suggestion(
        lag,
        group.pending,
        group.consumers.len() as u64,
        scale_out,
        scale_in,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_examples() {
        assert_eq!(
            reference_sentence(11, 83, 2, 60.0, 20.0),
            "Consumers should be IN as stream length (11) / pending (83) rate is 13.253%"
        );
        assert_eq!(
            reference_sentence(18, 79, 2, 60.0, 20.0),
            "Consumers should be NO_SCALE as stream length (18) / pending (79) rate is 22.7848%"
        );
        assert_eq!(
            rate_and_suggestion(11, 83, 2, 60.0, 20.0),
            (13.253, Suggestion::In)
        );
        assert_eq!(rate_and_suggestion(18, 79, 2, 60.0, 20.0).0, 22.7848);
    }

    #[test]
    fn reference_edges() {
        let d = |u, p, c| rate_and_suggestion(u, p, c, DEFAULT_SCALE_OUT, DEFAULT_SCALE_IN);
        assert_eq!(d(0, 0, 3), (0.0, Suggestion::NoScale));
        assert_eq!(d(5, 0, 3), (0.0, Suggestion::Out));
        // Clamped: above 100 and below 1.
        assert_eq!(d(500, 10, 3), (100.0, Suggestion::Out));
        assert_eq!(d(0, 1000, 3), (1.0, Suggestion::In));
        // A single consumer is never scaled in.
        assert_eq!(d(0, 1000, 1), (1.0, Suggestion::NoScale));
        assert_eq!(d(5, 10, 1), (50.0, Suggestion::Out));
        assert_eq!(d(3, 10, 2), (30.0, Suggestion::NoScale));
        // Printed as Python prints them.
        let s = |u, p| reference_sentence(u, p, 2, 50.0, 10.0);
        assert!(s(0, 0).ends_with("rate is 0%"), "{}", s(0, 0));
        assert!(s(500, 10).ends_with("rate is 100%"));
        assert!(s(10, 10).ends_with("rate is 100.0%"));
        assert!(s(0, 1000).ends_with("rate is 1%"));
        assert!(s(1, 100).ends_with("rate is 1.0%"));
        assert!(s(1, 3).ends_with("rate is 33.3333%"));
        assert!(s(2, 3).ends_with("rate is 66.6667%"));
    }

    #[test]
    fn thresholds() {
        assert!(validate_thresholds(50.0, 10.0).is_ok());
        assert!(validate_thresholds(10.0, 50.0).is_err());
        assert!(validate_thresholds(150.0, 10.0).is_err());
        assert!(validate_thresholds(50.0, -1.0).is_err());
    }
}
