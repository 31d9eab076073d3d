//! The health of one consumer: [`Status`], a pure function of its counts.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::MonitorOptions;

/// The health of one consumer, from its idle time and pending count.
///
/// Serialized as `"OK"`, `"IDLE"`, `"STALLED"`, `"TOO_MANY_PENDING"`. Checked in
/// this order, first match wins:
///
/// 1. [`Status::Stalled`]: holds pending entries and made no progress for longer
///    than the threshold. "Progress" is `inactive` (last successful read or claim)
///    where the server reports it (Redis 7.2+), else `idle` (last attempt).
/// 2. [`Status::Idle`]: `idle` above the threshold: it has not even tried to read.
/// 3. [`Status::TooManyPending`]: holds more than
///    [`MonitorOptions::pending_warning`] entries while active. A warning only: a
///    busy consumer is never deleted or robbed by
///    [`cleanup`](super::cleanup()).
/// 4. [`Status::Ok`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[non_exhaustive]
pub enum Status {
    /// Active and not holding too much.
    #[serde(rename = "OK")]
    Ok,
    /// Has not tried to read for longer than the threshold (and holds nothing).
    #[serde(rename = "IDLE")]
    Idle,
    /// Holds pending entries and made no progress for longer than the threshold.
    #[serde(rename = "STALLED")]
    Stalled,
    /// Active, but holds more pending entries than the warning level.
    #[serde(rename = "TOO_MANY_PENDING")]
    TooManyPending,
}

impl Status {
    /// Every status, in the order they are listed in tables and metrics.
    pub const ALL: [Status; 4] = [
        Status::Ok,
        Status::Idle,
        Status::Stalled,
        Status::TooManyPending,
    ];

    /// The name used in JSON, tables and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Idle => "IDLE",
            Status::Stalled => "STALLED",
            Status::TooManyPending => "TOO_MANY_PENDING",
        }
    }

    /// The words the reference package prints in its monitor table (it has no
    /// stalled state; streambus adds one in the same style).
    pub fn reference_text(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Idle => "WARNING - idle for long time",
            Status::Stalled => "WARNING - stalled with pending items",
            Status::TooManyPending => "WARNING - too many pending items",
        }
    }

    /// Classifies a consumer (see the type docs for the rules).
    pub fn classify(
        pending: u64,
        idle: Duration,
        inactive: Option<Duration>,
        options: &MonitorOptions,
    ) -> Status {
        let no_progress_for = inactive.unwrap_or(idle).max(idle);
        if pending > 0 && no_progress_for > options.idle_threshold {
            Status::Stalled
        } else if idle > options.idle_threshold {
            Status::Idle
        } else if pending > options.pending_warning {
            Status::TooManyPending
        } else {
            Status::Ok
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> MonitorOptions {
        MonitorOptions {
            idle_threshold: Duration::from_secs(10),
            pending_warning: 5,
            ..MonitorOptions::default()
        }
    }

    #[test]
    fn statuses() {
        let s = |p, idle: u64, inactive: Option<u64>| {
            Status::classify(
                p,
                Duration::from_secs(idle),
                inactive.map(Duration::from_secs),
                &opts(),
            )
        };
        assert_eq!(s(0, 1, None), Status::Ok);
        assert_eq!(s(3, 1, None), Status::Ok);
        assert_eq!(s(0, 11, None), Status::Idle);
        assert_eq!(s(3, 11, None), Status::Stalled);
        assert_eq!(s(6, 1, None), Status::TooManyPending);
        assert_eq!(s(6, 11, None), Status::Stalled);
        // 7.2: polling (idle small) but no successful read for long, with pending.
        assert_eq!(s(3, 1, Some(11)), Status::Stalled);
        // ... without pending it is just a quiet stream.
        assert_eq!(s(0, 1, Some(11)), Status::Ok);
    }

    #[test]
    fn status_names() {
        assert_eq!(
            serde_json::to_string(&Status::TooManyPending).unwrap(),
            "\"TOO_MANY_PENDING\""
        );
        assert_eq!(
            Status::Idle.reference_text(),
            "WARNING - idle for long time"
        );
        assert_eq!(
            Status::TooManyPending.reference_text(),
            "WARNING - too many pending items"
        );
        assert_eq!(Status::Ok.reference_text(), "OK");
    }
}
