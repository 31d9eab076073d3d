//! The worker with `concurrency: 1`: entries handled one at a time, in stream
//! order, from a read-ahead bounded by the handler's pace and the visibility
//! timeout; what was read and not handled stays pending.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use streambus::{Delivery, Outcome, WorkerOptions};
use streambus_testkit::unique_prefix;

use common::worker::{fast, start};
use common::{client, connect, eventually, pending_count, shared_server as server};

fn sequential() -> WorkerOptions {
    WorkerOptions {
        concurrency: 1,
        ..fast()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_one_at_a_time_in_stream_order_with_a_read_ahead() {
    let url = server().url();
    let mut c = connect(&url).await;
    let s = format!("{}order", unique_prefix("seq"));
    let n = 3000;
    let producer = common::producer(&url).await;
    producer
        .publish_batch(&s, common::numbered(0..n))
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (record, busy) = (seen.clone(), running.clone());
    let (task, stop) = start(&client(&url), &s, "w1", sequential(), move |d: Delivery| {
        let (record, busy) = (record.clone(), busy.clone());
        async move {
            assert_eq!(
                busy.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                0,
                "one at a time"
            );
            let n: usize = d.decode().unwrap();
            tokio::task::yield_now().await;
            record.lock().unwrap().push(n);
            busy.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            Outcome::Ack
        }
    });
    eventually(30, "all handled", || {
        let seen = seen.clone();
        async move { seen.lock().unwrap().len() == n }
    })
    .await;
    stop.cancel();
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.acked, n as u64);
    assert_eq!(report.panicked, 0);
    assert_eq!(
        *seen.lock().unwrap(),
        (0..n).collect::<Vec<_>>(),
        "stream order"
    );
    assert_eq!(pending_count(&mut c, &s, "g").await, 0);
    // Read ahead: far fewer reads than entries. Each XREADGROUP that got
    // entries is one call; the server counts them.
    let calls = xreadgroup_calls(&mut c).await;
    assert!(calls < (n / 10) as u64, "{calls} reads for {n} entries");
}

/// With a handler that takes 20 ms and a visibility timeout of 200 ms, the
/// worker holds at most about 100 ms / 20 ms = 5 entries (the one running
/// included): entries wait no longer than half the visibility timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_ahead_stays_within_half_the_visibility_timeout() {
    let url = server().url();
    let mut c = connect(&url).await;
    let s = format!("{}bound", unique_prefix("seq"));
    let producer = common::producer(&url).await;
    producer
        .publish_batch(&s, common::numbered(0..60))
        .await
        .unwrap();
    let peak = Arc::new(Mutex::new(0i64));
    let handled = Arc::new(Mutex::new(0usize));
    let (task, stop) = start(&client(&url), &s, "w1", sequential(), {
        let (url, s, peak, handled) = (url.clone(), s.clone(), peak.clone(), handled.clone());
        move |_d: Delivery| {
            let (url, s, peak, handled) = (url.clone(), s.clone(), peak.clone(), handled.clone());
            async move {
                let mut c = connect(&url).await;
                let held = pending_count(&mut c, &s, "g").await;
                let count = {
                    let mut h = handled.lock().unwrap();
                    *h += 1;
                    *h
                };
                // The first few reads come before the pace is known.
                if count > 3 {
                    let mut p = peak.lock().unwrap();
                    *p = (*p).max(held);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                Outcome::Ack
            }
        }
    });
    eventually(30, "all handled", || {
        let handled = handled.clone();
        async move { *handled.lock().unwrap() >= 60 }
    })
    .await;
    stop.cancel();
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.acked, 60);
    assert_eq!(
        report.reclaimed, 0,
        "nothing waited past the visibility timeout"
    );
    let peak = *peak.lock().unwrap();
    assert!(
        (2..=7).contains(&peak),
        "held at most ~5 (and read ahead at all): {peak}"
    );
    assert_eq!(pending_count(&mut c, &s, "g").await, 0);
}

/// `XREADGROUP` calls so far (from `INFO commandstats`), over all tests on
/// this server: an upper bound for one test's.
async fn xreadgroup_calls(c: &mut streambus::Connection) -> u64 {
    let info: String = streambus::redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_xreadgroup:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
