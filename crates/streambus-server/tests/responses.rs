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
use axum::http::Response;
use serde_json::{json, Value};
use streambus_server::{AppState, ServerConfig};
use streambus_testkit::wait::wait_for_some;
use streambus_testkit::RedisServer;

use common::http::{self, call, get, post};
use common::{config, dead_letter, group_fixture, state, DeadLetter, LeasedMember, TOKEN};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/responses.json");

/// String values kept as they are: enumerations, not data.
const KEPT_STRINGS: &[&str] = &["status", "suggestion", "redis", "reason", "error", "type"];

/// The status and JSON body of `resp`.
async fn body(resp: Response<Body>) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, http::json(resp).await)
}

/// The status and JSON body of a GET of `path` (with `token` if given).
async fn fetch(st: &AppState, path: &str, token: Option<&str>) -> (u16, Value) {
    body(call(st, get(path, token)).await).await
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
    let leased = "shape:leased";
    group_fixture(&redis, plain).await;
    let dead = |stream: &str| dead_letter(&redis, stream, &DeadLetter::default());
    dead(plain);
    let config = ServerConfig {
        partitions: [(parted.to_owned(), 2), (leased.to_owned(), 2)].into(),
        ..config(&[plain, missing, parted, leased])
    };
    let st = state(&redis, config).await;
    // A partitioned stream with a leased member: its `owners`.
    let client = streambus::Client::open(&redis.url()).unwrap();
    let member = LeasedMember::start(
        &client,
        &streambus::partition::Partitions::new(leased, 2).unwrap(),
        "lg",
        "member-1",
    );

    let mut got: BTreeMap<String, Value> = BTreeMap::new();
    let mut record = |name: &str, (status, v): (u16, Value)| {
        got.insert(
            name.to_owned(),
            json!({ "status": status, "body": shape("", &v) }),
        );
    };

    // A partitioned stream: publish to it (keyed, so the partition is fixed),
    // a group on the partition that got it, a dead letter there.
    let publish = post(
        &format!("/api/streams/{parted}/messages?key=k1"),
        "{\"a\":1}",
    );
    let (status, v) = body(call(&st, publish).await).await;
    let partition = v["partition"].as_u64().expect("a partition index");
    let key = streambus::partition::Partitions::new(parted, 2)
        .unwrap()
        .keys()[partition as usize]
        .clone();
    redis.cli(&["XGROUP", "CREATE", &key, "g", "0"]);
    dead(&key);
    record("publish_partitioned", (status, v));
    let publish = post(
        &format!("/api/streams/{plain}/messages?type=t"),
        "{\"a\":1}",
    );
    record("publish", body(call(&st, publish).await).await);
    // Once the member owns both partitions (before, an owner is null). Its
    // consumers are not listed: nothing was delivered to them, and Redis
    // creates a group's consumer with the first entry it gets.
    let streams = wait_for_some(Duration::from_secs(10), "leased owners", || async {
        let (status, v) = fetch(&st, "/api/streams", Some(TOKEN)).await;
        let owned = v["streams"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["stream"] == leased))
            .is_some_and(|s| s["owners"][0]["unowned"] == 0);
        owned.then_some((status, v))
    })
    .await;
    record("streams", streams);
    record(
        "group",
        fetch(&st, &format!("/api/streams/{plain}/groups/g"), Some(TOKEN)).await,
    );
    let scale_path = format!("/api/streams/{plain}/groups/g/scale");
    let advised = wait_for_some(Duration::from_secs(10), "an advisor target", || async {
        let (status, v) = fetch(&st, &scale_path, Some(TOKEN)).await;
        v["target"].is_u64().then_some((status, v))
    })
    .await;
    record("scale", advised);
    for (name, path, token) in [
        ("dlq", format!("/api/streams/{plain}/dlq"), Some(TOKEN)),
        (
            "dlq_partitioned",
            format!("/api/streams/{parted}/dlq"),
            Some(TOKEN),
        ),
        ("healthz", "/healthz".to_owned(), None),
        ("unauthorized", "/api/streams".to_owned(), None),
        ("no_route", "/nope".to_owned(), None),
        (
            "bad_request",
            format!("/api/streams/{plain}/dlq?count=0"),
            Some(TOKEN),
        ),
        (
            "no_group",
            format!("/api/streams/{plain}/groups/nope"),
            Some(TOKEN),
        ),
        (
            "group_of_partitioned",
            format!("/api/streams/{parted}/groups/g"),
            Some(TOKEN),
        ),
    ] {
        record(name, fetch(&st, &path, token).await);
    }

    member.stop().await;

    // Redis away: 503 with a reason, and /healthz says so.
    let mut redis = redis;
    redis.kill();
    let down = wait_for_some(Duration::from_secs(15), "healthz 503", || async {
        let r = fetch(&st, "/healthz", None).await;
        (r.0 == 503).then_some(r)
    })
    .await;
    record("healthz_down", down);
    record(
        "unavailable",
        fetch(&st, &format!("/api/streams/{plain}/groups/g"), Some(TOKEN)).await,
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
