//! The worker against a real redis-server: delivery, retries, dead letters,
//! panics, shutdown, reclaim, faults, ordering, idempotency.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streambus::admin::dead_letter;
use streambus::{Delivery, Message, Outcome, WorkerOptions};
use streambus_testkit::{unique_prefix, Appendfsync, RedisServer, ServerOptions};
use tokio::time::Instant;

use common::worker::{fast, start};
use common::{client, connect, eventually, pending_count, read_as, shared_server as server};

async fn publish_n(url: &str, stream: &str, n: usize) -> Vec<streambus::EntryId> {
    common::producer(url)
        .await
        .publish_batch(stream, common::numbered(0..n))
        .await
        .unwrap()
}

#[tokio::test]
async fn handles_and_acknowledges_everything() {
    let url = server().url();
    let mut c = connect(&url).await;
    let s = format!("{}all", unique_prefix("worker"));
    publish_n(&url, &s, 1000).await;
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    let (task, stop) = start(&client(&url), &s, "w1", fast(), move |d: Delivery| {
        let counter = counter.clone();
        async move {
            let _: i64 = d.decode().unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    eventually(20, "all handled", || async {
        seen.load(Ordering::SeqCst) >= 1000
    })
    .await;
    stop.cancel();
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.delivered, 1000);
    assert_eq!(report.acked, 1000);
    assert_eq!(pending_count(&mut c, &s, "g").await, 0);
}

#[tokio::test]
async fn a_poison_entry_is_dead_lettered_after_max_deliveries() {
    let url = server().url();
    let mut c = connect(&url).await;
    let s = format!("{}poison", unique_prefix("worker"));
    let ids = publish_n(&url, &s, 20).await;
    let poison = ids[7];
    let attempts = Arc::new(AtomicU32::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let (a, o) = (attempts.clone(), ok.clone());
    let options = WorkerOptions {
        max_deliveries: 3,
        ..fast()
    };
    let (task, stop) = start(&client(&url), &s, "w1", options, move |d: Delivery| {
        let (a, o) = (a.clone(), o.clone());
        async move {
            if d.entry.id == poison {
                a.fetch_add(1, Ordering::SeqCst);
                Outcome::retry("downstream says no")
            } else {
                o.fetch_add(1, Ordering::SeqCst);
                Outcome::Ack
            }
        }
    });
    eventually(20, "poison dead-lettered", || {
        let mut c = c.clone();
        let s = s.clone();
        async move { dead_letter::count(&mut c, &s).await.unwrap() == 1 }
    })
    .await;
    stop.cancel();
    let report = task.await.unwrap().unwrap();
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "exactly max_deliveries attempts"
    );
    assert_eq!(ok.load(Ordering::SeqCst), 19);
    assert_eq!(report.dead_lettered, 1);
    assert_eq!(pending_count(&mut c, &s, "g").await, 0);
    let letters = dead_letter::list(&mut c, &s, None, 10).await.unwrap();
    let dl = &letters[0];
    assert_eq!(dl.source_id, Some(poison));
    assert_eq!(dl.deliveries, Some(3));
    assert_eq!(dl.group.as_deref(), Some("g"));
    assert_eq!(dl.consumer.as_deref(), Some("w1"));
    assert!(
        dl.reason.as_deref().unwrap().contains("downstream says no"),
        "{dl:?}"
    );
    assert_eq!(dl.fields.get_str("data"), Some("7"));
    // Replay puts it back as a new entry and empties the dead-letter stream.
    let new_id = dead_letter::replay(&mut c, &s, dl.id)
        .await
        .unwrap()
        .unwrap();
    assert!(new_id > ids[19]);
    assert_eq!(dead_letter::count(&mut c, &s).await.unwrap(), 0);
    let back: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&s)
        .arg(new_id)
        .arg(new_id)
        .query_async(&mut c)
        .await
        .unwrap();
    let names: Vec<&str> = back[0].1.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        ["id", "timestamp", "data"],
        "metadata is stripped on replay"
    );
}

#[tokio::test]
async fn undecodable_entries_are_dead_lettered_at_once() {
    let url = server().url();
    let mut c = connect(&url).await;
    let s = format!("{}undecodable", unique_prefix("worker"));
    let _: String = redis::cmd("XADD")
        .arg(&s)
        .arg("*")
        .arg("id")
        .arg("x-1")
        .arg("data")
        .arg("{not json")
        .query_async(&mut c)
        .await
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let k = calls.clone();
    let (task, stop) = start(&client(&url), &s, "w1", fast(), move |d: Delivery| {
        k.fetch_add(1, Ordering::SeqCst);
        async move { d.decode::<serde_json::Value>().map(|_| ()) }
    });
    eventually(10, "dead-lettered", || {
        let mut c = c.clone();
        let s = s.clone();
        async move { dead_letter::count(&mut c, &s).await.unwrap() == 1 }
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "never retried");
    let dl = &dead_letter::list(&mut c, &s, None, 1).await.unwrap()[0];
    assert!(
        dl.reason.as_deref().unwrap().contains("not valid JSON"),
        "{dl:?}"
    );
}

#[tokio::test]
async fn a_panicking_handler_does_not_kill_the_worker() {
    let url = server().url();
    let mut c = connect(&url).await;
    let s = format!("{}panic", unique_prefix("worker"));
    let ids = publish_n(&url, &s, 10).await;
    let victim = ids[3];
    let done = Arc::new(AtomicU64::new(0));
    let d2 = done.clone();
    let (task, stop) = start(&client(&url), &s, "w1", fast(), move |d: Delivery| {
        let done = d2.clone();
        async move {
            if d.entry.id == victim && d.deliveries == 1 {
                panic!("boom on first try");
            }
            done.fetch_add(1, Ordering::SeqCst);
        }
    });
    eventually(10, "all handled", || async {
        done.load(Ordering::SeqCst) == 10
    })
    .await;
    stop.cancel();
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.panicked, 1);
    assert_eq!(report.acked, 10);
    assert_eq!(pending_count(&mut c, &s, "g").await, 0);
}

#[tokio::test]
async fn shutdown_lets_in_flight_handlers_finish_and_acks_them() {
    let url = server().url();
    let mut c = connect(&url).await;
    let s = format!("{}shutdown", unique_prefix("worker"));
    publish_n(&url, &s, 50).await;
    let started = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let (st, fi) = (started.clone(), finished.clone());
    let options = WorkerOptions {
        concurrency: 4,
        ..fast()
    };
    let (task, stop) = start(&client(&url), &s, "w1", options, move |_d: Delivery| {
        let (st, fi) = (st.clone(), fi.clone());
        async move {
            st.fetch_add(1, Ordering::SeqCst);
            // The work itself, long enough to be in flight when shutdown comes.
            tokio::time::sleep(Duration::from_millis(80)).await;
            fi.fetch_add(1, Ordering::SeqCst);
        }
    });
    eventually(10, "handlers running", || async {
        started.load(Ordering::SeqCst) >= 4
    })
    .await;
    stop.cancel();
    let report = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops within the grace period")
        .unwrap()
        .unwrap();
    let n = finished.load(Ordering::SeqCst);
    assert_eq!(
        started.load(Ordering::SeqCst),
        n,
        "every started handler finished"
    );
    assert_eq!(report.acked, n);
    assert_eq!(report.unfinished, 0);
    assert_eq!(
        pending_count(&mut c, &s, "g").await,
        0,
        "nothing left pending"
    );
    let groups = streambus::admin::group::list_groups(&mut c, &s)
        .await
        .unwrap();
    assert_eq!(
        groups[0].lag,
        Some(50 - n),
        "the rest is still waiting, not lost"
    );
}

/// With a backlog the worker has a second read under way while it takes the
/// first (read-ahead, on two connections). Stopping it mid-backlog must leave
/// no entry delivered to it and not handled: whatever the reads in flight
/// brought is handled and acknowledged before `run` returns.
#[tokio::test]
async fn shutdown_in_a_backlog_leaves_nothing_pending() {
    let url = server().url();
    let mut c = connect(&url).await;
    let s = format!("{}backlog", unique_prefix("worker"));
    let total = 20_000;
    publish_n(&url, &s, total).await;
    let handled = Arc::new(AtomicU64::new(0));
    let h = handled.clone();
    // Default settings: concurrency 256, reads of 128, so reads go ahead.
    let (task, stop) = start(
        &client(&url),
        &s,
        "w1",
        WorkerOptions::default(),
        move |_d: Delivery| {
            h.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Outcome::Ack)
        },
    );
    eventually(20, "a fifth handled", || async {
        handled.load(Ordering::SeqCst) >= total as u64 / 5
    })
    .await;
    stop.cancel();
    let report = task.await.unwrap().unwrap();
    let n = handled.load(Ordering::SeqCst);
    assert!(n < total as u64, "stopped mid-backlog ({n} of {total})");
    assert_eq!(report.delivered, n, "every delivered entry was handled");
    assert_eq!(report.acked, n);
    assert_eq!(pending_count(&mut c, &s, "g").await, 0, "nothing stranded");
    let groups = streambus::admin::group::list_groups(&mut c, &s)
        .await
        .unwrap();
    assert_eq!(
        groups[0].lag,
        Some(total as u64 - n),
        "the rest still waits"
    );
}

#[tokio::test]
async fn entries_of_a_dead_consumer_are_reclaimed() {
    let url = server().url();
    let mut c = connect(&url).await;
    let s = format!("{}reclaim", unique_prefix("worker"));
    publish_n(&url, &s, 30).await;
    streambus::admin::group::create_group(&mut c, &s, "g", streambus::StartId::Beginning)
        .await
        .unwrap();
    // A consumer takes 30 entries and dies.
    read_as(&mut c, &s, "g", "dead", 30, ">").await;
    let seen = Arc::new(Mutex::new(HashMap::<streambus::EntryId, u32>::new()));
    let s2 = seen.clone();
    let (task, stop) = start(&client(&url), &s, "alive", fast(), move |d: Delivery| {
        s2.lock().unwrap().insert(d.entry.id, d.deliveries);
        async {}
    });
    eventually(10, "all reclaimed", || async {
        seen.lock().unwrap().len() == 30
    })
    .await;
    stop.cancel();
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.reclaimed, 30);
    assert!(
        seen.lock().unwrap().values().all(|&d| d == 2),
        "second delivery each"
    );
    assert_eq!(pending_count(&mut c, &s, "g").await, 0);
}

#[tokio::test]
async fn a_restarted_worker_takes_back_its_own_entries_at_once() {
    let url = server().url();
    let mut c = connect(&url).await;
    let s = format!("{}restart", unique_prefix("worker"));
    publish_n(&url, &s, 5).await;
    streambus::admin::group::create_group(&mut c, &s, "g", streambus::StartId::Beginning)
        .await
        .unwrap();
    read_as(&mut c, &s, "g", "w1", 5, ">").await;
    let done = Arc::new(AtomicU64::new(0));
    let d2 = done.clone();
    // A visibility timeout far beyond the test: only "same name" explains a quick pick-up.
    let options = WorkerOptions {
        visibility_timeout: Duration::from_secs(3600),
        ..fast()
    };
    let (task, stop) = start(&client(&url), &s, "w1", options, move |_d: Delivery| {
        d2.fetch_add(1, Ordering::SeqCst);
        async {}
    });
    eventually(10, "own entries resumed", || async {
        done.load(Ordering::SeqCst) == 5
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(pending_count(&mut c, &s, "g").await, 0);
}

#[tokio::test]
async fn a_deleted_group_is_recreated() {
    let url = server().url();
    let mut c = connect(&url).await;
    let s = format!("{}regroup", unique_prefix("worker"));
    publish_n(&url, &s, 3).await;
    let done = Arc::new(AtomicU64::new(0));
    let d2 = done.clone();
    let (task, stop) = start(&client(&url), &s, "w1", fast(), move |_d: Delivery| {
        d2.fetch_add(1, Ordering::SeqCst);
        async {}
    });
    eventually(10, "first entries", || async {
        done.load(Ordering::SeqCst) == 3
    })
    .await;
    assert!(streambus::admin::group::destroy_group(&mut c, &s, "g")
        .await
        .unwrap());
    publish_n(&url, &s, 2).await;
    // Recreated from the beginning: the 3 old ones come again (at-least-once), plus 2 new.
    eventually(10, "after recreation", || async {
        done.load(Ordering::SeqCst) >= 8
    })
    .await;
    stop.cancel();
    let report = task.await.unwrap().unwrap();
    assert!(report.groups_recreated >= 1);
    assert_eq!(pending_count(&mut c, &s, "g").await, 0);
}

#[tokio::test]
async fn losing_redis_for_a_while_loses_nothing() {
    let mut redis = RedisServer::start_with(ServerOptions {
        appendonly: true,
        appendfsync: Appendfsync::Always,
        ..Default::default()
    });
    let url = redis.url();
    let s = "outage";
    publish_n(&url, s, 200).await;
    let seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let s2 = seen.clone();
    let (task, stop) = start(&client(&url), s, "w1", fast(), move |d: Delivery| {
        let seen = s2.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            seen.lock().unwrap().insert(d.entry.id);
        }
    });
    eventually(10, "some handled", || async {
        seen.lock().unwrap().len() >= 20
    })
    .await;
    redis.kill();
    // Stay down long enough for reads, acks and reclaims to fail a few times.
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.restart();
    let mut c = connect(&url).await;
    publish_n(&url, s, 100).await;
    eventually(30, "all 300 handled", || async {
        seen.lock().unwrap().len() == 300
    })
    .await;
    eventually(10, "nothing pending", || {
        let mut c = c.clone();
        async move { pending_count(&mut c, s, "g").await == 0 }
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let _ = &mut c;
}

#[tokio::test]
async fn entries_with_the_same_key_are_handled_in_order() {
    let url = server().url();
    let s = format!("{}ordered", unique_prefix("worker"));
    let producer = common::producer(&url).await;
    let msgs = (0..200).map(|i| {
        Message::json(&i)
            .unwrap()
            .with_key(format!("host-{}", i % 5))
    });
    producer.publish_batch(&s, msgs).await.unwrap();
    let order = Arc::new(Mutex::new(HashMap::<String, Vec<i64>>::new()));
    let running = Arc::new(Mutex::new(std::collections::HashSet::<String>::new()));
    let (o2, r2) = (order.clone(), running.clone());
    let options = WorkerOptions {
        concurrency: 16,
        ordered_by_key: true,
        ..fast()
    };
    let (task, stop) = start(&client(&url), &s, "w1", options, move |d: Delivery| {
        let (order, running) = (o2.clone(), r2.clone());
        async move {
            let key = d.entry.fields.get_str("key").unwrap().to_owned();
            assert!(
                running.lock().unwrap().insert(key.clone()),
                "two at once for {key}"
            );
            let n: i64 = d.decode().unwrap();
            tokio::time::sleep(Duration::from_micros((n as u64 * 7919) % 500)).await;
            order
                .lock()
                .unwrap()
                .entry(key.clone())
                .or_default()
                .push(n);
            running.lock().unwrap().remove(&key);
        }
    });
    eventually(20, "all handled", || async {
        order.lock().unwrap().values().map(Vec::len).sum::<usize>() == 200
    })
    .await;
    stop.cancel();
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.panicked, 0);
    for (key, seq) in order.lock().unwrap().iter() {
        assert!(seq.windows(2).all(|w| w[0] < w[1]), "{key}: {seq:?}");
    }
}

#[tokio::test]
async fn the_idempotency_guard_skips_duplicates() {
    let url = server().url();
    let mut c = connect(&url).await;
    let s = format!("{}idem", unique_prefix("worker"));
    let p = common::producer(&url).await;
    let m = Message::json(&"once").unwrap();
    // The same envelope written twice (a publish retried after a lost reply).
    p.publish(&s, m.clone()).await.unwrap();
    p.publish(&s, m).await.unwrap();
    p.publish(&s, Message::json(&"other").unwrap())
        .await
        .unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let k = calls.clone();
    let options = WorkerOptions {
        idempotency_ttl: Some(Duration::from_secs(60)),
        concurrency: 1,
        ..fast()
    };
    let (task, stop) = start(&client(&url), &s, "w1", options, move |_d: Delivery| {
        k.fetch_add(1, Ordering::SeqCst);
        async {}
    });
    eventually(10, "all settled", || common::settled(&c, &s)).await;
    stop.cancel();
    let report = task.await.unwrap().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(report.duplicates_skipped, 1);
    assert_eq!(pending_count(&mut c, &s, "g").await, 0);
}
