//! The scaler: how many consumers a group should have.
//!
//! Two answers:
//!
//! - [`rate_and_suggestion`]: the reference package's utilization rate and its
//!   `IN` / `OUT` / `NO_SCALE` suggestion, bit for bit (same formula, same
//!   rounding, same thresholds), with [`reference_sentence`] for its output line.
//!   Unlike the reference, the inputs are always fresh (it cached them and could
//!   answer from stale counts) and the undelivered count is the group's `lag`
//!   from `XINFO GROUPS`, O(1), not an `XRANGE` over the backlog.
//! - [`Advisor`]: a throughput-based target. From two [`Sample`]s a few seconds
//!   apart it computes the arrival rate, the ack rate, the time to drain the lag,
//!   and the number of consumers that keeps up with arrivals and drains the lag
//!   within [`AdvisorConfig::target_drain`], with hysteresis, a cool-down and
//!   bounds. [`Advisor::advise`] is a pure function of its inputs and state: no
//!   Redis, no clock.
//!
//! [`sample`] is the thin async part: two O(1) commands.

mod advisor;
mod reference;
mod sample;

pub use advisor::{Advice, Advisor, AdvisorConfig};
pub use reference::{
    rate_and_suggestion, reference_decision, reference_sentence, validate_thresholds, Suggestion,
    DEFAULT_SCALE_IN, DEFAULT_SCALE_OUT,
};
pub use sample::{sample, Sample};
