//! The scaler's advice does not depend on how often clients ask: the service
//! samples every group on a fixed interval of its own, and requests to
//! `/metrics`, `/api/streams` or `/scale` only read what it has.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request};
use serde_json::Value;
use streambus_server::{app, AppState, ServerConfig};
use streambus_testkit::RedisServer;
use tower::ServiceExt;

use common::{config, eventually, producer, publish_n, state, stream, TOKEN};

async fn get(state: &AppState, path: &str) -> Value {
    let req = Request::get(path)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// A stream with group `g`: 2 entries pending with `c1`, 3 undelivered.
async fn fixture(redis: &RedisServer, s: &str) {
    publish_n(&producer(redis).await, s, 5, 0).await;
    redis.cli(&["XGROUP", "CREATE", s, "g", "0"]);
    redis.cli(&[
        "XREADGROUP",
        "GROUP",
        "g",
        "c1",
        "COUNT",
        "2",
        "STREAMS",
        s,
        ">",
    ]);
}

/// Two services on the same group for the same time: one scraped as fast as
/// it answers, one never asked until the end. Their advisors got the same
/// samples, so they say the same thing.
#[tokio::test]
async fn advice_does_not_depend_on_the_request_rate() {
    let redis = RedisServer::start();
    let s = stream("scale-rate");
    fixture(&redis, &s).await;
    let busy = state(&redis, config(&[&s])).await;
    let quiet = state(&redis, config(&[&s])).await;
    let scale = format!("/api/streams/{s}/groups/g/scale");
    // The experiment's length: a few of the scaler's 1 s intervals.
    let until = Instant::now() + Duration::from_millis(3500);
    let mut requests = 0;
    while Instant::now() < until {
        for path in ["/metrics", "/api/streams", scale.as_str()] {
            get(&busy, path).await;
            requests += 1;
        }
    }
    let busy_says = get(&busy, &scale).await;
    let quiet_says = get(&quiet, &scale).await;
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
    fixture(&redis, &s).await;
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
    eventually("the first sample", Duration::from_secs(10), || async {
        (st.scale_samples(&s, "g") == 1).then_some(())
    })
    .await;
    let until = Instant::now() + Duration::from_millis(1500);
    let mut requests = 0;
    while Instant::now() < until {
        for path in ["/metrics", "/api/streams", scale.as_str()] {
            get(&st, path).await;
            requests += 1;
        }
    }
    assert!(requests > 50, "only {requests} requests");
    assert_eq!(st.scale_samples(&s, "g"), 1, "after {requests} requests");
    let v = get(&st, &scale).await;
    assert!(v["target"].is_null(), "{v}");
    assert!(
        v["reasons"][0].as_str().unwrap().contains("two samples"),
        "{v}"
    );
}
