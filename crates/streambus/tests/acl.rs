//! Least-privilege Redis ACL users, one per role, with exactly the rules the
//! README documents: each role works with only those rules, and a missing
//! permission gives a clear error that names the command and the key.

mod common;

use std::time::Duration;

use streambus::admin::dead_letter;
use streambus::admin::monitor::{self, MonitorOptions};
use streambus::{
    CancellationToken, Client, Delivery, ErrorKind, Message, Outcome, Producer, ProducerOptions,
    Worker, WorkerOptions,
};
use streambus_testkit::{AclUser, RedisServer, ServerOptions};
use tokio::time::Instant;

use common::connect;

/// The rules documented in the README ("Redis ACL users").
const PRODUCER: &str = "~aurora:* +ping +xadd";
const WORKER: &str = "~aurora:* %RW~{aurora:*}:* +ping +xgroup|create +xreadgroup +xack +xpending +xclaim +xadd +xrange +evalsha +script|load";
const MONITOR: &str =
    "~aurora:* +ping +type +time +xinfo|stream +xinfo|groups +xinfo|consumers +xpending";

fn user(name: &str, rules: &str) -> AclUser {
    AclUser::new(name, "pw-for-tests", rules.split(' '))
}

/// Publishes one message as the user of `url`, which must be refused for lack
/// of a permission; the error.
async fn refused_publish(url: &str, stream: &str) -> streambus::Error {
    let client = Client::open(url).unwrap();
    let err = Producer::new(&client, ProducerOptions::default())
        .await
        .unwrap()
        .publish(stream, Message::json(&1).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permission, "{err}");
    err
}

#[tokio::test]
async fn each_role_works_with_the_documented_rules_and_no_more() {
    let redis = RedisServer::start_with(ServerOptions {
        acl_users: vec![
            user("producer", PRODUCER),
            user("worker", WORKER),
            user("monitor", MONITOR),
            user("producer-without-xadd", "~aurora:* +ping"),
            user("producer-other-keys", "~other:* +ping +xadd"),
        ],
        ..Default::default()
    });
    let url = |u: &str| redis.url_for_user(u, "pw-for-tests");
    let stream = "aurora:alerts";

    // Producer: publishes.
    let producer_client = Client::open(&url("producer")).unwrap();
    let producer = Producer::new(&producer_client, ProducerOptions::default())
        .await
        .unwrap();
    for i in 0..10 {
        producer
            .publish(stream, Message::json(&i).unwrap())
            .await
            .unwrap();
    }

    // Worker: reads, acks, retries and dead-letters through the group.
    let stop = CancellationToken::new();
    let worker = Worker::new(
        &Client::open(&url("worker")).unwrap(),
        stream,
        "alert-processor",
        WorkerOptions {
            consumer_name: Some("w1".into()),
            block: Duration::from_millis(50),
            reclaim_interval: Duration::from_millis(10),
            ..Default::default()
        },
    );
    let task = tokio::spawn(worker.run(
        |d: Delivery| async move {
            let n: i64 = d.decode().unwrap();
            if n == 3 {
                Outcome::dead_letter("three is poison")
            } else {
                Outcome::Ack
            }
        },
        stop.clone(),
    ));

    // Monitor: snapshots until the group is done.
    let mut mon = connect(&url("monitor")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snap = monitor::snapshot(&mut mon, stream, &MonitorOptions::default())
            .await
            .unwrap();
        if snap
            .groups
            .first()
            .is_some_and(|g| g.pending == 0 && g.lag == Some(0))
        {
            break;
        }
        assert!(Instant::now() < deadline, "worker did not finish: {snap:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.acked, 9);
    assert_eq!(report.dead_lettered, 1);

    // The monitor role cannot write.
    let mut admin = connect(&redis.url()).await;
    assert_eq!(dead_letter::count(&mut admin, stream).await.unwrap(), 1);
    refused_publish(&url("monitor"), stream).await;

    // A missing command permission: the error names the command and the key.
    let err = refused_publish(&url("producer-without-xadd"), stream).await;
    let text = err.to_string();
    assert!(
        text.contains("XADD") && text.contains("aurora:alerts"),
        "{text}"
    );
    assert!(
        text.contains("xadd"),
        "the server's reason names the command: {text}"
    );
    assert!(text.contains("ACL"), "{text}");

    // A missing key permission: the same.
    let err = refused_publish(&url("producer-other-keys"), stream).await;
    assert!(err.to_string().contains("aurora:alerts"), "{err}");
}

/// The README's extra rules for the idempotency guard: the worker role plus
/// `+get +set +pexpire +del` (its lease scripts run GET, SET, PEXPIRE, DEL).
const IDEMPOTENCY: &str = "+get +set +pexpire +del";

#[tokio::test]
async fn the_idempotency_guard_works_with_its_documented_rules() {
    let redis = RedisServer::start_with(ServerOptions {
        acl_users: vec![
            user("producer", PRODUCER),
            user("guarded", &format!("{WORKER} {IDEMPOTENCY}")),
        ],
        ..Default::default()
    });
    let url = |u: &str| redis.url_for_user(u, "pw-for-tests");
    let stream = "aurora:guarded";
    let producer = Producer::new(
        &Client::open(&url("producer")).unwrap(),
        ProducerOptions::default(),
    )
    .await
    .unwrap();
    // Every envelope twice, as a retried publish writes it.
    for i in 0..20 {
        let m = Message::json(&i).unwrap();
        producer.publish(stream, m.clone()).await.unwrap();
        producer.publish(stream, m).await.unwrap();
    }
    let mut conn = connect(&redis.url()).await;
    streambus::admin::group::create_group(&mut conn, stream, "g", streambus::StartId::Beginning)
        .await
        .unwrap();
    let handled = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = handled.clone();
    let stop = CancellationToken::new();
    let worker = tokio::spawn(
        Worker::new(
            &Client::open(&url("guarded")).unwrap(),
            stream,
            "g",
            WorkerOptions {
                block: Duration::from_millis(50),
                reclaim_interval: Duration::from_millis(10),
                idempotency_ttl: Some(Duration::from_secs(60)),
                retry_backoff: streambus::Backoff::new(
                    Duration::from_millis(10),
                    Duration::from_millis(50),
                ),
                ..Default::default()
            },
        )
        .run(
            move |_d: Delivery| {
                let seen = seen.clone();
                async move {
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            },
            stop.clone(),
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::pending_count(&mut conn, stream, "g").await > 0
        || handled.load(std::sync::atomic::Ordering::Relaxed) < 20
    {
        assert!(Instant::now() < deadline, "not settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let report = worker.await.unwrap().unwrap();
    assert_eq!(
        handled.load(std::sync::atomic::Ordering::Relaxed),
        20,
        "{report:?}"
    );
    assert_eq!(report.duplicates_skipped, 20, "{report:?}");
}
