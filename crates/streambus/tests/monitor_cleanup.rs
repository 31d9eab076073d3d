//! The monitor's cleanup against a real `redis-server` (one per test, from
//! `streambus-testkit`), with unique key prefixes: dead consumers deleted,
//! their pending entries moved to live ones, never dropped.
//!
//! Redis idle times are real time, so thresholds are tens of milliseconds and
//! every wait polls a condition with a deadline; nothing sleeps a fixed time to
//! wait for something.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use streambus::admin::monitor::{self, CleanupOptions, CleanupReport, SkipReason};
use streambus::Connection;
use streambus_testkit::RedisServer;

use common::group::{ack, cleanup_idle, consumers, idle_past, pel, setup, touch, wait_idle};
use common::{connect, read_as};

/// Live L1 (5 pending), L2 (0), L3 (2); dead D (7) and E (0).
async fn cleanup_scene(
    conn: &mut Connection,
    label: &str,
    threshold: Duration,
) -> (String, String) {
    let (s, g) = setup(conn, label, 30).await;
    read_as(conn, &s, &g, "L1", 5, ">").await;
    let l2 = read_as(conn, &s, &g, "L2", 1, ">").await;
    ack(conn, &s, &g, &l2).await;
    read_as(conn, &s, &g, "L3", 2, ">").await;
    read_as(conn, &s, &g, "D", 7, ">").await;
    let e = read_as(conn, &s, &g, "E", 1, ">").await;
    ack(conn, &s, &g, &e).await;
    wait_idle(conn, &s, &g, &["D", "E"], threshold).await;
    for l in ["L1", "L2", "L3"] {
        touch(conn, &s, &g, l).await;
    }
    (s, g)
}

/// How many entries each consumer was given: receiver -> count.
fn moved_to(report: &CleanupReport) -> BTreeMap<&str, u64> {
    report
        .moved
        .iter()
        .map(|m| (m.to.as_str(), m.count))
        .collect()
}

/// How many entries each consumer of the group has pending: name -> count.
async fn loads(conn: &mut Connection, stream: &str, group: &str) -> BTreeMap<String, usize> {
    consumers(conn, stream, group)
        .await
        .into_iter()
        .map(|(n, c)| (n, c.0))
        .collect()
}

#[tokio::test]
async fn cleanup_moves_every_pending_entry_to_the_least_loaded() {
    let server = RedisServer::start();
    let mut conn = connect(&server.url()).await;
    // Entries ~300 ms idle: the reference package (1 s min idle) would drop them.
    let threshold = Duration::from_millis(300);
    let (s, g) = cleanup_scene(&mut conn, "move", threshold).await;
    let before = pel(&mut conn, &s, &g).await;
    assert_eq!(before.len(), 14);

    let report = monitor::cleanup(
        &mut conn,
        &s,
        &g,
        &CleanupOptions {
            idle_threshold: threshold,
            page_size: 3, // several pages
            ..CleanupOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(!report.dry_run);
    assert_eq!(report.moved_total(), 7, "{report:?}");
    // Least loaded first: L2 (0) takes 5, L3 (2) takes 2, L1 (5) takes none.
    assert_eq!(
        moved_to(&report),
        BTreeMap::from([("L2", 5), ("L3", 2)]),
        "{report:?}"
    );
    assert_eq!(report.deleted, ["D", "E"]);
    assert!(report.skipped.is_empty());
    assert_eq!(report.vanished, 0);

    // Nothing lost, delivery counts untouched (JUSTID), loads balanced.
    let after = pel(&mut conn, &s, &g).await;
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (id, (owner, _)) in before.iter().filter(|(_, (o, _))| o == "D") {
        let (new_owner, deliveries) = &after[id];
        assert!(
            new_owner == "L2" || new_owner == "L3",
            "{id} went to {new_owner}"
        );
        assert_eq!(*deliveries, 1, "{id} (was {owner}'s) counted as a delivery");
    }
    let loads = loads(&mut conn, &s, &g).await;
    assert_eq!(
        loads.keys().map(String::as_str).collect::<Vec<_>>(),
        ["L1", "L2", "L3"]
    );
    assert_eq!(loads.values().copied().collect::<Vec<_>>(), [5, 5, 4]);
}

#[tokio::test]
async fn cleanup_dry_run_changes_nothing() {
    let server = RedisServer::start();
    let mut conn = connect(&server.url()).await;
    let threshold = Duration::from_millis(300);
    let (s, g) = cleanup_scene(&mut conn, "dry", threshold).await;
    let pel_before = pel(&mut conn, &s, &g).await;
    let names_before = loads(&mut conn, &s, &g).await;

    let report = monitor::cleanup(
        &mut conn,
        &s,
        &g,
        &CleanupOptions {
            idle_threshold: threshold,
            dry_run: true,
            ..CleanupOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(report.dry_run);
    assert_eq!(
        moved_to(&report),
        BTreeMap::from([("L2", 5), ("L3", 2)]),
        "{report:?}"
    );
    assert_eq!(report.deleted, ["D", "E"]);

    assert_eq!(pel(&mut conn, &s, &g).await, pel_before);
    assert_eq!(loads(&mut conn, &s, &g).await, names_before);
}

#[tokio::test]
async fn cleanup_without_live_consumers_leaves_entries_for_the_reclaim_loop() {
    let server = RedisServer::start();
    let mut conn = connect(&server.url()).await;
    let (s, g) = setup(&mut conn, "nolive", 10).await;
    read_as(&mut conn, &s, &g, "D1", 3, ">").await;
    let e = read_as(&mut conn, &s, &g, "D2", 1, ">").await;
    ack(&mut conn, &s, &g, &e).await;
    let threshold = Duration::from_millis(30);
    wait_idle(&mut conn, &s, &g, &["D1", "D2"], threshold).await;
    let before = pel(&mut conn, &s, &g).await;

    let report = cleanup_idle(&mut conn, &s, &g, threshold).await;
    assert!(report.moved.is_empty());
    assert_eq!(report.deleted, ["D2"]);
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].consumer, "D1");
    assert_eq!(report.skipped[0].pending, 3);
    assert_eq!(report.skipped[0].reason, SkipReason::NoLiveConsumer);
    assert_eq!(pel(&mut conn, &s, &g).await, before);
}

#[tokio::test]
async fn cleanup_leaves_a_consumer_that_comes_back() {
    let server = RedisServer::start();
    let mut conn = connect(&server.url()).await;
    let (s, g) = setup(&mut conn, "back", 10).await;
    read_as(&mut conn, &s, &g, "X", 2, ">").await;
    let threshold = Duration::from_millis(30);
    wait_idle(&mut conn, &s, &g, &["X"], threshold).await;
    // X reads again a moment before cleanup: it is alive, and keeps its entries.
    read_as(&mut conn, &s, &g, "X", 1, ">").await;
    let report = cleanup_idle(&mut conn, &s, &g, Duration::from_secs(5)).await;
    assert!(
        report.deleted.is_empty() && report.moved.is_empty(),
        "{report:?}"
    );
    assert_eq!(consumers(&mut conn, &s, &g).await["X"].0, 3);
}

/// Cleanup (1 ms threshold) races a task that reads as X, for many rounds. Each
/// round starts with X dead (idle past the threshold, its pending list empty or
/// not), and the read lands at a different point of cleanup's command sequence
/// (after 0-4 PINGs): before its look at the consumers, between that and the
/// moves, between the moves and the delete script, or after. No entry may ever
/// leave the pending list except by an ack: the pending ids are exactly those
/// delivered and not acked, after every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_never_drops_pending_entries_under_concurrent_reads() {
    let server = RedisServer::start();
    let mut conn = connect(&server.url()).await;
    let mut reader = connect(&server.url()).await;
    let mut cleaner = connect(&server.url()).await;
    let rounds = 200;
    let (s, g) = setup(&mut conn, "race", rounds * 2 + 10).await;

    let threshold = Duration::from_millis(1);
    let options = CleanupOptions {
        idle_threshold: threshold,
        ..CleanupOptions::default()
    };
    let mut delivered = BTreeSet::new();
    let mut acked = BTreeSet::new();
    let mut deletions = 0;
    let mut moved = 0;
    for round in 0..rounds {
        // X dead (or already deleted) before the race starts.
        common::eventually(10, "X idle past the threshold (or deleted)", || {
            let mut conn = conn.clone();
            let (s, g) = (&s, &g);
            async move {
                consumers(&mut conn, s, g)
                    .await
                    .get("X")
                    .is_none_or(|x| idle_past(x, threshold))
            }
        })
        .await;
        // A live consumer to hand entries to.
        touch(&mut conn, &s, &g, "L").await;

        let read = async {
            for _ in 0..round % 5 {
                redis::cmd("PING")
                    .query_async::<()>(&mut reader)
                    .await
                    .unwrap();
            }
            read_as(&mut reader, &s, &g, "X", 2, ">").await
        };
        let clean = monitor::cleanup(&mut cleaner, &s, &g, &options);
        let (ids, report) = tokio::join!(read, clean);
        let report = report.unwrap();
        assert_eq!(ids.len(), 2);
        delivered.extend(ids.iter().cloned());
        deletions += report.deleted.iter().filter(|d| *d == "X").count();
        moved += report.moved_total();

        let pending: BTreeSet<String> = pel(&mut conn, &s, &g).await.into_keys().collect();
        let expected: BTreeSet<String> = delivered.difference(&acked).cloned().collect();
        assert_eq!(pending, expected, "round {round}: {report:?}");

        // Every other round X finishes its work (an empty pending list makes it
        // deletable next round); otherwise its entries wait to be moved.
        if round % 2 == 0 {
            assert_eq!(ack(&mut conn, &s, &g, &ids).await, 2);
            acked.extend(ids);
        }
    }
    // The race was real: X was deleted (empty, idle) and entries were moved.
    assert!(deletions > 0, "X was never deleted");
    assert!(moved > 0, "nothing was ever moved");
}
