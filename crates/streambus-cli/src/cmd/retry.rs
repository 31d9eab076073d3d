//! How long-running commands (consume, `tail --follow`, monitor) wait out
//! Redis being away: the backoff between attempts ([`RETRY`]), what the user is
//! told about one outage ([`Outage`]), and a sleep that a shutdown cuts short
//! ([`pause`]).

use std::time::{Duration, Instant, SystemTime};

use streambus::config::format_duration;
use streambus::{Backoff, Jitter};
use tokio_util::sync::CancellationToken;

/// The wait between attempts while Redis is away (consume, `tail --follow`):
/// 50 ms, doubling, at most 2 s, each with jitter (a value in `[d/2, d]`, so
/// that many clients cut off together do not come back together). The cap
/// bounds the time from the network healing to the next attempt; with the
/// default timeouts (3 s) an attempt under way when it heals fails within
/// 6 s, so a command is working again within about 8 s (the README's
/// "Faults" section promises 10 s).
pub(super) const RETRY: Backoff = Backoff {
    base: Duration::from_millis(50),
    factor: 2.0,
    max: Duration::from_secs(2),
};

/// What a long-running command tells the user about one outage of Redis:
/// a warning at the first failed attempt (not at every retry), and a line
/// saying how long it lasted at the first success; in between, the backoff
/// before each attempt.
pub(super) struct Outage {
    /// What the command does, at the start of its lines (`consuming "s"`).
    what: String,
    /// When the first attempt of the current outage failed (monotonic, and
    /// the wall clock for JSON).
    since: Option<(Instant, SystemTime)>,
    /// Failed attempts in a row, for the backoff.
    attempts: u32,
    jitter: Jitter,
    /// No warning and recovery lines on stderr (`monitor` redrawing a screen
    /// says it on the screen).
    quiet: bool,
    /// The longest wait between attempts, for the warning.
    every: Duration,
}

impl Outage {
    pub(super) fn new(what: impl Into<String>) -> Self {
        Outage {
            what: what.into(),
            since: None,
            attempts: 0,
            jitter: Jitter::new(),
            quiet: false,
            every: RETRY.max,
        }
    }

    /// Attempts are paced by the caller, every `every` (for the warning).
    pub(super) fn every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    /// Without the stderr lines.
    pub(super) fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// A failure that waiting can mend: warns if it is the first of an
    /// outage; returns how long to wait before the next attempt.
    pub(super) fn failed(&mut self, error: &dyn std::fmt::Display) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        if self.since.is_none() {
            self.since = Some((Instant::now(), SystemTime::now()));
            if !self.quiet {
                eprintln!(
                    "warning: {}: Redis unreachable; retrying until it is back (every {} at most): {}",
                    self.what,
                    format_duration(self.every),
                    one_line(error)
                );
            }
        }
        RETRY.delay_with_jitter(self.attempts, self.jitter.next_unit())
    }

    /// A success: ends the outage, if there was one, saying how long it lasted.
    pub(super) fn ok(&mut self) {
        self.attempts = 0;
        if let Some((at, _)) = self.since.take() {
            if !self.quiet {
                eprintln!(
                    "{}: Redis is back after {} unreachable; carrying on",
                    self.what,
                    format_duration(at.elapsed())
                );
            }
        }
    }

    /// When the current outage began, if Redis is away.
    pub(super) fn since(&self) -> Option<(Instant, SystemTime)> {
        self.since
    }
}

/// An error's text on one line.
pub(super) fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().replace(['\n', '\r'], " ")
}

/// Sleeps `delay`; false if `stop` came first.
pub(super) async fn pause(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = stop.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_backoff_is_capped_at_two_seconds() {
        assert_eq!(RETRY.delay(1), Duration::from_millis(50));
        assert_eq!(RETRY.delay(2), Duration::from_millis(100));
        assert_eq!(RETRY.delay(6), Duration::from_millis(1600));
        assert_eq!(RETRY.delay(7), Duration::from_secs(2));
        assert_eq!(RETRY.delay(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn an_outage_is_reported_once_and_ends_at_the_first_success() {
        let mut o = Outage::new("test").quiet(true);
        assert!(o.since().is_none());
        let d1 = o.failed(&"down");
        let since = o.since().expect("down");
        let _ = o.failed(&"still down");
        assert_eq!(
            o.since(),
            Some(since),
            "the outage starts at the first failure"
        );
        assert!(d1 <= RETRY.delay(1));
        for _ in 0..50 {
            assert!(o.failed(&"down") <= RETRY.max);
        }
        o.ok();
        assert!(o.since().is_none());
        assert!(
            o.failed(&"down again") <= RETRY.delay(1),
            "the backoff starts over"
        );
    }
}
