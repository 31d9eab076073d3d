//! The monitor, cleanup and scaler against a real `redis-server` (one per test,
//! from `streambus-testkit`), with unique key prefixes.
//!
//! Redis idle times are real time, so thresholds are tens of milliseconds and
//! every wait polls a condition with a deadline; nothing sleeps a fixed time to
//! wait for something.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use redis::streams::{StreamInfoConsumersReply, StreamInfoGroupsReply, StreamPendingCountReply};
use streambus::admin::monitor::{self, CleanupOptions, MonitorOptions, SkipReason, Status};
use streambus::admin::scaler::{self, Suggestion};
use streambus::{Connection, ErrorKind};
use streambus_testkit::{unique_prefix, RedisServer};

use common::{connect, read_as};

/// A stream with `n` entries and a group reading it from the start.
async fn setup(conn: &mut Connection, label: &str, n: usize) -> (String, String) {
    let stream = format!("{}s", unique_prefix(label));
    let group = "g".to_owned();
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("n")
            .arg(i)
            .ignore();
    }
    pipe.cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(&group)
        .arg("0")
        .arg("MKSTREAM")
        .ignore();
    pipe.query_async::<()>(conn).await.unwrap();
    (stream, group)
}

/// Makes `consumer` active now (its idle time drops to ~0) without taking new
/// entries: re-reads one of its own pending entries (or nothing).
async fn touch(conn: &mut Connection, stream: &str, group: &str, consumer: &str) {
    read_as(conn, stream, group, consumer, 1, "0").await;
}

async fn ack(conn: &mut Connection, stream: &str, group: &str, ids: &[String]) -> usize {
    if ids.is_empty() {
        return 0;
    }
    redis::cmd("XACK")
        .arg(stream)
        .arg(group)
        .arg(ids)
        .query_async(conn)
        .await
        .unwrap()
}

/// Every pending entry of the group: id -> (owner, delivery count).
async fn pel(
    conn: &mut Connection,
    stream: &str,
    group: &str,
) -> BTreeMap<String, (String, usize)> {
    let r: StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(100_000)
        .query_async(conn)
        .await
        .unwrap();
    r.ids
        .into_iter()
        .map(|p| (p.id, (p.consumer, p.times_delivered)))
        .collect()
}

/// Consumers of the group: name -> (pending, idle ms).
async fn consumers(
    conn: &mut Connection,
    stream: &str,
    group: &str,
) -> BTreeMap<String, (usize, usize)> {
    let r: StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .unwrap();
    r.consumers
        .into_iter()
        .map(|c| (c.name, (c.pending, c.idle)))
        .collect()
}

/// Polls until every consumer in `names` has been idle longer than `threshold`.
async fn wait_idle(
    conn: &mut Connection,
    stream: &str,
    group: &str,
    names: &[&str],
    threshold: Duration,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cs = consumers(conn, stream, group).await;
        if names.iter().all(|n| {
            cs.get(*n)
                .is_some_and(|c| c.1 as u128 > threshold.as_millis())
        }) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "consumers {names:?} never went idle: {cs:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn statuses_of_idle_stalled_busy_and_healthy_consumers() {
    let server = RedisServer::start();
    let mut conn = connect(&server.url()).await;
    let (s, g) = setup(&mut conn, "status", 20).await;

    let idle = read_as(&mut conn, &s, &g, "idle", 1, ">").await;
    ack(&mut conn, &s, &g, &idle).await;
    read_as(&mut conn, &s, &g, "stalled", 2, ">").await;
    read_as(&mut conn, &s, &g, "busy", 5, ">").await;
    read_as(&mut conn, &s, &g, "ok", 1, ">").await;

    let options = MonitorOptions {
        idle_threshold: Duration::from_millis(50),
        pending_warning: 3,
        ..MonitorOptions::default()
    };
    let expected = [
        ("busy", Status::TooManyPending),
        ("idle", Status::Idle),
        ("ok", Status::Ok),
        ("stalled", Status::Stalled),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let snap = loop {
        touch(&mut conn, &s, &g, "busy").await;
        touch(&mut conn, &s, &g, "ok").await;
        let snap = monitor::snapshot(&mut conn, &s, &options).await.unwrap();
        let got: Vec<(&str, Status)> = snap.groups[0]
            .consumers
            .iter()
            .map(|c| (c.name.as_str(), c.status))
            .collect();
        if got == expected {
            break snap;
        }
        assert!(
            Instant::now() < deadline,
            "statuses never became {expected:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let group = &snap.groups[0];
    assert_eq!(group.count(Status::Stalled), 1);
    let pending: Vec<u64> = group.consumers.iter().map(|c| c.pending).collect();
    assert_eq!(pending, [5, 0, 1, 2]);
    // Redis 7.0 has no `inactive`.
    assert!(group.consumers.iter().all(|c| c.inactive.is_none()));
    assert_eq!(
        Status::Stalled.reference_text(),
        "WARNING - stalled with pending items"
    );

    // Cleanup: the busy consumer (many pending, active) is never deleted nor robbed.
    let threshold = Duration::from_millis(300);
    wait_idle(&mut conn, &s, &g, &["idle", "stalled"], threshold).await;
    touch(&mut conn, &s, &g, "busy").await;
    touch(&mut conn, &s, &g, "ok").await;
    let report = monitor::cleanup(
        &mut conn,
        &s,
        &g,
        &CleanupOptions {
            idle_threshold: threshold,
            ..CleanupOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(report.deleted, ["idle", "stalled"], "{report:?}");
    assert_eq!(report.moved.len(), 1, "{report:?}");
    assert_eq!(
        (
            report.moved[0].from.as_str(),
            report.moved[0].to.as_str(),
            report.moved[0].count
        ),
        ("stalled", "ok", 2)
    );
    let cs = consumers(&mut conn, &s, &g).await;
    assert_eq!(
        cs.keys().map(String::as_str).collect::<Vec<_>>(),
        ["busy", "ok"]
    );
    assert_eq!(cs["busy"].0, 5);
    assert_eq!(cs["ok"].0, 3);
}

#[tokio::test]
async fn snapshot_matches_xinfo_and_says_when_lag_is_unknown() {
    let server = RedisServer::start();
    let mut conn = connect(&server.url()).await;
    let (s, g) = setup(&mut conn, "lag", 10).await;
    let read = read_as(&mut conn, &s, &g, "c1", 3, ">").await;

    let snap = monitor::snapshot(&mut conn, &s, &MonitorOptions::default())
        .await
        .unwrap();
    let info: StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&s)
        .query_async(&mut conn)
        .await
        .unwrap();
    let gi = &info.groups[0];
    let group = snap.group(&g).unwrap();
    assert_eq!(group.lag, gi.lag.map(|l| l as u64));
    assert_eq!(group.lag, Some(7));
    assert_eq!(group.pending, 3);
    assert_eq!(group.entries_read, Some(3));
    assert_eq!(group.last_delivered_id.to_string(), gi.last_delivered_id);
    assert_eq!(group.oldest_pending_id.unwrap().to_string(), read[0]);
    assert!(group.oldest_pending_age.is_some());
    let spread = group.delivery_counts.unwrap();
    assert_eq!((spread.sampled, spread.min, spread.max), (3, 1, 1));
    assert_eq!(snap.length, 10);
    assert_eq!(snap.entries_added, Some(10));
    assert_eq!(snap.first_entry_id.unwrap().to_string(), read[0]);
    assert!(snap.last_entry_id > snap.first_entry_id);
    assert_eq!(snap.max_deleted_entry_id, None);

    // Redeliver the oldest twice more: the spread shows it.
    redis::cmd("XCLAIM")
        .arg(&s)
        .arg(&g)
        .arg("c1")
        .arg(0)
        .arg(&read[0])
        .query_async::<redis::Value>(&mut conn)
        .await
        .unwrap();
    let snap = monitor::snapshot(&mut conn, &s, &MonitorOptions::default())
        .await
        .unwrap();
    let spread = snap.groups[0].delivery_counts.unwrap();
    assert_eq!((spread.min, spread.max), (1, 2));

    // Delete an undelivered entry in the middle: Redis 7.0 reports the lag as nil.
    let all: Vec<redis::streams::StreamId> = {
        let r: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&s)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        r.ids
    };
    let _: u64 = redis::cmd("XDEL")
        .arg(&s)
        .arg(&all[6].id)
        .query_async(&mut conn)
        .await
        .unwrap();
    let snap = monitor::snapshot(&mut conn, &s, &MonitorOptions::default())
        .await
        .unwrap();
    let info: StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&s)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(info.groups[0].lag, None, "Redis itself cannot tell");
    assert_eq!(snap.groups[0].lag, None);
    assert_eq!(snap.max_deleted_entry_id.unwrap().to_string(), all[6].id);
    assert_eq!(
        scaler::reference_decision(&snap.groups[0], 50.0, 10.0),
        None
    );
    let json = serde_json::to_value(&snap).unwrap();
    assert!(json["groups"][0]["lag"].is_null());
    assert!(json["groups"][0]["oldest_pending_age_ms"].is_u64());
    assert!(json["groups"][0]["consumers"][0]["idle_ms"].is_u64());
    assert_eq!(json["groups"][0]["consumers"][0]["status"], "OK");

    // Once the group has read past the deletion, the lag is known again.
    read_as(&mut conn, &s, &g, "c1", 100, ">").await;
    let snap = monitor::snapshot(&mut conn, &s, &MonitorOptions::default())
        .await
        .unwrap();
    assert_eq!(snap.groups[0].lag, Some(0));
}

#[tokio::test]
async fn snapshot_errors_name_the_missing_thing() {
    let server = RedisServer::start();
    let mut conn = connect(&server.url()).await;
    let missing = format!("{}nope", unique_prefix("err"));
    let e = monitor::snapshot(&mut conn, &missing, &MonitorOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoStream);
    let (s, _) = setup(&mut conn, "err", 1).await;
    let e = monitor::snapshot(
        &mut conn,
        &s,
        &MonitorOptions {
            group: Some("other".into()),
            ..MonitorOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoGroup);
}

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
    let moved: BTreeMap<&str, u64> = report
        .moved
        .iter()
        .map(|m| (m.to.as_str(), m.count))
        .collect();
    // Least loaded first: L2 (0) takes 5, L3 (2) takes 2, L1 (5) takes none.
    assert_eq!(moved, BTreeMap::from([("L2", 5), ("L3", 2)]), "{report:?}");
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
    let cs = consumers(&mut conn, &s, &g).await;
    let loads: Vec<usize> = cs.values().map(|c| c.0).collect();
    assert_eq!(
        cs.keys().map(String::as_str).collect::<Vec<_>>(),
        ["L1", "L2", "L3"]
    );
    assert_eq!(loads, [5, 5, 4]);
}

#[tokio::test]
async fn cleanup_dry_run_changes_nothing() {
    let server = RedisServer::start();
    let mut conn = connect(&server.url()).await;
    let threshold = Duration::from_millis(300);
    let (s, g) = cleanup_scene(&mut conn, "dry", threshold).await;
    let pel_before = pel(&mut conn, &s, &g).await;
    let names_before: BTreeMap<String, usize> = consumers(&mut conn, &s, &g)
        .await
        .into_iter()
        .map(|(n, c)| (n, c.0))
        .collect();

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
    let moved: BTreeMap<&str, u64> = report
        .moved
        .iter()
        .map(|m| (m.to.as_str(), m.count))
        .collect();
    assert_eq!(moved, BTreeMap::from([("L2", 5), ("L3", 2)]), "{report:?}");
    assert_eq!(report.deleted, ["D", "E"]);

    assert_eq!(pel(&mut conn, &s, &g).await, pel_before);
    let names_after: BTreeMap<String, usize> = consumers(&mut conn, &s, &g)
        .await
        .into_iter()
        .map(|(n, c)| (n, c.0))
        .collect();
    assert_eq!(names_after, names_before);
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

    let report = monitor::cleanup(
        &mut conn,
        &s,
        &g,
        &CleanupOptions {
            idle_threshold: threshold,
            ..CleanupOptions::default()
        },
    )
    .await
    .unwrap();
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
    let report = monitor::cleanup(
        &mut conn,
        &s,
        &g,
        &CleanupOptions {
            idle_threshold: Duration::from_secs(5),
            ..CleanupOptions::default()
        },
    )
    .await
    .unwrap();
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
        let deadline = Instant::now() + Duration::from_secs(10);
        while consumers(&mut conn, &s, &g)
            .await
            .get("X")
            .is_some_and(|x| x.1 as u128 <= threshold.as_millis())
        {
            assert!(Instant::now() < deadline, "X never went idle");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
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

#[tokio::test]
async fn scaler_matches_the_reference_package() {
    // Hand-computed cases.
    assert_eq!(
        scaler::rate_and_suggestion(11, 83, 2, 50.0, 20.0),
        (13.253, Suggestion::In)
    );
    assert_eq!(
        scaler::rate_and_suggestion(11, 83, 1, 50.0, 20.0),
        (13.253, Suggestion::NoScale)
    );
    assert_eq!(
        scaler::rate_and_suggestion(5, 0, 2, 50.0, 10.0),
        (0.0, Suggestion::Out)
    );
    assert_eq!(
        scaler::rate_and_suggestion(0, 0, 2, 50.0, 10.0),
        (0.0, Suggestion::NoScale)
    );
    assert_eq!(
        scaler::rate_and_suggestion(1000, 3, 2, 50.0, 10.0),
        (100.0, Suggestion::Out)
    );
    assert_eq!(
        scaler::rate_and_suggestion(1, 1000, 2, 50.0, 10.0),
        (1.0, Suggestion::In)
    );
    assert_eq!(
        scaler::reference_sentence(11, 83, 2, 60.0, 20.0),
        "Consumers should be IN as stream length (11) / pending (83) rate is 13.253%"
    );

    // The same from a live group: 83 pending over two consumers, 11 undelivered.
    let server = RedisServer::start();
    let mut conn = connect(&server.url()).await;
    let (s, g) = setup(&mut conn, "scale", 94).await;
    read_as(&mut conn, &s, &g, "a", 40, ">").await;
    read_as(&mut conn, &s, &g, "b", 43, ">").await;
    let snap = monitor::snapshot(&mut conn, &s, &MonitorOptions::default())
        .await
        .unwrap();
    assert_eq!(
        scaler::reference_decision(&snap.groups[0], 60.0, 20.0),
        Some((13.253, Suggestion::In))
    );
    let sample = scaler::sample(&mut conn, &s, &g).await.unwrap();
    assert_eq!(
        (
            sample.entries_added,
            sample.entries_read,
            sample.lag,
            sample.pending,
            sample.consumers
        ),
        (Some(94), Some(83), Some(11), 83, 2)
    );
    // Fresh every time: ack everything and ask again.
    let all: Vec<String> = pel(&mut conn, &s, &g).await.into_keys().collect();
    ack(&mut conn, &s, &g, &all).await;
    let snap = monitor::snapshot(&mut conn, &s, &MonitorOptions::default())
        .await
        .unwrap();
    assert_eq!(
        scaler::reference_decision(&snap.groups[0], 60.0, 20.0),
        Some((0.0, Suggestion::Out))
    );
    let later = scaler::sample(&mut conn, &s, &g).await.unwrap();
    assert_eq!((later.pending, later.entries_read), (0, Some(83)));
}
