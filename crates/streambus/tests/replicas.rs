//! `min_replicas`: a publish returns success only once that many replicas
//! hold the entry (`WAIT` at the end of each pipeline), and says so when they
//! do not. Against a real primary and replica (under three sentinels, from
//! the testkit): with the option, an unplanned failover loses no publish that
//! returned success; without it, it loses some.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streambus::{Client, ErrorKind, Message, Producer, ProducerOptions};
use streambus_testkit::{RedisSentinel, RedisServer, SentinelOptions};

use common::{numbered, xlen};

fn replicated(n: u32, timeout_ms: u64) -> ProducerOptions {
    ProducerOptions {
        min_replicas: Some((n, Duration::from_millis(timeout_ms))),
        publish_timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

async fn producer(url: &str, options: ProducerOptions) -> Producer {
    Producer::new(&Client::open(url).unwrap(), options)
        .await
        .unwrap()
}

fn replica_of(setup: &RedisSentinel) -> &RedisServer {
    let primary = setup.primary().port();
    let port = setup
        .server_ports()
        .into_iter()
        .find(|p| *p != primary)
        .unwrap();
    setup.server(port)
}

/// `kill -SIG` of a redis-server this test started.
fn signal(server: &RedisServer, sig: &str) {
    let pid = server.pid().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

fn len_on(server: &RedisServer, stream: &str) -> u64 {
    server.cli(&["XLEN", stream]).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_returns_once_a_replica_holds_it() {
    let setup = RedisSentinel::start();
    let p = producer(&setup.primary().url(), replicated(1, 1000)).await;
    p.publish("s", Message::json(&0).unwrap()).await.unwrap();
    p.publish_batch("s", numbered(1..500)).await.unwrap();
    // WAIT returned only once the replica had acknowledged them all: they are
    // there now, with no waiting.
    assert_eq!(len_on(replica_of(&setup), "s"), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_replicas_is_an_error_that_names_the_written_entry() {
    let setup = RedisSentinel::start();
    let url = setup.primary().url();
    // Two asked for, one there.
    let p = producer(&url, replicated(2, 100)).await;
    let mut e = p
        .publish("s", Message::json(&1).unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotReplicated, "{e}");
    assert!(!e.is_retryable());
    let text = e.to_string();
    assert!(
        text.contains("on the primary") && text.contains("1 of 2 replicas"),
        "{text}"
    );
    assert!(e.take_unpublished().is_some(), "the message comes back");
    let outcomes = p.publish_batch_each("s", numbered(0..10)).await.unwrap();
    assert!(!outcomes.is_empty());
    for o in &outcomes {
        assert_eq!(o.as_ref().unwrap_err().kind(), ErrorKind::NotReplicated);
    }
    // Written on the primary all the same.
    let mut c = common::connect(&url).await;
    assert_eq!(xlen(&mut c, "s").await, 1 + outcomes.len() as u64);

    // Bad settings are refused up front.
    let client = Client::open(&url).unwrap();
    let e = Producer::new(&client, replicated(1, 5000))
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        e.to_string()
            .contains("below the connection's response timeout"),
        "{e}"
    );
}

/// The replica stops receiving (SIGSTOP, its link cut), then the primary is
/// SIGKILLed and the sentinels promote the replica. Publishes without
/// `min_replicas` returned success and are lost; with it, none returned
/// success (each said it was not replicated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_loses_acknowledged_publishes_only_without_min_replicas() {
    let mut setup = RedisSentinel::start();
    let url = setup.primary().url();
    let plain = producer(&url, ProducerOptions::default()).await;
    let safe = producer(&url, replicated(1, 200)).await;
    plain.publish_batch("s", numbered(0..10)).await.unwrap();
    safe.publish_batch("s", numbered(10..20)).await.unwrap();
    let replica = replica_of(&setup).port();
    signal(setup.server(replica), "STOP");
    setup.primary().cli(&["CLIENT", "KILL", "TYPE", "replica"]);

    let acked_plain = plain.publish_batch("s", numbered(100..150)).await.unwrap();
    assert_eq!(acked_plain.len(), 50, "acknowledged by the primary alone");
    let outcomes = safe
        .publish_batch_each("s", numbered(200..250))
        .await
        .unwrap();
    assert!(outcomes.iter().all(|o| o
        .as_ref()
        .is_err_and(|e| e.kind() == ErrorKind::NotReplicated)));

    let old = setup.kill_primary();
    signal(setup.server(replica), "CONT");
    let new = setup
        .wait_for_failover(old, Duration::from_secs(30))
        .unwrap();
    assert_eq!(new, replica);
    let kept = len_on(setup.server(new), "s");
    assert_eq!(
        kept, 20,
        "the 50 acknowledged without min_replicas are lost"
    );
}

/// Publishing through the sentinels with `min_replicas`, the primary
/// SIGKILLed mid-run: every publish that returned success is on the new
/// primary. (Errors are published again, as a caller would.) Publishing
/// resumes once the new primary has a replica again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_min_replicas_an_unplanned_failover_loses_no_acknowledged_publish() {
    // Two replicas: after the failover the new primary still has one (the
    // sentinels move the other to it), so WAIT 1 can succeed again.
    let mut setup = RedisSentinel::start_with(SentinelOptions {
        replicas: 2,
        ..Default::default()
    });
    let client = Client::open_with(
        &setup.url(),
        streambus::ConnectOptions {
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_millis(1000),
            ..Default::default()
        },
    )
    .unwrap();
    let p = Producer::new(&client, replicated(1, 300)).await.unwrap();
    let acked: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let publishing = {
        let (acked, stop) = (acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let mut m = Message::json(&n).unwrap();
                loop {
                    match p.publish("s", m).await {
                        Ok(_) => break,
                        Err(mut e) => {
                            m = e.take_unpublished().expect("given back");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                acked.lock().unwrap().insert(n);
                n += 1;
            }
        })
    };
    let count = || acked.lock().unwrap().len();
    common::eventually(10, "publishing under way", || async { count() >= 200 }).await;
    let old = setup.kill_primary();
    let new = setup
        .wait_for_failover(old, Duration::from_secs(30))
        .unwrap();
    let before = count();
    common::eventually(20, "publishing again", || async { count() >= before + 200 }).await;
    stop.cancel();
    publishing.await.unwrap();

    let on_new: Vec<(String, Vec<(String, String)>)> = {
        let mut c = common::connect(&setup.server(new).url()).await;
        redis::cmd("XRANGE")
            .arg("s")
            .arg("-")
            .arg("+")
            .query_async(&mut c)
            .await
            .unwrap()
    };
    let kept: HashSet<u64> = on_new
        .iter()
        .filter_map(|(_, fields)| {
            let data = &fields.iter().find(|(k, _)| k == "data")?.1;
            data.parse().ok()
        })
        .collect();
    let acked = acked.lock().unwrap();
    let lost: Vec<&u64> = acked.iter().filter(|n| !kept.contains(n)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged publishes lost: {lost:?}",
        lost.len()
    );
}
