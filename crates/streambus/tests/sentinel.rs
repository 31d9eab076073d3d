//! Redis Sentinel, against real processes: a primary, a replica and three
//! sentinels started by the testkit ([`RedisSentinel`]) on free ports.
//!
//! The failover tests run a worker and a steady publisher (200 publishes a
//! second) on one `redis+sentinel://` client through a planned failover
//! (`SENTINEL FAILOVER`) and an unplanned one (`SIGKILL` of the primary), and
//! check what streambus promises without `WAIT`:
//!
//! - every publish that returned success is handled, except those
//!   acknowledged inside the failover window: from a replication allowance
//!   before the fault ([`REPLICATION_ALLOWANCE`]: replication is
//!   asynchronous, a SIGKILL loses what the replica had not received) to
//!   shortly after the sentinels named the new primary ([`SWITCH_ALLOWANCE`]).
//!   A planned failover leaves the old primary taking writes for about ten
//!   seconds; a client that did not listen for `+switch-master` would lose
//!   them all, and fail this test;
//! - work resumes on the new primary, and nothing stays pending there.
//!
//! Each prints its figures (`cargo test -p streambus --test sentinel --
//! --nocapture`): the longest pause in publishing and in handling around the
//! fault and when each resumed (counting only what the new primary keeps),
//! and how many acknowledged publishes were lost. The client runs
//! with 500 ms timeouts, or with the defaults under
//! `STREAMBUS_FAULTS_DEFAULTS=1` (as the other fault tests).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streambus::{
    CancellationToken, Client, ConnectOptions, EntryId, ErrorKind, Message, Producer,
    ProducerOptions,
};
use streambus_testkit::{unique_prefix, RedisSentinel};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use common::fault_run::{recording_worker, Handled};
use common::proxied::short;
use common::steady::{publish_steadily, Acked};

/// Acknowledged writes up to this long before a SIGKILL may not have reached
/// the replica (locally it takes well under a millisecond).
const REPLICATION_ALLOWANCE: Duration = Duration::from_secs(1);
/// From the moment the sentinels name the new primary until every socket of
/// the client has left the old one: the `+switch-master` message, and the
/// request under way on the old primary.
const SWITCH_ALLOWANCE: Duration = Duration::from_secs(1);
/// How long a failover (and the end of a run) may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_url_finds_the_primary() {
    let set = RedisSentinel::start();
    let client = Client::open(&set.url()).unwrap();
    assert!(client.is_sentinel());
    let mut conn = client.connect().await.unwrap();
    let port: String = redis::cmd("CONFIG")
        .arg("GET")
        .arg("port")
        .query_async::<Vec<String>>(&mut conn)
        .await
        .unwrap()
        .remove(1);
    assert_eq!(port, set.primary().port().to_string());
    let stream = format!("{}s", unique_prefix("sentinel"));
    let producer = Producer::new(&client, ProducerOptions::default())
        .await
        .unwrap();
    producer
        .publish(&stream, Message::json(&1).unwrap())
        .await
        .unwrap();
    assert_eq!(common::xlen(&mut conn, &stream).await, 1);

    // A dead sentinel listed first is skipped.
    let dead = streambus_testkit::free_port();
    let url = set.url().replace(
        "redis+sentinel://",
        &format!("redis+sentinel://127.0.0.1:{dead},"),
    );
    let mut conn = Client::open(&url).unwrap().connect().await.unwrap();
    assert_eq!(common::xlen(&mut conn, &stream).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_master_name_or_no_sentinel_is_an_error() {
    let set = RedisSentinel::start();
    let url = set.url().replace("/mymaster", "/nosuchmaster");
    let e = Client::open(&url).unwrap().connect().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("nosuchmaster"), "{e}");

    let dead = streambus_testkit::free_port();
    let options = ConnectOptions {
        connect_timeout: Duration::from_millis(300),
        ..short()
    };
    let url = format!("redis+sentinel://127.0.0.1:{dead}/mymaster");
    let started = Instant::now();
    let e = Client::open_with(&url, options)
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    assert!(e.is_retryable());
    // Asked again with backoff for the connect timeout, not for ever.
    assert!(started.elapsed() < Duration::from_secs(5), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_and_producer_follow_a_planned_failover() {
    let set = RedisSentinel::start();
    let run = FailoverRun::start(&set, "planned").await;
    run.handled_at_least(300).await;
    let fault = Instant::now();
    let old = set.failover();
    let new = tokio::task::block_in_place(|| set.wait_for_failover(old, DEADLINE)).unwrap();
    let switched = Instant::now();
    run.finish(fault, switched, "SENTINEL FAILOVER", Duration::ZERO)
        .await;
    assert_ne!(old, new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_and_producer_follow_an_unplanned_failover() {
    let mut set = RedisSentinel::start();
    let run = FailoverRun::start(&set, "unplanned").await;
    run.handled_at_least(300).await;
    // Found before the fault: asking the sentinels takes a few milliseconds.
    let old = set.primary().port();
    let fault = Instant::now();
    set.server_mut(old).kill();
    let new = tokio::task::block_in_place(|| set.wait_for_failover(old, DEADLINE)).unwrap();
    let switched = Instant::now();
    run.finish(
        fault,
        switched,
        "SIGKILL of the primary",
        REPLICATION_ALLOWANCE,
    )
    .await;
    assert_ne!(old, new);
}

/// A worker and a steady publisher on one `redis+sentinel://` client.
struct FailoverRun {
    client: Client,
    stream: String,
    handled: Handled,
    acked: Arc<Mutex<Vec<Acked>>>,
    stop_publishing: CancellationToken,
    publisher: JoinHandle<()>,
    worker: common::worker::Running,
}

impl FailoverRun {
    async fn start(set: &RedisSentinel, label: &str) -> FailoverRun {
        let client = Client::open_with(&set.url(), common::proxied::fast()).unwrap();
        let stream = format!("{}s", unique_prefix(label));
        let (handled, worker) = recording_worker(&client, &stream, worker_options());
        common::wait_for_group(&client.connect().await.unwrap(), &stream).await;
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop_publishing = CancellationToken::new();
        let publisher = tokio::spawn(publish_steadily(
            client.clone(),
            stream.clone(),
            acked.clone(),
            stop_publishing.clone(),
        ));
        FailoverRun {
            client,
            stream,
            handled,
            acked,
            stop_publishing,
            publisher,
            worker,
        }
    }

    async fn handled_at_least(&self, n: usize) {
        common::eventually(10, "entries handled before the fault", || async {
            self.handled.lock().unwrap().len() >= n
        })
        .await
    }

    /// Publishes on for a while after the failover, then checks the promise
    /// (see the file's doc) and prints the figures.
    async fn finish(self, fault: Instant, switched: Instant, what: &str, allowance: Duration) {
        let window = (fault - allowance, switched + SWITCH_ALLOWANCE);
        let in_window = |a: &Acked| a.at >= window.0 && a.at <= window.1;
        // A good stretch of work on the new primary: 1 s of publishes after
        // the window.
        common::eventually(20, "publishes acknowledged after the window", || async {
            let acked = self.acked.lock().unwrap();
            acked.iter().filter(|a| a.at > window.1).count() >= 200
        })
        .await;
        self.stop_publishing.cancel();
        self.publisher.await.unwrap();
        let acked = self.acked.lock().unwrap().clone();
        // Everything outside the window, and everything the new primary has,
        // must be handled; and nothing may stay pending.
        let mut conn = self.client.connect().await.unwrap();
        let mut unhandled = Vec::new();
        let settled = tokio::time::timeout(DEADLINE, async {
            loop {
                let pending = pending(&mut conn, &self.stream).await;
                if let Ok(kept) = stream_ids(&mut conn, &self.stream).await {
                    let handled = self.handled.lock().unwrap();
                    let seen: HashSet<&str> = handled.iter().map(|(_, id)| id.as_str()).collect();
                    unhandled = acked
                        .iter()
                        .filter(|a| !in_window(a) || kept.contains(&a.entry))
                        .filter(|a| !seen.contains(a.envelope.as_str()))
                        .cloned()
                        .collect();
                    if unhandled.is_empty() && pending == Some(0) {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            settled.is_ok(),
            "{what}: {} acknowledged publishes (outside the failover window, or in the \
             stream) never handled, pending {:?}; first: {:?}",
            unhandled.len(),
            pending(&mut conn, &self.stream).await,
            unhandled.first()
        );
        let (stop_worker, worker) = (self.worker.1, self.worker.0);
        stop_worker.cancel();
        let report = tokio::time::timeout(DEADLINE, worker)
            .await
            .expect("the worker stops")
            .unwrap()
            .unwrap();

        // The promise, and the figures.
        let survivors = stream_ids(&mut conn, &self.stream).await.unwrap();
        let handled = self.handled.lock().unwrap().clone();
        let seen: HashSet<&str> = handled.iter().map(|(_, id)| id.as_str()).collect();
        // Acknowledged, and not in the new primary's stream: written to the old
        // primary after the replica stopped following it (or, after a SIGKILL,
        // before the replica received it).
        let vanished: Vec<&Acked> = acked
            .iter()
            .filter(|a| !survivors.contains(&a.entry))
            .collect();
        let never_handled = vanished
            .iter()
            .filter(|a| !seen.contains(a.envelope.as_str()))
            .count();
        for a in &vanished {
            assert!(
                in_window(a),
                "{what}: an acknowledged publish outside the failover window is not on the new \
                 primary: {a:?}, {:?} after the fault (window: {allowance:?} before it to \
                 {SWITCH_ALLOWANCE:?} after the switch at {:?})",
                a.at.checked_duration_since(fault),
                switched - fault
            );
        }
        // Work as the publisher and the worker saw it: the longest pause in
        // what the new primary keeps (acknowledged, then handled) that ends
        // after the fault, and when it ended.
        let by_envelope: HashMap<&str, &Acked> =
            acked.iter().map(|a| (a.envelope.as_str(), a)).collect();
        let (publish_pause, publish_resumed) = longest_pause(
            acked
                .iter()
                .filter(|a| survivors.contains(&a.entry))
                .map(|a| a.at),
            fault,
        );
        let (handle_pause, handle_resumed) = longest_pause(
            handled
                .iter()
                .filter(|(_, id)| {
                    by_envelope
                        .get(id.as_str())
                        .is_some_and(|a| survivors.contains(&a.entry))
                })
                .map(|(t, _)| *t),
            fault,
        );
        eprintln!(
            "{what}: the sentinels named the new primary {:?} after the fault; publishing \
             paused {publish_pause:?} and resumed {publish_resumed:?} after the fault, \
             handling paused {handle_pause:?} and resumed {handle_resumed:?} after it. {} \
             publishes acknowledged, {} of them not on the new primary (lost from the stream; {never_handled} never handled), acknowledged \
             from {:?} to {:?} after the fault; {} deliveries; worker {report:?}",
            switched - fault,
            acked.len(),
            vanished.len(),
            vanished.iter().map(|a| a.at - fault).min(),
            vanished.iter().map(|a| a.at - fault).max(),
            handled.len(),
        );
    }
}

/// The longest pause between two of `times` that ends after `fault`: its
/// length, and when it ended (after the fault).
fn longest_pause(times: impl Iterator<Item = Instant>, fault: Instant) -> (Duration, Duration) {
    let mut times: Vec<Instant> = times.collect();
    times.sort();
    let mut longest = (Duration::ZERO, Duration::ZERO);
    for pair in times.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        if after >= fault && after - before > longest.0 {
            longest = (after - before, after - fault);
        }
    }
    longest
}

fn worker_options() -> streambus::WorkerOptions {
    streambus::WorkerOptions {
        consumer_name: Some("w1".into()),
        concurrency: 16,
        block: Duration::from_millis(200),
        visibility_timeout: Duration::from_secs(2),
        reclaim_interval: Duration::from_millis(200),
        max_deliveries: 1000,
        retry_backoff: streambus::Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(200),
        ),
        reconnect_backoff: streambus::Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(300),
        ),
        shutdown_grace: Duration::from_secs(5),
        ..Default::default()
    }
}

/// The pending count of group `g`, if Redis answers.
async fn pending(conn: &mut streambus::Connection, stream: &str) -> Option<i64> {
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg("g")
        .query_async(conn)
        .await
        .ok()?;
    match v {
        redis::Value::Array(parts) => match parts.first() {
            Some(redis::Value::Int(n)) => Some(*n),
            _ => None,
        },
        _ => None,
    }
}

/// The ids of the entries in `stream`.
async fn stream_ids(
    conn: &mut streambus::Connection,
    stream: &str,
) -> redis::RedisResult<HashSet<EntryId>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await?;
    Ok(reply.ids.iter().map(|e| e.id.parse().unwrap()).collect())
}

/// A sentinel that names a replica as the primary (its view lags a
/// failover, or it is misconfigured): `ROLE` on connect refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_named_as_the_primary_is_refused() {
    let set = RedisSentinel::start();
    let primary = set.primary().port();
    let replica = *set.server_ports().iter().find(|p| **p != primary).unwrap();
    let sentinel = &set.sentinels()[0];
    let reply = sentinel.cli(&[
        "SENTINEL",
        "MONITOR",
        "misnamed",
        "127.0.0.1",
        &replica.to_string(),
        "2",
    ]);
    assert_eq!(reply, "OK");
    let url = format!("redis+sentinel://127.0.0.1:{}/misnamed", sentinel.port());
    let e = Client::open_with(&url, short())
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    assert!(e.to_string().contains("says it is slave"), "{e}");
}

/// The URL's password is Redis's: the sentinels are asked without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_password_is_the_primary_s() {
    let set = RedisSentinel::start_with(streambus_testkit::SentinelOptions {
        server: streambus_testkit::ServerOptions {
            password: Some("s3 cret".into()),
            ..Default::default()
        },
        ..Default::default()
    });
    let url = set.url();
    assert!(url.contains(":s3%20cret@"), "{url}");
    let mut conn = Client::open(&url).unwrap().connect().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");

    let wrong = url.replace("s3%20cret", "wrong");
    let e = Client::open(&wrong).unwrap().connect().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert!(!e.to_string().contains("wrong"), "{e}");
}

/// Sentinels with a password of their own: `?sentinel_password=`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_with_a_password_of_their_own() {
    let set = RedisSentinel::start_with(streambus_testkit::SentinelOptions {
        server: streambus_testkit::ServerOptions {
            password: Some("redis-pw".into()),
            ..Default::default()
        },
        sentinel_password: Some("sentinel pw".into()),
        ..Default::default()
    });
    let url = set.url();
    assert!(url.ends_with("?sentinel_password=sentinel%20pw"), "{url}");
    let client = Client::open(&url).unwrap();
    assert!(!client.display_url().contains("pw"), "{client:?}");
    let mut conn = client.connect().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");

    let without = url.split('?').next().unwrap().to_owned();
    let e = Client::open(&without).unwrap().connect().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
}
