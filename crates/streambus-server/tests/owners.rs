//! Leased partition ownership in `GET /api/streams` (and the gauge
//! `streambus_partitions_unowned` in `/metrics`), with real leased members
//! (`PartitionedWorker::leased`, a short lease) in tasks of this process on
//! a real local Redis:
//!
//! - two members: every partition owned, by them, at most 2 each; each
//!   partition shows its lease's age, time to expiry, lag and pending;
//! - one crashes (its run dropped: no renewal, no release): the other takes
//!   its partitions once the lease has run out, and is the only live member;
//! - that one crashes too: every partition is unowned (and the gauge says
//!   so) until a new member joins and takes them all;
//! - the new member stops gracefully: it releases its leases and leaves the
//!   registry, and the group (no longer leased) is not listed any more.

mod common;

use std::time::Duration;

use serde_json::Value;
use streambus::partition::Partitions;
use streambus::Client;
use streambus_server::{AppState, ServerConfig};
use streambus_testkit::RedisServer;
use tokio::time::Instant;

use common::http::{call, get, json, text};
use common::{config, state, stream, test_lease, LeasedMember, TOKEN};

const PARTITIONS: u32 = 4;
const GROUP: &str = "billing";
const LIMIT: Duration = Duration::from_secs(20);

/// The `owners` entry of `GROUP` in the stream's `/api/streams` view (`Null`
/// while the group has none).
async fn owners(st: &AppState, stream: &str) -> Value {
    let body = json(call(st, get("/api/streams", Some(TOKEN))).await).await;
    let s = body["streams"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["stream"] == stream))
        .unwrap_or_else(|| panic!("{stream} not listed: {body}"))
        .clone();
    s["owners"]
        .as_array()
        .unwrap_or_else(|| panic!("no owners array: {s}"))
        .iter()
        .find(|o| o["group"] == GROUP)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Polls the owners of `GROUP` until `ok` holds; panics with the last view.
async fn wait_owners(
    st: &AppState,
    stream: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + LIMIT;
    loop {
        let o = owners(st, stream).await;
        if ok(&o) {
            return o;
        }
        assert!(Instant::now() < deadline, "{what}; last seen: {o:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The owner of each partition (`None`: no owner).
fn owner_names(o: &Value) -> Vec<Option<String>> {
    o["partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| p["owner"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn members(o: &Value) -> Vec<String> {
    let mut m: Vec<String> = o["members"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    m.sort();
    m
}

/// Every partition owned, by `names` only.
fn owned_by(o: &Value, names: &[&str]) -> bool {
    let owners = owner_names(o);
    owners.len() == PARTITIONS as usize
        && o["unowned"] == 0
        && owners
            .iter()
            .all(|p| p.as_deref().is_some_and(|n| names.contains(&n)))
        && members(o) == names
}

/// The gauge line of `stream` in `/metrics`.
async fn unowned_gauge(st: &AppState, stream: &str) -> Option<String> {
    let body = text(call(st, get("/metrics", Some(TOKEN))).await).await;
    body.lines()
        .find(|l| l.starts_with("streambus_partitions_unowned") && l.contains(stream))
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_streams_shows_who_owns_each_partition() {
    let redis = RedisServer::start();
    let s = stream("owners");
    let partitions = Partitions::new(&s, PARTITIONS).unwrap();
    let client = Client::open(&redis.url()).unwrap();
    let st = state(
        &redis,
        ServerConfig {
            partitions: [(s.clone(), PARTITIONS)].into(),
            ..config(&[&s])
        },
    )
    .await;
    // No member yet: the group is not leased, so it is not listed.
    assert_eq!(owners(&st, &s).await, Value::Null);

    let a = LeasedMember::start(&client, &partitions, GROUP, "member-a");
    let b = LeasedMember::start(&client, &partitions, GROUP, "member-b");
    let o = wait_owners(&st, &s, "both members own the partitions", |o| {
        owned_by(o, &["member-a", "member-b"])
            && ["member-a", "member-b"].iter().all(|m| {
                owner_names(o)
                    .iter()
                    .filter(|p| p.as_deref() == Some(*m))
                    .count()
                    == 2
            })
    })
    .await;
    let lease_ms = test_lease().lease_time.as_millis() as u64;
    for (i, p) in o["partitions"].as_array().unwrap().iter().enumerate() {
        assert_eq!(p["partition"], i, "{o:#}");
        assert_eq!(p["key"], partitions.keys()[i].as_str(), "{o:#}");
        assert!(p["held_ms"].is_u64(), "{o:#}");
        let left = p["expires_in_ms"].as_u64().unwrap();
        assert!(left <= lease_ms, "expires in {left} ms: {o:#}");
        assert!(p["renewed_ms_ago"].as_u64().unwrap() <= lease_ms, "{o:#}");
        assert_eq!(p["lag"], 0, "{o:#}");
        assert_eq!(p["pending"], 0, "{o:#}");
    }

    // b crashes: a takes b's partitions once their leases ran out.
    b.crash();
    wait_owners(&st, &s, "member-a owns every partition", |o| {
        owned_by(o, &["member-a"])
    })
    .await;

    // a crashes too: nobody owns anything, and it stays so.
    a.crash();
    let o = wait_owners(&st, &s, "every partition unowned", |o| {
        o["unowned"] == PARTITIONS && members(o).is_empty()
    })
    .await;
    for p in o["partitions"].as_array().unwrap() {
        assert_eq!(p["owner"], Value::Null, "{o:#}");
        assert_eq!(p["expires_in_ms"], Value::Null, "{o:#}");
        assert_eq!(p["held_ms"], Value::Null, "{o:#}");
    }
    let gauge = unowned_gauge(&st, &s).await.expect("the unowned gauge");
    assert!(gauge.ends_with(&format!(" {PARTITIONS}")), "{gauge}");
    // Still unowned a lease time later: nothing takes them but a member.
    tokio::time::sleep(test_lease().lease_time).await;
    assert_eq!(owners(&st, &s).await["unowned"], PARTITIONS);

    // A new member takes them all.
    let c = LeasedMember::start(&client, &partitions, GROUP, "member-c");
    wait_owners(&st, &s, "member-c owns every partition", |o| {
        owned_by(o, &["member-c"])
    })
    .await;
    let gauge = unowned_gauge(&st, &s).await.expect("the unowned gauge");
    assert!(gauge.ends_with(" 0"), "{gauge}");

    // The last member stops gracefully: it releases its leases and leaves
    // the registry, so the group no longer uses leases and is not listed.
    c.stop().await;
    wait_owners(&st, &s, "the group no longer listed", Value::is_null).await;
}
