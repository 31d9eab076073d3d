//! `streambus monitor --watch` while Redis is unreachable: a real
//! `redis-server` behind the testkit's `FaultProxy`. The watch says so (a
//! JSON error line, or a line of text) for as long as the outage lasts, with
//! one warning on stderr, and shows snapshots again once the network heals,
//! within [`RECOVERY`] at 500 ms timeouts.
//!
//! Conditions are polled with a deadline, no fixed sleeps.

mod common;

use std::collections::HashSet;
use std::time::Instant;

use serde_json::Value;

use common::data::add;
use common::faults::{assert_outage_noted, proxied, Exited, Running, DEADLINE, RECOVERY};
use common::wait_until;

/// What a `monitor --json` line is: a snapshot (with its length) or an error.
fn monitor_line(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn monitor_watch_says_redis_is_unreachable_and_recovers() {
    let s = proxied(false);
    let stream = "mon";
    add(&s.redis, stream, 0, 5);
    let run = Running::fast(
        &s.proxy.url(),
        &["monitor", stream, "--watch=200ms", "--json"],
    );
    run.wait_lines(1, "the first snapshot");

    // Open connections go silent, new ones are refused.
    s.proxy.black_hole();
    s.proxy.refuse();
    let cut = Instant::now();
    wait_until(DEADLINE, "an error line", || {
        run.first_after_matching(cut, |l| monitor_line(l).get("error").is_some())
            .is_some()
    });
    let noticed = cut.elapsed();
    // Sure to be down for a while: a few more error lines.
    let n = run.count();
    run.wait_lines(n + 2, "more error lines");
    s.proxy.heal();
    let healed = Instant::now();
    add(&s.redis, stream, 5, 5);
    let snapshot_after_heal =
        || run.first_after_matching(healed, |l| monitor_line(l)["length"] == 10);
    wait_until(DEADLINE, "a snapshot after heal", || {
        snapshot_after_heal().is_some()
    });
    let recovery = snapshot_after_heal().unwrap();
    let Exited { lines, stderr, .. } = run.stop();
    eprintln!(
        "monitor --watch=200ms: unreachable shown {noticed:?} after the cut, a snapshot {recovery:?} after heal"
    );
    let errors: Vec<Value> = lines
        .iter()
        .map(|l| monitor_line(l))
        .filter(|v| v.get("error").is_some())
        .collect();
    assert!(!errors.is_empty());
    for e in &errors {
        let text = e["error"].as_str().unwrap();
        assert!(text.starts_with("redis unreachable: "), "{e}");
        assert!(e["since"].as_u64().is_some(), "{e}");
        assert_eq!(e["stream"], stream, "{e}");
    }
    // One `since` for the whole outage.
    let since: HashSet<u64> = errors
        .iter()
        .map(|e| e["since"].as_u64().unwrap())
        .collect();
    assert_eq!(since.len(), 1, "{errors:?}");
    assert_outage_noted(&stderr);
    assert!(recovery <= RECOVERY, "recovered after {recovery:?}");
}

#[test]
fn monitor_watch_text_says_redis_is_unreachable() {
    let s = proxied(false);
    let stream = "montext";
    add(&s.redis, stream, 0, 5);
    let start = Instant::now();
    let run = Running::fast(&s.proxy.url(), &["monitor", stream, "--watch=200ms"]);
    run.wait_lines(1, "the first snapshot");
    s.proxy.refuse();
    s.proxy.reset_all();
    wait_until(DEADLINE, "the unreachable line", || {
        run.first_after_matching(start, |l| l.contains("Redis unreachable for "))
            .is_some()
    });
    s.proxy.pass_through();
    let healed = Instant::now();
    wait_until(DEADLINE, "a snapshot after heal", || {
        run.first_after_matching(healed, |l| l.starts_with("stream montext: length 5"))
            .is_some()
    });
    let Exited { stderr, .. } = run.stop();
    assert_outage_noted(&stderr);
}
