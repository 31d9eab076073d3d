//! Waiting for a condition with a deadline, instead of a fixed sleep.
//!
//! Tests poll what they wait for (a pending count, a process gone, an HTTP
//! status) every [`POLL_INTERVAL`] until it holds or a deadline passes:
//!
//! - [`eventually`]: sync, answers whether the condition came true in time;
//! - [`wait_until`]: sync, panics with `what` and the deadline if it did not;
//! - [`wait_for`] / [`wait_for_some`]: the same for an async condition, on
//!   tokio's clock.
//!
//! Each checks the condition at least once, and once more after the deadline
//! has passed, so a condition that comes true during the last interval (or
//! a deadline of zero) is still seen.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use streambus_testkit::wait::{eventually, wait_until};
//!
//! let start = Instant::now();
//! wait_until(Duration::from_secs(5), "50 ms to pass", || {
//!     start.elapsed() >= Duration::from_millis(50)
//! });
//! assert!(!eventually(Duration::from_millis(30), || false));
//! ```

use std::future::Future;
use std::time::{Duration, Instant};

/// How long the helpers sleep between two checks: short against the
/// deadlines tests use (seconds), long enough not to load a busy machine
/// with a process or a Redis round trip per millisecond.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `cond` every [`POLL_INTERVAL`] until it holds (`true`) or
/// `deadline` has passed (`false`, after one last check).
pub fn eventually(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= end {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL.min(end - now));
    }
}

/// Polls `cond` every [`POLL_INTERVAL`] until it holds.
///
/// # Panics
///
/// If it still does not hold after `deadline`; the message names `what`
/// and the deadline, at the caller's location.
#[track_caller]
pub fn wait_until(deadline: Duration, what: &str, cond: impl FnMut() -> bool) {
    if !eventually(deadline, cond) {
        panic!("timed out after {deadline:?} waiting for {what}");
    }
}

/// Awaits `check()` every [`POLL_INTERVAL`] until it returns `Some`, and
/// returns that value.
///
/// Time is tokio's: the deadline and the sleeps use [`tokio::time`], so under
/// `tokio::time::pause()` both are virtual (and auto-advance together).
///
/// # Panics
///
/// If `check()` is still `None` after `deadline`; the message names `what`
/// and the deadline.
pub async fn wait_for_some<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        let now = tokio::time::Instant::now();
        if now >= end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL.min(end - now)).await;
    }
}

/// Awaits `check()` every [`POLL_INTERVAL`] until it returns `true`.
///
/// As [`wait_for_some`] (tokio's clock) for a condition without a value.
///
/// # Panics
///
/// If `check()` is still `false` after `deadline`; the message names `what`
/// and the deadline.
pub async fn wait_for<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for_some(deadline, what, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::panic::catch_unwind;

    /// The text of a caught panic.
    fn message(e: Box<dyn std::any::Any + Send>) -> String {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    }

    #[test]
    fn eventually_returns_once_the_condition_holds() {
        let calls = Cell::new(0);
        let ok = eventually(Duration::from_secs(10), || {
            calls.set(calls.get() + 1);
            calls.get() == 3
        });
        assert!(ok);
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn eventually_gives_up_after_the_deadline_with_a_last_check() {
        let start = Instant::now();
        let calls = Cell::new(0);
        let ok = eventually(Duration::from_millis(50), || {
            calls.set(calls.get() + 1);
            false
        });
        assert!(!ok);
        assert!(start.elapsed() >= Duration::from_millis(50));
        // At least the first check and the one after the deadline.
        assert!(calls.get() >= 2, "{} checks", calls.get());
    }

    #[test]
    fn a_zero_deadline_still_checks_once() {
        assert!(eventually(Duration::ZERO, || true));
        assert!(!eventually(Duration::ZERO, || false));
    }

    #[test]
    fn wait_until_panics_with_what_and_the_deadline() {
        let e = catch_unwind(|| wait_until(Duration::from_millis(30), "the moon", || false))
            .unwrap_err();
        let msg = message(e);
        assert!(msg.contains("the moon") && msg.contains("30ms"), "{msg}");
        wait_until(Duration::from_millis(30), "true", || true);
    }

    // Real time, short deadlines: this crate's tokio has no `test-util`
    // (`pause()`); only lower bounds on the time taken are asserted.
    #[tokio::test]
    async fn wait_for_some_returns_the_first_value() {
        let mut calls = 0;
        let v = wait_for_some(Duration::from_secs(10), "the third call", || {
            calls += 1;
            let n = calls;
            async move { (n == 3).then_some(n) }
        })
        .await;
        assert_eq!(v, 3);
        wait_for(Duration::ZERO, "true", || async { true }).await;
    }

    #[tokio::test]
    async fn wait_for_panics_with_what_and_the_deadline() {
        let start = Instant::now();
        let task = tokio::spawn(wait_for(Duration::from_millis(50), "a slot", || async {
            false
        }));
        let e = task.await.unwrap_err();
        assert!(e.is_panic());
        let msg = message(e.into_panic());
        assert!(msg.contains("a slot") && msg.contains("50ms"), "{msg}");
        assert!(start.elapsed() >= Duration::from_millis(50));
    }
}
