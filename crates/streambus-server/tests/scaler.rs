//! The scaler's advice does not depend on how often clients ask: the service
//! samples every group on a fixed interval of its own, and requests to
//! `/metrics`, `/api/streams` or `/scale` only read what it has.

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;
use streambus_server::{AppState, ServerConfig};
use streambus_testkit::wait::wait_for;
use streambus_testkit::RedisServer;

use common::http::{bytes, call, get};
use common::{config, group_fixture, state, stream, TOKEN};

/// An authorized GET of `path`: its JSON body, or null (`/metrics` is text).
async fn fetch(state: &AppState, path: &str) -> Value {
    let body = bytes(call(state, get(path, Some(TOKEN))).await).await;
    serde_json::from_slice(&body).unwrap_or(Value::Null)
}

/// Asks `state` for `/metrics`, `/api/streams` and `scale` as fast as it
/// answers, for `length` (the experiment's length, not a wait for anything);
/// returns how many requests it made.
async fn scrape(state: &AppState, scale: &str, length: Duration) -> usize {
    let until = Instant::now() + length;
    let mut requests = 0;
    while Instant::now() < until {
        for path in ["/metrics", "/api/streams", scale] {
            fetch(state, path).await;
            requests += 1;
        }
    }
    requests
}

/// Two services on the same group for the same time: one scraped as fast as
/// it answers, one never asked until the end. Their advisors got the same
/// samples, so they say the same thing.
#[tokio::test]
async fn advice_does_not_depend_on_the_request_rate() {
    let redis = RedisServer::start();
    let s = stream("scale-rate");
    group_fixture(&redis, &s).await;
    let busy = state(&redis, config(&[&s])).await;
    let quiet = state(&redis, config(&[&s])).await;
    let scale = format!("/api/streams/{s}/groups/g/scale");
    // A few of the scaler's 1 s intervals.
    let requests = scrape(&busy, &scale, Duration::from_millis(3500)).await;
    let busy_says = fetch(&busy, &scale).await;
    let quiet_says = fetch(&quiet, &scale).await;
    assert!(requests > 50, "only {requests} requests");
    assert!(
        busy_says["target"].is_u64(),
        "the scraped service has advice: {busy_says}"
    );
    assert_eq!(
        busy_says["advisor"], quiet_says["advisor"],
        "the advice depends on the request rate ({requests} requests vs 1)"
    );
    assert_eq!(busy_says["target"], quiet_says["target"]);
    // The same count of samples for the same time (the two samplers started
    // a moment apart, so one may be a tick ahead).
    let (busy_n, quiet_n) = (busy.scale_samples(&s, "g"), quiet.scale_samples(&s, "g"));
    assert!(
        busy_n.abs_diff(quiet_n) <= 1 && busy_n <= 5,
        "samples: {busy_n} scraped vs {quiet_n} left alone, in 3.5 s at 1 s"
    );
}

/// With a sampling interval longer than the test, the advisor has its first
/// sample only, however many requests come (before, requests at least 1 s
/// apart each fed it).
#[tokio::test]
async fn requests_never_feed_the_advisor() {
    let redis = RedisServer::start();
    let s = stream("scale-never");
    group_fixture(&redis, &s).await;
    let st = state(
        &redis,
        ServerConfig {
            scale_interval: Duration::from_secs(3600),
            ..config(&[&s])
        },
    )
    .await;
    let scale = format!("/api/streams/{s}/groups/g/scale");
    // The first sample is taken at startup.
    wait_for(Duration::from_secs(10), "the first sample", || async {
        st.scale_samples(&s, "g") == 1
    })
    .await;
    let requests = scrape(&st, &scale, Duration::from_millis(1500)).await;
    assert!(requests > 50, "only {requests} requests");
    assert_eq!(st.scale_samples(&s, "g"), 1, "after {requests} requests");
    let v = fetch(&st, &scale).await;
    assert!(v["target"].is_null(), "{v}");
    assert!(
        v["reasons"][0].as_str().unwrap().contains("two samples"),
        "{v}"
    );
}
