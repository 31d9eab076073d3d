//! `streambus tail --follow` through a network fault and a Redis crash: a
//! real `redis-server` behind the testkit's `FaultProxy`, entries published
//! straight to Redis (not through the proxy) while the fault lasts.
//!
//! Each test checks that exactly the entries published were printed, in
//! order (no gap, no duplicate), and measures the time from the end of the
//! fault to the first entry printed after it (printed with `eprintln!`:
//! `cargo test --test faults_tail -- --nocapture`), asserted within
//! [`RECOVERY`] at 500 ms timeouts.
//!
//! Conditions are polled with a deadline; the only fixed wait is the length
//! of the black hole itself.

mod common;

use common::data::add;
use common::faults::{assert_outage_noted, ids, proxied, Exited, Running, RECOVERY};

/// `streambus tail STREAM --from 0 --count N --follow` through the proxy.
fn tail(url: &str, stream: &str, count: usize) -> Running {
    let count = count.to_string();
    Running::fast(
        url,
        &["tail", stream, "--from", "0", "--count", &count, "--follow"],
    )
}

/// The run succeeded and printed exactly the entries published, in order.
#[track_caller]
fn assert_printed_in_order(out: &Exited, published: &[String]) {
    assert!(out.status.success(), "{:?}: {}", out.status, out.stderr);
    assert_eq!(ids(&out.lines), published, "exactly the entries, in order");
}

#[test]
fn tail_follows_through_a_black_hole_without_gap_or_duplicate() {
    let s = proxied(false);
    let stream = "tbh";
    let mut published = add(&s.redis, stream, 0, 50);
    let run = tail(&s.proxy.url(), stream, 150);
    run.wait_lines(50, "the history");

    let (during, healed) = s.black_hole_until_redialed(&run, stream, 50, 50);
    published.extend(during);
    published.extend(add(&s.redis, stream, 100, 50));

    let recovery = run.recovered_after(healed, 51, "the first entry after heal");
    let out = run.exit();
    eprintln!("tail --follow, black hole until two redials: first entry {recovery:?} after heal");
    assert_printed_in_order(&out, &published);
    assert_outage_noted(&out.stderr);
    assert!(recovery <= RECOVERY, "recovered after {recovery:?}");
}

#[test]
fn tail_follows_through_a_redis_crash_with_aof_without_gap_or_duplicate() {
    let mut s = proxied(true);
    let stream = "tcrash";
    let mut published = add(&s.redis, stream, 0, 50);
    let run = tail(&s.proxy.url(), stream, 150);
    run.wait_lines(50, "the history");

    let restarted = s.crash();
    published.extend(add(&s.redis, stream, 50, 100));

    let recovery = run.recovered_after(restarted, 51, "entries after the restart");
    let out = run.exit();
    eprintln!(
        "tail --follow, SIGKILL + restart (AOF always): first entry {recovery:?} after the restart"
    );
    assert_printed_in_order(&out, &published);
    assert!(recovery <= RECOVERY, "recovered after {recovery:?}");
}
