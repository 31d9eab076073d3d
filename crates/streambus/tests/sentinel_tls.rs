//! `rediss+sentinel://` against real TLS processes: a primary, a replica and
//! three sentinels started by the testkit with TLS ([`RedisSentinel`] with
//! `SentinelOptions::server.tls`). Every port they announce serves TLS only,
//! so the client speaks TLS to the sentinels (asking for the primary, and
//! listening for failovers) and to Redis.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streambus::{
    CancellationToken, Client, ConnectOptions, EntryId, ErrorKind, Message, Producer,
    ProducerOptions, WorkerReport,
};
use streambus_testkit::{unique_prefix, RedisSentinel, SentinelOptions, ServerOptions, TlsOptions};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use common::steady::{publish_steadily, Acked};

fn tls_set(require_client_cert: bool) -> RedisSentinel {
    RedisSentinel::start_with(SentinelOptions {
        server: ServerOptions {
            tls: Some(TlsOptions {
                require_client_cert,
            }),
            ..Default::default()
        },
        ..Default::default()
    })
}

/// The short timeouts of the plain-text sentinel tests (500 ms), but 2 s to
/// connect: a dial makes TLS handshakes with a sentinel and the primary,
/// and a worker whose first connection fails stops. (Once, on this loaded
/// 2-core machine, a worker made no group within 5 s with 500 ms.)
fn options() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Duration::from_secs(2),
        ..common::proxied::short()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_sentinel_url_finds_the_primary_and_a_worker_handles_entries() {
    let set = tls_set(false);
    let url = set.url();
    assert!(url.starts_with("rediss+sentinel://"), "{url}");
    assert!(url.contains("?ca="), "{url}");
    let client = Client::open_with(&url, options()).unwrap();
    let mut conn = client.connect().await.unwrap();
    let port: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("tls-port")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(port[1], set.primary().port().to_string());

    let stream = format!("{}s", unique_prefix("sentinel-tls"));
    let (handled, (mut worker, stop)) =
        common::fault_run::recording_worker(&client, &stream, common::worker::fast());
    wait_for_group(&conn, &stream, &mut worker).await;
    let producer = Producer::new(&client, ProducerOptions::default())
        .await
        .unwrap();
    for i in 0..20 {
        producer
            .publish(&stream, Message::json(&i).unwrap())
            .await
            .unwrap();
    }
    common::fault_run::wait_handled(&handled, 20, Duration::from_secs(10)).await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    assert_eq!(common::xlen(&mut conn, &stream).await, 20);
}

/// Mutual TLS: the sentinels and the servers require a client certificate
/// (and present theirs to each other); the URL gives it as `cert=&key=`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_sentinels_and_redis() {
    let set = tls_set(true);
    let url = set.url();
    assert!(url.contains("&cert=") && url.contains("&key="), "{url}");
    let mut conn = Client::open_with(&url, options())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");

    // Without one: refused at once, as a wrong CA.
    let without = url.split("&cert=").next().unwrap();
    let options = ConnectOptions {
        connect_timeout: LONG_CONNECT_TIMEOUT,
        ..Default::default()
    };
    let started = Instant::now();
    let e = Client::open_with(without, options)
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    assert!(e.to_string().contains("CertificateRequired"), "{e}");
    assert!(
        took < LONG_CONNECT_TIMEOUT / 2,
        "refused after {took:?}: {e}"
    );
}

/// A CA that signed none of the certificates: refused at once (not asked
/// again for the whole connect timeout, as for a sentinel that is down:
/// every attempt would fail the same way), with an error that says which
/// sentinel refused and what to give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_refused_at_once_with_a_clear_error() {
    let set = tls_set(false);
    let options = ConnectOptions {
        connect_timeout: LONG_CONNECT_TIMEOUT,
        tls: streambus::TlsOptions {
            ca_file: Some(set.primary().other_ca_cert_path()),
            ..Default::default()
        },
        ..Default::default()
    };
    let started = Instant::now();
    let e = Client::open_with(&set.url(), options)
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    assert!(e.to_string().contains("sentinel 127.0.0.1:"), "{e}");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    assert!(
        e.to_string().contains("?ca="),
        "the error says what to do: {e}"
    );
    assert!(
        took < LONG_CONNECT_TIMEOUT / 2,
        "refused after {took:?}: {e}"
    );

    // The insecure option (tests only) skips verification, on the sentinels
    // and on the primary.
    let bare = set.url().split('?').next().unwrap().to_owned();
    let mut conn = Client::open(&format!("{bare}?insecure"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");

    // Plain text to a TLS sentinel is no answer either.
    let plain = set.url().replace("rediss+sentinel://", "redis+sentinel://");
    let plain = plain.split('?').next().unwrap();
    let started = Instant::now();
    let e = Client::open_with(plain, common::proxied::short())
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    assert!(started.elapsed() < Duration::from_secs(5), "{e}");
    eprintln!("plain text to TLS sentinels: {e}");
}

/// A planned failover (`SENTINEL FAILOVER`) followed over TLS: publishing and
/// the worker carry on on the new primary, and every acknowledged publish is
/// handled, except those acknowledged from the failover until shortly after
/// the sentinels named the new primary ([`SWITCH_ALLOWANCE`]).
///
/// The old primary keeps taking writes for about ten seconds after a planned
/// failover, and loses them when it rejoins as a replica; only the
/// announcements heard on the sentinels' pub/sub (over TLS) move the client
/// off it in time. A listener that failed to subscribe over TLS fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_failover_is_followed_over_tls() {
    let set = tls_set(false);
    let client = Client::open_with(&set.url(), options()).unwrap();
    let stream = format!("{}s", unique_prefix("sentinel-tls-failover"));
    let (handled, (mut worker, stop_worker)) =
        common::fault_run::recording_worker(&client, &stream, worker_options());
    wait_for_group(&client.connect().await.unwrap(), &stream, &mut worker).await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop_publishing = CancellationToken::new();
    let publisher = tokio::spawn(publish_steadily(
        client.clone(),
        stream.clone(),
        acked.clone(),
        stop_publishing.clone(),
    ));
    common::fault_run::wait_handled(&handled, 100, DEADLINE).await;

    let fault = Instant::now();
    let old = set.failover();
    let new = tokio::task::block_in_place(|| set.wait_for_failover(old, DEADLINE)).unwrap();
    let window_end = Instant::now() + SWITCH_ALLOWANCE;
    assert_ne!(old, new);
    let after_window = || {
        acked
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.at > window_end)
            .count()
    };
    common::eventually(20, "publishes acknowledged after the window", || async {
        after_window() >= 100
    })
    .await;
    stop_publishing.cancel();
    publisher.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    let outside = |a: &Acked| a.at < fault || a.at > window_end;

    // On the new primary: everything acknowledged outside the window. (A
    // fresh connection: the one from before was retired by the switch.)
    let mut conn = client.connect().await.unwrap();
    let kept = stream_ids(&mut conn, &stream).await;
    let vanished: Vec<&Acked> = acked.iter().filter(|a| !kept.contains(&a.entry)).collect();
    assert!(
        vanished.iter().all(|a| !outside(a)),
        "acknowledged publishes outside the failover window are not on the new primary: \
         {} of {}, first {:?}, {:?} after the fault",
        vanished.iter().filter(|a| outside(a)).count(),
        vanished.len(),
        vanished.iter().find(|a| outside(a)),
        vanished.iter().find(|a| outside(a)).map(|a| a.at - fault),
    );
    // Handled: everything the new primary kept, and nothing left pending.
    common::eventually(20, "everything kept handled, nothing pending", || async {
        let seen: HashSet<String> = handled
            .lock()
            .unwrap()
            .iter()
            .map(|(_, e)| e.clone())
            .collect();
        acked
            .iter()
            .filter(|a| kept.contains(&a.entry))
            .all(|a| seen.contains(&a.envelope))
            && common::settled(&conn, &stream).await
    })
    .await;
    stop_worker.cancel();
    let report = tokio::time::timeout(DEADLINE, worker)
        .await
        .expect("the worker stops")
        .unwrap()
        .unwrap();
    eprintln!(
        "planned failover over TLS: {} acknowledged, {} not on the new primary (all in the \
         window); worker {report:?}",
        acked.len(),
        vanished.len()
    );
}

/// A connect timeout well above what a refusal takes, so that a dial that
/// asked again until it ran out would show.
const LONG_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// From the moment the sentinels name the new primary until every socket of
/// the client has left the old one (as in the plain-text sentinel tests).
const SWITCH_ALLOWANCE: Duration = Duration::from_secs(1);
/// How long a failover, or the end of a run, may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

fn worker_options() -> streambus::WorkerOptions {
    streambus::WorkerOptions {
        consumer_name: Some("w1".into()),
        concurrency: 16,
        max_deliveries: 1000,
        visibility_timeout: Duration::from_secs(2),
        ..common::worker::fast()
    }
}

/// Waits until the worker has made its group (it does as it starts), or
/// fails with the worker's own error if it stopped first.
async fn wait_for_group(
    conn: &streambus::Connection,
    stream: &str,
    worker: &mut JoinHandle<streambus::Result<WorkerReport>>,
) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if worker.is_finished() {
            panic!(
                "the worker stopped before it made its group: {:?}",
                worker.await
            );
        }
        let groups = streambus::admin::group::list_groups(&mut conn.clone(), stream).await;
        if groups.is_ok_and(|g| !g.is_empty()) {
            return;
        }
        assert!(Instant::now() < deadline, "no group after {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ids of the entries in `stream`.
async fn stream_ids(conn: &mut streambus::Connection, stream: &str) -> HashSet<EntryId> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    reply.ids.iter().map(|e| e.id.parse().unwrap()).collect()
}
