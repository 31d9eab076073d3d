//! `keep_unacked` retention on a real Redis 7: trimming toward `max_len` or
//! `max_age` never deletes an entry that a group has not acknowledged (its
//! pending entries, and those it has not read yet); once the group catches
//! up, the stream shrinks back. Without it, `MAXLEN ~` deletes them.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streambus::{Client, Delivery, Message, Outcome, Producer, ProducerOptions, Retention};
use streambus_testkit::unique_prefix;

use common::worker::{fast, start};
use common::{client, connect, eventually, numbered, pending_count, read_as, xlen};

fn keep_unacked(retention: Retention) -> ProducerOptions {
    ProducerOptions {
        retention,
        keep_unacked: true,
        ..Default::default()
    }
}

async fn producer(url: &str, options: ProducerOptions) -> Producer {
    Producer::new(&Client::open(url).unwrap(), options)
        .await
        .unwrap()
}

async fn create_group(conn: &mut streambus::Connection, stream: &str) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await
        .unwrap();
}

/// The case: `max_len = 1000`; a group stopped with 200 pending and
/// 5,000 unread entries; 10,000 more publishes. Nothing the group needs is
/// trimmed; restarted, it handles every entry; then the stream shrinks back
/// to about `max_len`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_group_loses_nothing_and_the_stream_shrinks_once_it_catches_up() {
    let redis = streambus_testkit::RedisServer::start();
    let url = redis.url();
    let mut c = connect(&url).await;
    let s = format!("{}:s", unique_prefix("keep"));
    create_group(&mut c, &s).await;
    let p = producer(&url, keep_unacked(Retention::max_len(1000))).await;
    p.publish_batch(&s, numbered(0..5200)).await.unwrap();
    // The group's consumer took 200 and stopped: 200 pending, 5,000 unread.
    let taken = read_as(&mut c, &s, "g", "w1", 200, ">").await;
    assert_eq!(taken.len(), 200);
    let runs = xtrim_calls(&url).await;
    p.publish_batch(&s, numbered(5200..15_200)).await.unwrap();
    // The trimmer ran meanwhile (every 100 entries) and deleted nothing.
    let url2 = url.clone();
    eventually(10, "a run of the trimmer", move || {
        let url = url2.clone();
        async move { xtrim_calls(&url).await > runs }
    })
    .await;
    assert_eq!(xlen(&mut c, &s).await, 15_200);

    // Restarted under the same name: its own pending entries first, then the
    // rest.
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let record = seen.clone();
    let (task, stop) = start(&client(&url), &s, "w1", fast(), move |d: Delivery| {
        let record = record.clone();
        async move {
            let n: u32 = d.decode().unwrap();
            record.lock().unwrap().insert(n);
            Outcome::Ack
        }
    });
    eventually(60, "every entry handled", || {
        let seen = seen.clone();
        async move { seen.lock().unwrap().len() == 15_200 }
    })
    .await;
    // The last acknowledgements go out just after their handlers returned.
    let (url2, s2) = (url.clone(), s.clone());
    eventually(10, "nothing pending", move || {
        let (url, s) = (url2.clone(), s2.clone());
        async move { pending_count(&mut connect(&url).await, &s, "g").await == 0 }
    })
    .await;
    // Shrinks back without further publishes (at most 10,000 deleted per
    // run, a run a second while over), to about max_len: whole nodes of 100.
    let url2 = url.clone();
    let s2 = s.clone();
    eventually(20, "the stream back to about max_len", move || {
        let (url, s) = (url2.clone(), s2.clone());
        async move {
            let n = xlen(&mut connect(&url).await, &s).await;
            (1000..=1100).contains(&n)
        }
    })
    .await;
    stop.cancel();
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.acked, 15_200);
    assert_eq!(report.gone, 0, "no pending entry was trimmed away");
}

/// The same stopped group under plain `MAXLEN ~ 1000`: its pending entries and
/// its unread ones are trimmed away (what `keep_unacked` prevents).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_max_len_trims_what_a_stopped_group_needs() {
    let url = common::shared_server().url();
    let mut c = connect(&url).await;
    let s = format!("{}:plain", unique_prefix("keep"));
    create_group(&mut c, &s).await;
    let p = producer(
        &url,
        ProducerOptions {
            retention: Retention::max_len(1000),
            ..Default::default()
        },
    )
    .await;
    p.publish_batch(&s, numbered(0..5200)).await.unwrap();
    assert_eq!(read_as(&mut c, &s, "g", "w1", 200, ">").await.len(), 200);
    p.publish_batch(&s, numbered(5200..15_200)).await.unwrap();
    let n = xlen(&mut c, &s).await;
    assert!(n < 1200, "{n}: trimmed past the group");
    // Its pending entries are still listed, with their data gone.
    assert_eq!(pending_count(&mut c, &s, "g").await, 200);
    let summary: (u64, String, String, redis::Value) = redis::cmd("XPENDING")
        .arg(&s)
        .arg("g")
        .query_async(&mut c)
        .await
        .unwrap();
    let oldest = summary.1;
    let still: Vec<redis::Value> = redis::cmd("XRANGE")
        .arg(&s)
        .arg(&oldest)
        .arg(&oldest)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(still.is_empty(), "pending entry {oldest} was trimmed");
}

/// A stream without groups trims as with `MAXLEN ~`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_groups_it_trims_to_about_max_len() {
    let url = common::shared_server().url();
    let s = format!("{}:nogroup", unique_prefix("keep"));
    let p = producer(&url, keep_unacked(Retention::max_len(1000))).await;
    p.publish_batch(&s, numbered(0..10_000)).await.unwrap();
    // Single publishes take the same path as batches.
    for n in 10_000..10_050 {
        p.publish(&s, Message::json(&n).unwrap()).await.unwrap();
    }
    let (url2, s2) = (url.clone(), s.clone());
    eventually(10, "about max_len", move || {
        let (url, s) = (url2.clone(), s2.clone());
        async move {
            let n = xlen(&mut connect(&url).await, &s).await;
            (1000..=1100).contains(&n)
        }
    })
    .await;
}

/// By age: entries older than `max_age` go, except those a group still
/// needs; once it has acknowledged them, they go too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_keeps_what_a_group_still_needs() {
    let redis = streambus_testkit::RedisServer::start();
    let url = redis.url();
    let mut c = connect(&url).await;
    let s = format!("{}:age", unique_prefix("keep"));
    create_group(&mut c, &s).await;
    // 300 entries from 1970 (older than any max age); the group holds the
    // first 10 pending.
    let mut pipe = redis::pipe();
    for ms in 1..=300 {
        pipe.cmd("XADD")
            .arg(&s)
            .arg(format!("{ms}-0"))
            .arg("old")
            .arg("1");
    }
    let _: Vec<String> = pipe.query_async(&mut c).await.unwrap();
    let held = read_as(&mut c, &s, "g", "w1", 10, ">").await;
    assert_eq!(held.len(), 10);
    let p = producer(
        &url,
        keep_unacked(Retention::MaxAge(Duration::from_secs(3600))),
    )
    .await;
    p.publish_batch(&s, numbered(0..1000)).await.unwrap();
    // The trimmer ran (after 1,000 entries): the script's XTRIM is counted
    // (this server runs nothing else).
    let url2 = url.clone();
    eventually(10, "a run of the trimmer", move || {
        let url = url2.clone();
        async move { xtrim_calls(&url).await > 0 }
    })
    .await;
    assert_eq!(first_id(&mut c, &s).await, "1-0");
    // Acknowledged, and the group moved past the old entries: they go.
    let _: u64 = redis::cmd("XACK")
        .arg(&s)
        .arg("g")
        .arg(&held)
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(&s)
        .arg("g")
        .arg("$")
        .query_async(&mut c)
        .await
        .unwrap();
    p.publish_batch(&s, numbered(0..1000)).await.unwrap();
    let (url2, s2) = (url.clone(), s.clone());
    eventually(10, "the old entries trimmed", move || {
        let (url, s) = (url2.clone(), s2.clone());
        async move { first_id(&mut connect(&url).await, &s).await != "1-0" }
    })
    .await;
}

async fn first_id(c: &mut streambus::Connection, s: &str) -> String {
    let v: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(s)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(c)
        .await
        .unwrap();
    v.into_iter().next().map(|e| e.0).unwrap_or_default()
}

/// XTRIM calls the server has run (the trimming script's included): on a
/// private server, the runs of the trimmer.
async fn xtrim_calls(url: &str) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut connect(url).await)
        .await
        .unwrap();
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_xtrim:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}
