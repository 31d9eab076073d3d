//! The shape of every JSON body the service answers, against a golden file
//! (`tests/golden/responses.json`): keys, JSON types, and the values that
//! are stable over runs (booleans, nulls, the enumerated words). The
//! dashboard (`assets/app.js`) and other clients read these bodies; a change
//! to a key, or a value that turns null, shows here first.
//!
//! Volatile values (times, ids, counts that depend on timing) are replaced by
//! their type. Key order is not compared: JSON objects are unordered.
//!
//! After a deliberate change: `STREAMBUS_UPDATE_GOLDEN=1 cargo test -p
//! streambus-server --test responses`, then review the diff of the file.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, Response};
use serde_json::{json, Value};
use streambus_server::{app, AppState, ServerConfig};
use streambus_testkit::RedisServer;
use tower::ServiceExt;

use common::{eventually, producer, publish_n, state, TOKEN};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/responses.json");

/// String values kept as they are: enumerations, not data.
const KEPT_STRINGS: &[&str] = &["status", "suggestion", "redis", "reason", "error", "type"];

async fn call(state: &AppState, req: Request<Body>) -> Response<Body> {
    app(state.clone()).oneshot(req).await.unwrap()
}

fn get(path: &str, token: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Body::empty()).unwrap()
}

fn post(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::from(body.to_owned()))
        .unwrap()
}

async fn body(resp: Response<Body>) -> (u16, Value) {
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    (status, v)
}

/// `v` with volatile leaves replaced by their type.
fn shape(key: &str, v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(k, v))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(|v| shape(key, v)).collect()),
        Value::Number(n) if n.is_f64() => json!("<float>"),
        Value::Number(_) => json!("<int>"),
        // Error messages are prose; only a few of them are enumerations.
        Value::String(s) if KEPT_STRINGS.contains(&key) && s.len() < 24 => v.clone(),
        Value::String(_) => json!("<string>"),
        Value::Bool(_) | Value::Null => v.clone(),
    }
}

#[tokio::test]
async fn every_response_keeps_its_shape() {
    let redis = RedisServer::start();
    // Fixed names (on a server of its own), so that the golden file can name them.
    let plain = "shape:plain";
    let missing = "shape:missing";
    let parted = "shape:parted";
    let p = producer(&redis).await;
    publish_n(&p, plain, 5, 0).await;
    redis.cli(&["XGROUP", "CREATE", plain, "g", "0"]);
    redis.cli(&[
        "XREADGROUP",
        "GROUP",
        "g",
        "c1",
        "COUNT",
        "2",
        "STREAMS",
        plain,
        ">",
    ]);
    let dead = |stream: &str| {
        redis.cli(&[
            "XADD",
            &streambus::keys::dead_letter(stream),
            "*",
            "data",
            "{\"n\":1}",
            "reason",
            "handler failed",
            "group",
            "g",
            "consumer",
            "c1",
            "deliveries",
            "5",
            "source_id",
            "1-1",
            "source_stream",
            stream,
        ]);
    };
    dead(plain);
    let config = ServerConfig {
        token: Some(TOKEN.into()),
        streams: vec![plain.into(), missing.into(), parted.into()],
        partitions: [(parted.to_owned(), 2)].into(),
        ..Default::default()
    };
    let st = state(&redis, config).await;

    let mut got: BTreeMap<String, Value> = BTreeMap::new();
    let mut record = |name: &str, (status, v): (u16, Value)| {
        got.insert(
            name.to_owned(),
            json!({ "status": status, "body": shape("", &v) }),
        );
    };

    // A partitioned stream: publish to it (keyed, so the partition is fixed),
    // a group on the partition that got it, a dead letter there.
    let r = call(
        &st,
        post(
            &format!("/api/streams/{parted}/messages?key=k1"),
            "{\"a\":1}",
        ),
    )
    .await;
    let (status, v) = body(r).await;
    let partition = v["partition"].as_u64().expect("a partition index");
    let key = streambus::partition::Partitions::new(parted, 2)
        .unwrap()
        .keys()[partition as usize]
        .clone();
    redis.cli(&["XGROUP", "CREATE", &key, "g", "0"]);
    dead(&key);
    record("publish_partitioned", (status, v));
    record(
        "publish",
        body(
            call(
                &st,
                post(
                    &format!("/api/streams/{plain}/messages?type=t"),
                    "{\"a\":1}",
                ),
            )
            .await,
        )
        .await,
    );
    record(
        "streams",
        body(call(&st, get("/api/streams", Some(TOKEN))).await).await,
    );
    record(
        "group",
        body(
            call(
                &st,
                get(&format!("/api/streams/{plain}/groups/g"), Some(TOKEN)),
            )
            .await,
        )
        .await,
    );
    let scale_path = format!("/api/streams/{plain}/groups/g/scale");
    let advised = eventually("an advisor target", Duration::from_secs(10), || async {
        let (status, v) = body(call(&st, get(&scale_path, Some(TOKEN))).await).await;
        v["target"].is_u64().then_some((status, v))
    })
    .await;
    record("scale", advised);
    record(
        "dlq",
        body(call(&st, get(&format!("/api/streams/{plain}/dlq"), Some(TOKEN))).await).await,
    );
    record(
        "dlq_partitioned",
        body(call(&st, get(&format!("/api/streams/{parted}/dlq"), Some(TOKEN))).await).await,
    );
    record(
        "healthz",
        body(call(&st, get("/healthz", None)).await).await,
    );
    record(
        "unauthorized",
        body(call(&st, get("/api/streams", None)).await).await,
    );
    record("no_route", body(call(&st, get("/nope", None)).await).await);
    record(
        "bad_request",
        body(
            call(
                &st,
                get(&format!("/api/streams/{plain}/dlq?count=0"), Some(TOKEN)),
            )
            .await,
        )
        .await,
    );
    record(
        "no_group",
        body(
            call(
                &st,
                get(&format!("/api/streams/{plain}/groups/nope"), Some(TOKEN)),
            )
            .await,
        )
        .await,
    );
    record(
        "group_of_partitioned",
        body(
            call(
                &st,
                get(&format!("/api/streams/{parted}/groups/g"), Some(TOKEN)),
            )
            .await,
        )
        .await,
    );

    // Redis away: 503 with a reason, and /healthz says so.
    let mut redis = redis;
    redis.kill();
    let down = eventually("healthz 503", Duration::from_secs(15), || async {
        let r = body(call(&st, get("/healthz", None)).await).await;
        (r.0 == 503).then_some(r)
    })
    .await;
    record("healthz_down", down);
    record(
        "unavailable",
        body(
            call(
                &st,
                get(&format!("/api/streams/{plain}/groups/g"), Some(TOKEN)),
            )
            .await,
        )
        .await,
    );
    let got = serde_json::to_string_pretty(&got).unwrap() + "\n";
    if std::env::var_os("STREAMBUS_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(std::path::Path::new(GOLDEN).parent().unwrap()).unwrap();
        std::fs::write(GOLDEN, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(GOLDEN).expect("the golden file (see the module docs)");
    let (want_v, got_v): (Value, Value) = (
        serde_json::from_str(&want).unwrap(),
        serde_json::from_str(&got).unwrap(),
    );
    assert!(
        want_v == got_v,
        "response shapes changed; got:\n{got}\nwant:\n{want}"
    );
}
