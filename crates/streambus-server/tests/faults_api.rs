//! The JSON API, `/healthz` and `/metrics` of `streambus serve` while Redis
//! is unreachable and after: the service reads through the testkit's
//! `FaultProxy` with short timeouts (the rig is `common::faults`), and is
//! called in-process with `oneshot`. The relay under faults is in `faults.rs`.
//!
//! `SERVE_FAULTS_DEFAULT_TIMEOUTS=1` runs the service with the default
//! timeouts, and the bound is the documented 10 s.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Response, StatusCode};
use serde_json::Value;
use streambus_testkit::wait::{wait_for, wait_for_some};
use streambus_testkit::ServerOptions;

use common::faults::{bound, Rig};
use common::http::{call, get, json, post, text};
use common::TOKEN;

/// Checks a 503 for an unreachable Redis: `Retry-After`, a JSON reason, no
/// internals.
async fn assert_unavailable(resp: Response<Body>, what: &str) -> Value {
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
    let retry: u64 = resp.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&retry), "{what}: Retry-After {retry}");
    let v = json(resp).await;
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| !e.contains("127.0.0.1")),
        "{what}: {v}"
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_answers_503_with_retry_after_and_healthz_tells_while_redis_is_unreachable() {
    let rig = Rig::start("api", ServerOptions::default()).await;
    let st = rig.state();
    let r = call(st, get("/healthz", None)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        json(r).await,
        serde_json::json!({"status": "ok", "redis": "ok"})
    );

    // Redis unreachable: open connections cut, new ones refused.
    rig.proxy.refuse();
    rig.proxy.reset_all();
    let cut = Instant::now();
    let v = wait_for_some(bound(), "/api/streams answers 503", || async {
        let r = call(st, get("/api/streams", Some(TOKEN))).await;
        (r.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(r)
    })
    .await;
    let v = assert_unavailable(v, "/api/streams").await;
    assert_eq!(v["reason"], "redis_unreachable", "{v}");
    assert!(v["error_id"].is_string(), "{v}");

    let h = wait_for_some(bound(), "/healthz says unreachable", || async {
        let r = call(st, get("/healthz", None)).await;
        (r.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(r)
    })
    .await;
    let noticed = cut.elapsed();
    let h = assert_unavailable_health(h).await;
    assert_eq!(h["status"], "redis_unreachable", "{h}");
    assert_eq!(h["redis"], "unreachable", "{h}");
    assert_eq!(h["error"], "connection", "{h}");
    assert!(h["since"].as_u64().unwrap() > 1_600_000_000_000, "{h}");
    eprintln!("refused: /healthz unreachable {noticed:?} after the cut");

    // A publish waits for `publish_timeout` (1 s here), then 503 with its id.
    let started = Instant::now();
    let r = call(
        st,
        post(
            &format!("/api/streams/{}/messages", rig.stream),
            r#"{"a":1}"#,
        ),
    )
    .await;
    let waited = started.elapsed();
    let v = assert_unavailable(r, "publish").await;
    // Unconfirmed when the library could not tell that its socket, reset
    // while idle, took nothing of the request.
    assert!(
        v["reason"] == "redis_unreachable" || v["reason"] == "publish_unconfirmed",
        "{v}"
    );
    assert!(v["id"].is_string(), "the envelope id is given back: {v}");
    assert!(waited < Duration::from_secs(5), "publish waited {waited:?}");

    let healed = Instant::now();
    rig.proxy.pass_through();
    wait_for(bound(), "/api/streams answers 200 again", || async {
        call(st, get("/api/streams", Some(TOKEN))).await.status() == StatusCode::OK
    })
    .await;
    let api_back = healed.elapsed();
    wait_for(bound(), "/healthz answers 200 again", || async {
        call(st, get("/healthz", None)).await.status() == StatusCode::OK
    })
    .await;
    let health_back = healed.elapsed();
    eprintln!("refused: heal -> API 200 {api_back:?}, heal -> /healthz 200 {health_back:?}");
    assert!(api_back <= bound() && health_back <= bound());
}

/// `/healthz`'s 503 has `Retry-After` too, and no error text.
async fn assert_unavailable_health(resp: Response<Body>) -> Value {
    assert!(resp.headers().contains_key(header::RETRY_AFTER));
    let v = json(resp).await;
    let s = v.to_string();
    assert!(!s.contains("127.0.0.1") && !s.contains("refused"), "{s}");
    v
}

/// The value of an unlabelled metric in a Prometheus text.
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_reconnects_and_show_redis_up() {
    let rig = Rig::start("metrics", ServerOptions::default()).await;
    let st = rig.state();
    let body = text(call(st, get("/metrics", Some(TOKEN))).await).await;
    assert!(body.contains("# HELP streambus_reconnects_total"), "{body}");
    assert!(body.contains("# HELP streambus_redis_up"), "{body}");
    let before =
        metric(&body, "streambus_reconnects_total").expect("the counter is shown from the start");

    rig.proxy.reset_all();
    let reset = Instant::now();
    let after = wait_for_some(bound(), "streambus_reconnects_total grows", || async {
        let body = text(call(st, get("/metrics", Some(TOKEN))).await).await;
        let n = metric(&body, "streambus_reconnects_total")?;
        // streambus_redis_up is process-wide, and other tests here cut Redis
        // off meanwhile: only its presence is checked.
        (n > before && metric(&body, "streambus_redis_up").is_some()).then_some(n)
    })
    .await;
    eprintln!(
        "reset: reconnects {before} -> {after} within {:?}",
        reset.elapsed()
    );
    assert!(after > before);
}
