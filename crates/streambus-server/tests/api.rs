//! The HTTP routes, called with `tower::ServiceExt::oneshot` against a real Redis.

mod common;

use std::time::Duration;

use axum::http::{header, StatusCode};
use streambus_server::ServerConfig;
use streambus_testkit::wait::wait_for_some;
use streambus_testkit::RedisServer;

use common::http::{call, get, json, post, text};
use common::{config, dead_letter, group_fixture, state, stream, DeadLetter, TOKEN};

#[tokio::test]
async fn auth_is_required_except_for_health_and_the_page() {
    let redis = RedisServer::start();
    let s = stream("auth");
    let st = state(&redis, config(&[&s])).await;

    for path in ["/api/streams", "/metrics", "/ws?streams=x"] {
        let r = call(&st, get(path, None)).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path} without token");
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert!(json(r).await["error"].as_str().unwrap().contains("token"));
        let r = call(&st, get(path, Some("wrong-token-0123456789abc"))).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path} wrong token");
    }
    // A token in the query only counts for the WebSocket.
    let r = call(&st, get(&format!("/api/streams?token={TOKEN}"), None)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let r = call(&st, get("/api/streams", Some(TOKEN))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = call(&st, get("/healthz", None)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        json(r).await,
        serde_json::json!({"status": "ok", "redis": "ok"})
    );
    for path in ["/", "/app.js", "/app.css"] {
        let r = call(&st, get(path, None)).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    // Without a token configured, the API is open (loopback only: see validate).
    let open = state(
        &redis,
        ServerConfig {
            streams: vec![s.clone()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        call(&open, get("/api/streams", None)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn security_headers_on_every_response() {
    let redis = RedisServer::start();
    let s = stream("headers");
    let st = state(&redis, config(&[&s])).await;
    for (path, token) in [
        ("/", None),
        ("/app.js", None),
        ("/api/streams", Some(TOKEN)),
        ("/api/streams", None),
        ("/no/such/route", None),
        ("/healthz", None),
    ] {
        let r = call(&st, get(path, token)).await;
        let h = r.headers();
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        for part in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(part), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer", "{path}");
    }
    let r = call(&st, get("/", None)).await;
    assert!(r.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = text(r).await;
    assert!(page.contains("<script src=\"/app.js\""));
    assert_eq!(
        call(&st, get("/no/such/route", None)).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn publish_created_bad_json_too_large_unknown_stream() {
    let redis = RedisServer::start();
    let s = stream("publish");
    let st = state(
        &redis,
        ServerConfig {
            max_body_bytes: 1024,
            ..config(&[&s])
        },
    )
    .await;
    let path = format!("/api/streams/{s}/messages?type=alert&key=host-1");
    let r = call(&st, post(&path, r#"{"severity":"high","msg":"<b>x</b>"}"#)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body = json(r).await;
    let entry_id = body["entry_id"].as_str().unwrap().to_owned();
    let envelope_id = body["id"].as_str().unwrap();
    assert_eq!(envelope_id.len(), 36, "{body}");
    let got = redis.cli(&["XRANGE", &s, "-", "+"]);
    assert!(got.contains(&entry_id), "{got}");
    assert!(got.contains(envelope_id) && got.contains("alert") && got.contains("host-1"));

    let r = call(&st, post(&path, "{not json")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(json(r).await["error"].as_str().unwrap().contains("JSON"));
    let r = call(&st, post(&path, "")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(2000));
    let r = call(&st, post(&path, big)).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(json(r).await["error"].as_str().unwrap().contains("1024"));

    let r = call(&st, post("/api/streams/not-served/messages", "{}")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = call(&st, post("/api/streams/bad%00name/messages", "{}")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(redis.cli(&["XLEN", &s]), "1");
}

#[tokio::test]
async fn group_snapshot_and_unknown_names() {
    let redis = RedisServer::start();
    let s = stream("groups");
    let missing = stream("missing");
    group_fixture(&redis, &s).await;
    let st = state(&redis, config(&[&s, &missing])).await;

    let r = call(&st, get(&format!("/api/streams/{s}/groups/g"), Some(TOKEN))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v = json(r).await;
    assert_eq!(v["stream"], s.as_str());
    assert_eq!(v["length"], 5);
    assert!(v["last_entry_id"].is_string());
    let g = &v["groups"][0];
    assert_eq!(g["name"], "g");
    assert_eq!(g["pending"], 2);
    assert_eq!(g["lag"], 3);
    assert!(g["oldest_pending_age_ms"].is_u64(), "{g}");
    let c = &g["consumers"][0];
    assert_eq!(c["name"], "c1");
    assert_eq!(c["pending"], 2);
    assert_eq!(c["status"], "OK");
    assert!(c["idle_ms"].is_u64());

    let r = call(
        &st,
        get(&format!("/api/streams/{s}/groups/nope"), Some(TOKEN)),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(json(r).await["error"].as_str().unwrap().contains("nope"));
    let r = call(
        &st,
        get(&format!("/api/streams/{missing}/groups/g"), Some(TOKEN)),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = call(&st, get("/api/streams/other/groups/g", Some(TOKEN))).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // The list: both streams, the missing one marked as such.
    let v = json(call(&st, get("/api/streams", Some(TOKEN))).await).await;
    let list = v["streams"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["exists"], true);
    assert_eq!(list[0]["groups"][0]["pending"], 2);
    assert_eq!(list[0]["dead_letters"], 0);
    assert_eq!(list[1]["exists"], false);
}

#[tokio::test]
async fn scale_reports_reference_rule_and_advisor() {
    let redis = RedisServer::start();
    let s = stream("scale");
    group_fixture(&redis, &s).await;
    let st = state(&redis, config(&[&s])).await;
    let path = format!("/api/streams/{s}/groups/g/scale");
    let v = json(call(&st, get(&path, Some(TOKEN))).await).await;
    // lag 3 / pending 2 = 150% -> clamped to 100 -> OUT.
    assert_eq!(v["rate"], 100.0);
    assert_eq!(v["suggestion"], "OUT");
    assert_eq!(v["consumers"], 1);
    assert!(v["sentence"]
        .as_str()
        .unwrap()
        .starts_with("Consumers should be OUT"));
    assert!(!v["reasons"].as_array().unwrap().is_empty());
    // The advisor needs a second sample at least a second later.
    let v = wait_for_some(Duration::from_secs(5), "an advisor target", || async {
        let v = json(call(&st, get(&path, Some(TOKEN))).await).await;
        v["target"].is_u64().then_some(v)
    })
    .await;
    assert!(v["advisor"]["target"].as_u64().unwrap() >= 1);
    assert!(v["advisor"]["suggestion"].is_string());
    let r = call(
        &st,
        get(&format!("/api/streams/{s}/groups/nope/scale"), Some(TOKEN)),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn dead_letters_are_listed() {
    let redis = RedisServer::start();
    let s = stream("dlq");
    let st = state(&redis, config(&[&s])).await;
    for i in 0..3 {
        let data = format!("{{\"n\":{i}}}");
        let d = DeadLetter {
            data: &data,
            reason: "handler failed: <script>",
            ..Default::default()
        };
        dead_letter(&redis, &s, &d);
    }
    let v = json(
        call(
            &st,
            get(&format!("/api/streams/{s}/dlq?count=2"), Some(TOKEN)),
        )
        .await,
    )
    .await;
    assert_eq!(v["total"], 3);
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["reason"], "handler failed: <script>");
    assert_eq!(entries[0]["deliveries"], 5);
    assert_eq!(entries[0]["fields"]["data"], "{\"n\":0}");
    let r = call(
        &st,
        get(&format!("/api/streams/{s}/dlq?count=0"), Some(TOKEN)),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = call(
        &st,
        get(&format!("/api/streams/{s}/dlq?after=zzz"), Some(TOKEN)),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn metrics_include_library_gauges() {
    let redis = RedisServer::start();
    let s = stream("metrics");
    group_fixture(&redis, &s).await;
    let st = state(&redis, config(&[&s])).await;
    let r = call(&st, get("/metrics", Some(TOKEN))).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let body = text(r).await;
    let line = |name: &str| {
        body.lines()
            .find(|l| l.starts_with(name) && l.contains(&s))
            .unwrap_or_else(|| panic!("no {name} line for {s} in:\n{body}"))
            .to_owned()
    };
    assert!(line("streambus_stream_length").ends_with(" 5"));
    assert!(line("streambus_group_pending").ends_with(" 2"));
    assert!(line("streambus_group_lag").ends_with(" 3"));
    assert!(body.contains("# HELP streambus_stream_length"));
    assert!(body.contains("streambus_server_ws_clients"));
}

#[tokio::test]
async fn healthz_503_when_redis_is_down() {
    let mut redis = RedisServer::start();
    let s = stream("health");
    let st = state(&redis, config(&[&s])).await;
    assert_eq!(
        call(&st, get("/healthz", None)).await.status(),
        StatusCode::OK
    );
    redis.kill();
    let body = wait_for_some(Duration::from_secs(10), "healthz 503", || async {
        let r = call(&st, get("/healthz", None)).await;
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            Some(json(r).await)
        } else {
            None
        }
    })
    .await;
    assert_eq!(body["redis"], "unreachable");
    // API errors say Redis is unavailable, without internals, with an id to find the log line.
    let r = call(&st, get("/api/streams", Some(TOKEN))).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v = json(r).await;
    assert!(v["error_id"].is_string(), "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(!msg.contains("127.0.0.1") && !msg.contains(&s), "{msg}");
}

#[test]
fn validate_refuses_public_listen_without_token() {
    let c = ServerConfig {
        listen: "0.0.0.0:8080".parse().unwrap(),
        ..Default::default()
    };
    assert!(c.validate().unwrap_err().to_string().contains("token"));
}
