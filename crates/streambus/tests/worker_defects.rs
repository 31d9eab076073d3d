//! The worker's defects of issue 14, each as the probe that found it, against
//! a real redis-server (and, for the dead-letter move, a real Redis Cluster):
//! synchronous handler panics, the idempotency guard at concurrency above 1
//! and across workers, dead-letter moves that wait, and a dropped `run`.

mod common;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streambus::admin::dead_letter;
use streambus::{
    keys, Backoff, CancellationToken, Client, Delivery, Message, Outcome, Producer,
    ProducerOptions, Worker, WorkerOptions,
};
use streambus_testkit::{unique_prefix, RedisCluster};

use common::worker::start;
use common::{
    client, connect, eventually, pending_count, read_as, settled, shared_server as server,
};

/// The common fast settings, at concurrency 16 (the defects show above 1)
/// and with a visibility timeout of 500 ms.
fn fast() -> WorkerOptions {
    WorkerOptions {
        concurrency: 16,
        visibility_timeout: Duration::from_millis(500),
        ..common::worker::fast()
    }
}

/// The idempotency guard on, and a visibility timeout long enough that no
/// entry is reclaimed while its copy runs.
fn guarded() -> WorkerOptions {
    WorkerOptions {
        idempotency_ttl: Some(Duration::from_secs(60)),
        visibility_timeout: Duration::from_secs(5),
        ..fast()
    }
}

/// The probe of defect 1: 400 entries, 1 in 40 panics *before* its handler
/// returns a future (a closure body), on its first delivery only.
async fn synchronous_panics(ordered_by_key: bool) {
    let url = server().url();
    let mut c = connect(&url).await;
    let s = format!("{}syncpanic{ordered_by_key}", unique_prefix("defects"));
    let msgs = (0..400u64).map(|i| {
        Message::json(&i)
            .unwrap()
            .with_key(format!("host-{}", i % 8))
    });
    common::producer(&url)
        .await
        .publish_batch(&s, msgs)
        .await
        .unwrap();
    let handled = Arc::new(Mutex::new(HashSet::<u64>::new()));
    let h = handled.clone();
    let options = WorkerOptions {
        ordered_by_key,
        ..fast()
    };
    let (task, stop) = start(&client(&url), &s, "w1", options, move |d: Delivery| {
        let v: u64 = d.decode().unwrap();
        if v % 40 == 7 && d.deliveries == 1 {
            panic!("synchronous panic on {v}");
        }
        let h = h.clone();
        async move {
            h.lock().unwrap().insert(v);
        }
    });
    eventually(30, "all 400 handled", || async {
        handled.lock().unwrap().len() == 400
    })
    .await;
    eventually(10, "nothing pending", || settled(&c, &s)).await;
    stop.cancel();
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.panicked, 10);
    assert_eq!(report.acked, 400);
    assert_eq!(pending_count(&mut c, &s, "g").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_panic_with_ordered_keys_stalls_nothing() {
    synchronous_panics(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_panic_in_a_batch_stalls_nothing() {
    synchronous_panics(false).await;
}

/// A handler that counts runs by envelope id and takes long enough for two
/// copies to overlap.
fn counting(
    runs: &Arc<Mutex<HashMap<String, u32>>>,
) -> impl Fn(Delivery) -> std::pin::Pin<Box<dyn Future<Output = Outcome> + Send>> + Send + Sync {
    let runs = runs.clone();
    move |d: Delivery| {
        let runs = runs.clone();
        Box::pin(async move {
            let id = d.envelope().unwrap().unwrap().id;
            tokio::time::sleep(Duration::from_millis(20)).await;
            *runs.lock().unwrap().entry(id).or_default() += 1;
            Outcome::Ack
        })
    }
}

fn assert_each_once(runs: &Mutex<HashMap<String, u32>>, n: usize) {
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), n, "every envelope handled");
    let twice: Vec<_> = runs.iter().filter(|(_, &k)| k != 1).collect();
    assert!(
        twice.is_empty(),
        "{} of {n} envelopes handled more than once: {:?}",
        twice.len(),
        twice.iter().take(5).collect::<Vec<_>>()
    );
}

/// The probe of defect 2: 300 envelope ids, each published twice side by side
/// (a retried publish looks exactly like this), at concurrency 16.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotency_guard_holds_at_concurrency_16() {
    let url = server().url();
    let mut c = connect(&url).await;
    let s = format!("{}idem16", unique_prefix("defects"));
    let msgs: Vec<Message> = (0..300)
        .flat_map(|i| {
            let m = Message::json(&i).unwrap();
            [m.clone(), m]
        })
        .collect();
    common::producer(&url)
        .await
        .publish_batch(&s, msgs)
        .await
        .unwrap();
    let runs = Arc::new(Mutex::new(HashMap::new()));
    let (task, stop) = start(&client(&url), &s, "w1", guarded(), counting(&runs));
    eventually(30, "all settled", || settled(&c, &s)).await;
    stop.cancel();
    let report = task.await.unwrap().unwrap();
    assert_each_once(&runs, 300);
    assert_eq!(report.duplicates_skipped, 300);
    assert_eq!(pending_count(&mut c, &s, "g").await, 0);
}

/// Defect 2 across processes: the first copy of every envelope is pending for
/// consumer `a`, the second for `b`; two workers under those names take their
/// own entries back at once, side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotency_guard_holds_across_two_workers() {
    let url = server().url();
    let mut c = connect(&url).await;
    let s = format!("{}idem2", unique_prefix("defects"));
    let producer = common::producer(&url).await;
    let msgs: Vec<Message> = common::numbered(0..300).collect();
    streambus::admin::group::create_group(&mut c, &s, "g", streambus::StartId::Beginning)
        .await
        .unwrap_or_default();
    producer.publish_batch(&s, msgs.clone()).await.unwrap();
    assert_eq!(read_as(&mut c, &s, "g", "a", 300, ">").await.len(), 300);
    producer.publish_batch(&s, msgs).await.unwrap();
    assert_eq!(read_as(&mut c, &s, "g", "b", 300, ">").await.len(), 300);
    let runs = Arc::new(Mutex::new(HashMap::new()));
    let client = client(&url);
    let (ta, sa) = start(&client, &s, "a", guarded(), counting(&runs));
    let (tb, sb) = start(&client, &s, "b", guarded(), counting(&runs));
    eventually(30, "all settled", || settled(&c, &s)).await;
    sa.cancel();
    sb.cancel();
    let mut report = ta.await.unwrap().unwrap();
    report.add(&tb.await.unwrap().unwrap());
    assert_each_once(&runs, 300);
    assert_eq!(report.duplicates_skipped, 300);
    assert_eq!(pending_count(&mut c, &s, "g").await, 0);
}

/// Defect 3: a dead-letter move that cannot be done yet must not stop the
/// reading. On a cluster whose slot is being migrated, the move (a script on
/// the stream and its dead-letter stream, which does not exist yet) gets
/// TRYAGAIN, a retryable error, while reads and acks of the existing stream
/// are served as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_dead_letter_move_does_not_stop_reading() {
    let cluster = RedisCluster::start(3, 0);
    let client = Client::open(&cluster.url()).unwrap();
    let mut c = client.connect().await.unwrap();
    let s = "dlmove";
    let slot = keys::slot(s);
    assert_eq!(keys::slot(&keys::dead_letter(s)), slot);
    let producer = Producer::new(&client, ProducerOptions::default())
        .await
        .unwrap();
    producer
        .publish(s, Message::json(&"poison").unwrap())
        .await
        .unwrap();
    streambus::admin::group::create_group(&mut c, s, "g", streambus::StartId::Beginning)
        .await
        .unwrap();
    // A consumer takes it and dies: with max_deliveries 1 it is due for the
    // dead-letter stream once idle for the visibility timeout.
    assert_eq!(read_as(&mut c, s, "g", "dead", 1, ">").await.len(), 1);
    let owner = cluster.master_for_slot(slot);
    let target = cluster
        .nodes()
        .into_iter()
        .find(|n| n.port != owner && !n.slots.is_empty())
        .unwrap();
    let slot_arg = slot.to_string();
    cluster.cli(
        owner,
        &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &target.id],
    );

    let handled = Arc::new(AtomicU64::new(0));
    let h = handled.clone();
    let options = WorkerOptions {
        concurrency: 8,
        max_deliveries: 1,
        visibility_timeout: Duration::from_millis(20),
        // 20 attempts of at least 500 ms: a move retried inline would hold
        // the read loop for more than 10 s.
        reconnect_backoff: Backoff::new(Duration::from_millis(500), Duration::from_millis(500)),
        ..fast()
    };
    let (task, stop) = start(&client, s, "alive", options, move |_d: Delivery| {
        h.fetch_add(1, Ordering::SeqCst);
        async {}
    });
    // Wait until the move has been tried (the poison is due at once).
    eventually(10, "a move attempt refused", || async {
        let stats = cluster.cli(owner, &["INFO", "commandstats"]);
        stats
            .lines()
            .find(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .is_some_and(|l| !l.contains("rejected_calls=0"))
    })
    .await;
    producer
        .publish_batch(s, common::numbered(0..20))
        .await
        .unwrap();
    eventually(5, "new entries handled while the move waits", || async {
        handled.load(Ordering::SeqCst) == 20
    })
    .await;
    // Only the poison is left pending: its move still waits (the dead-letter
    // stream cannot be looked at meanwhile: the migrating slot answers ASK).
    eventually(5, "new entries acknowledged", || {
        let mut c = c.clone();
        async move { pending_count(&mut c, s, "g").await == 1 }
    })
    .await;
    // The migration is called off: the move goes through.
    cluster.cli(owner, &["CLUSTER", "SETSLOT", &slot_arg, "STABLE"]);
    eventually(30, "dead-lettered", || {
        let mut c = c.clone();
        async move { dead_letter::count(&mut c, s).await.unwrap_or(0) == 1 }
    })
    .await;
    stop.cancel();
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.dead_lettered, 1);
    assert_eq!(report.acked, 20);
    assert_eq!(pending_count(&mut c, s, "g").await, 0);
}

/// Defect 5: dropping the future of `run` (instead of cancelling its token)
/// stops everything it started: no handler runs or finishes afterwards, and
/// nothing is acknowledged any more.
#[tokio::test]
async fn dropping_the_run_future_stops_its_tasks() {
    let url = server().url();
    let mut c = connect(&url).await;
    let s = format!("{}dropped", unique_prefix("defects"));
    let producer = common::producer(&url).await;
    producer
        .publish_batch(&s, common::numbered(0..4))
        .await
        .unwrap();
    let started = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    // Counts handler futures dropped unfinished: only an aborted task drops one.
    let dropped = Arc::new(AtomicU64::new(0));
    struct OnDrop(Arc<AtomicU64>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let (st, fi, dr) = (started.clone(), finished.clone(), dropped.clone());
    let options = WorkerOptions {
        concurrency: 4,
        ..fast()
    };
    let worker = Worker::new(
        &client(&url),
        &s,
        "g",
        WorkerOptions {
            consumer_name: Some("w1".into()),
            ..options
        },
    );
    let run = worker.run(
        move |_d: Delivery| {
            let (st, fi, dr) = (st.clone(), fi.clone(), dr.clone());
            async move {
                st.fetch_add(1, Ordering::SeqCst);
                let guard = OnDrop(dr);
                // Runs until its task is aborted.
                std::future::pending::<()>().await;
                std::mem::forget(guard);
                fi.fetch_add(1, Ordering::SeqCst);
            }
        },
        CancellationToken::new(),
    );
    tokio::select! {
        r = run => panic!("run ended by itself: {r:?}"),
        _ = eventually(10, "4 handlers running", || async {
            started.load(Ordering::SeqCst) == 4
        }) => {}
    }
    // `run` is dropped here, with 4 handlers under way: their tasks are aborted.
    eventually(10, "the 4 handlers aborted", || async {
        dropped.load(Ordering::SeqCst) == 4
    })
    .await;
    producer
        .publish_batch(&s, common::numbered(4..8))
        .await
        .unwrap();
    // A second worker of the group takes the new entries; a read loop of the
    // dropped run, had it survived, would have taken some of them.
    let second = Arc::new(AtomicU64::new(0));
    let seen = second.clone();
    let (task, stop) = start(&client(&url), &s, "w2", fast(), move |_d: Delivery| {
        let seen = seen.clone();
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    eventually(
        10,
        "the second worker handled the 4 new entries",
        || async { second.load(Ordering::SeqCst) >= 4 },
    )
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(started.load(Ordering::SeqCst), 4, "no handler started");
    assert_eq!(finished.load(Ordering::SeqCst), 0, "no handler finished");
    assert_eq!(
        second.load(Ordering::SeqCst),
        4,
        "w2 took all 4 new entries"
    );
    assert_eq!(
        pending_count(&mut c, &s, "g").await,
        4,
        "nothing acknowledged: the 4 stay pending for a later run"
    );
}
