//! The monitor's snapshot against a real `redis-server` (one per test, from
//! `streambus-testkit`), with unique key prefixes: consumer statuses, the
//! figures of `XINFO`, a lag Redis cannot tell, errors.
//!
//! Redis idle times are real time, so thresholds are tens of milliseconds and
//! every wait polls a condition with a deadline; nothing sleeps a fixed time to
//! wait for something.

mod common;

use std::time::Duration;

use redis::streams::StreamInfoGroupsReply;
use streambus::admin::monitor::{self, MonitorOptions, Status};
use streambus::admin::scaler;
use streambus::{Connection, ErrorKind};
use streambus_testkit::{unique_prefix, wait::wait_for_some, RedisServer};

use common::group::{ack, cleanup_idle, consumers, setup, snapshot, touch, wait_idle};
use common::{connect, read_as};

/// `XINFO GROUPS` of `stream`, as Redis reports it.
async fn xinfo_groups(conn: &mut Connection, stream: &str) -> StreamInfoGroupsReply {
    redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
        .unwrap()
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
    let what = format!("statuses {expected:?}");
    let snap = wait_for_some(Duration::from_secs(10), &what, || {
        let mut conn = conn.clone();
        let (s, g, options) = (&s, &g, &options);
        async move {
            touch(&mut conn, s, g, "busy").await;
            touch(&mut conn, s, g, "ok").await;
            let snap = monitor::snapshot(&mut conn, s, options).await.unwrap();
            let got: Vec<(&str, Status)> = snap.groups[0]
                .consumers
                .iter()
                .map(|c| (c.name.as_str(), c.status))
                .collect();
            let done = got == expected;
            done.then_some(snap)
        }
    })
    .await;
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
    let report = cleanup_idle(&mut conn, &s, &g, threshold).await;
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

    let snap = snapshot(&mut conn, &s).await;
    let info = xinfo_groups(&mut conn, &s).await;
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
    let snap = snapshot(&mut conn, &s).await;
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
    let snap = snapshot(&mut conn, &s).await;
    let info = xinfo_groups(&mut conn, &s).await;
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
    let snap = snapshot(&mut conn, &s).await;
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
