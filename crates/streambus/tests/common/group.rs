//! A group's state built by hand with raw commands, as the monitor's tests
//! need it (who read what, who acked, who is idle), and read back with
//! `XPENDING` and `XINFO CONSUMERS`.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::streams::{StreamInfoConsumersReply, StreamPendingCountReply};
use streambus::admin::monitor::{
    self, CleanupOptions, CleanupReport, MonitorOptions, StreamSnapshot,
};
use streambus::Connection;
use streambus_testkit::unique_prefix;

use super::read_as;

/// A stream with `n` entries and a group reading it from the start.
pub async fn setup(conn: &mut Connection, label: &str, n: usize) -> (String, String) {
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
pub async fn touch(conn: &mut Connection, stream: &str, group: &str, consumer: &str) {
    read_as(conn, stream, group, consumer, 1, "0").await;
}

/// `XACK` of `ids` (none: no command); how many were acknowledged.
pub async fn ack(conn: &mut Connection, stream: &str, group: &str, ids: &[String]) -> usize {
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
pub async fn pel(
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
pub async fn consumers(
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

/// Whether consumer `c` (pending, idle ms) has been idle longer than `threshold`.
pub fn idle_past(c: &(usize, usize), threshold: Duration) -> bool {
    c.1 as u128 > threshold.as_millis()
}

/// Polls (10 s at most) until every consumer in `names` has been idle longer
/// than `threshold`.
pub async fn wait_idle(
    conn: &mut Connection,
    stream: &str,
    group: &str,
    names: &[&str],
    threshold: Duration,
) {
    let what = format!("consumers {names:?} idle longer than {threshold:?}");
    super::eventually(10, &what, || {
        let mut conn = conn.clone();
        async move {
            let cs = consumers(&mut conn, stream, group).await;
            names
                .iter()
                .all(|n| cs.get(*n).is_some_and(|c| idle_past(c, threshold)))
        }
    })
    .await
}

/// The monitor's snapshot of `stream` with the default options.
pub async fn snapshot(conn: &mut Connection, stream: &str) -> StreamSnapshot {
    monitor::snapshot(conn, stream, &MonitorOptions::default())
        .await
        .unwrap()
}

/// The monitor's cleanup of the group, with the default options but for
/// `idle_threshold`.
pub async fn cleanup_idle(
    conn: &mut Connection,
    stream: &str,
    group: &str,
    idle_threshold: Duration,
) -> CleanupReport {
    let options = CleanupOptions {
        idle_threshold,
        ..CleanupOptions::default()
    };
    monitor::cleanup(conn, stream, group, &options)
        .await
        .unwrap()
}
