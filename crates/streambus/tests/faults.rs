//! Network faults and Redis restarts under a running [`Worker`] and [`Producer`].
//!
//! The worker reaches Redis through the testkit's [`FaultProxy`]; entries are
//! published straight to Redis (or through the proxy, for the producer's own
//! tests). Each fault test publishes a steady stream of envelopes while the fault
//! happens, and checks at the end: every envelope handled (lost = 0), nothing
//! pending, and the time from the end of the fault ("heal") to the first entry
//! handled after it and to the last one. The timeouts are short (500 ms) so that
//! the suite stays fast; the README's "Faults" section gives the bounds with the
//! defaults (3 s).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streambus::{
    Backoff, CancellationToken, Client, ConnectOptions, Delivery, ErrorKind, Message, Producer,
    ProducerOptions, Worker, WorkerOptions,
};
use streambus_testkit::{unique_prefix, Appendfsync, FaultProxy, RedisServer, ServerOptions};
use tokio::time::Instant;

mod common;

/// Whether to run with the default settings (`STREAMBUS_FAULTS_DEFAULTS=1`,
/// as `scripts/faults` does to measure what users get) instead of short ones.
fn defaults() -> bool {
    std::env::var_os("STREAMBUS_FAULTS_DEFAULTS").is_some()
}

/// The connection settings of the fault runs: short, or the defaults.
fn fast() -> ConnectOptions {
    if defaults() {
        ConnectOptions::default()
    } else {
        short()
    }
}

/// Short timeouts: a dead connection is noticed within half a second. The
/// producer's own tests always use them: they check outcomes, not figures.
fn short() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_millis(500),
        health_check_after_idle: Some(Duration::from_millis(500)),
        ..Default::default()
    }
}

/// The bound on recovery these tests hold the worker to, with `fast()`
/// timeouts: the read under way times out (BLOCK 200 ms + 500 ms), one pause
/// of the reconnect backoff (at most 300 ms here), a dial (≤ 500 ms), with room
/// for a slow CI machine. With the defaults: the README's 10 s.
fn recovery() -> Duration {
    if defaults() {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(4)
    }
}

/// How long the end of a run may take (longer with the default timeouts).
fn settle() -> Duration {
    if defaults() {
        Duration::from_secs(40)
    } else {
        Duration::from_secs(20)
    }
}

struct Run {
    stream: String,
    group: String,
    /// Envelope ids published (and confirmed written).
    published: Arc<Mutex<Vec<String>>>,
    /// Every delivery handled: when, and the envelope id.
    handled: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: CancellationToken,
    worker: tokio::task::JoinHandle<streambus::Result<streambus::WorkerReport>>,
    publisher: Option<tokio::task::JoinHandle<()>>,
}

impl Run {
    /// A worker through `proxy`, and a publisher of `total` envelopes at about
    /// `per_sec`, straight to `redis_url`.
    async fn start(
        label: &str,
        proxy: &FaultProxy,
        redis_url: &str,
        total: usize,
        per_sec: u64,
    ) -> Run {
        let prefix = unique_prefix(label);
        let stream = format!("{prefix}:s");
        let group = "g".to_string();
        let handled = Arc::new(Mutex::new(Vec::new()));
        let options = if defaults() {
            WorkerOptions {
                concurrency: 16,
                max_deliveries: 1000,
                visibility_timeout: Duration::from_secs(10),
                ..Default::default()
            }
        } else {
            WorkerOptions {
                concurrency: 16,
                block: Duration::from_millis(200),
                visibility_timeout: Duration::from_secs(2),
                reclaim_interval: Duration::from_millis(200),
                max_deliveries: 1000,
                retry_backoff: Backoff::new(Duration::from_millis(20), Duration::from_millis(200)),
                reconnect_backoff: Backoff::new(
                    Duration::from_millis(20),
                    Duration::from_millis(300),
                ),
                shutdown_grace: Duration::from_secs(5),
                ..Default::default()
            }
        };
        let client = Client::open_with(&proxy.url(), fast()).unwrap();
        let seen = handled.clone();
        let stop = CancellationToken::new();
        let worker = tokio::spawn(
            Worker::new(
                &client,
                &stream,
                &group,
                WorkerOptions {
                    consumer_name: Some("w1".into()),
                    ..options
                },
            )
            .run(
                move |d: Delivery| {
                    let seen = seen.clone();
                    async move {
                        let env = d.envelope().unwrap().unwrap();
                        seen.lock().unwrap().push((Instant::now(), env.id));
                    }
                },
                stop.clone(),
            ),
        );
        // The group exists before the first publish (the worker makes it).
        let mut conn = common::connect(redis_url).await;
        common::wait_for(Duration::from_secs(5), || {
            let mut conn = conn.clone();
            let stream = stream.clone();
            async move {
                !streambus::admin::group::list_groups(&mut conn, &stream)
                    .await
                    .unwrap_or_default()
                    .is_empty()
            }
        })
        .await;
        let published = Arc::new(Mutex::new(Vec::new()));
        let publisher = tokio::spawn(publish_steadily(
            Client::open_with(redis_url, fast()).unwrap(),
            stream.clone(),
            total,
            per_sec,
            published.clone(),
        ));
        let _ = &mut conn;
        Run {
            stream,
            group,
            published,
            handled,
            stop,
            worker,
            publisher: Some(publisher),
        }
    }

    fn handled_count(&self) -> usize {
        self.handled.lock().unwrap().len()
    }

    /// Waits for the publisher, then until every published id was handled and
    /// nothing is pending; stops the worker. Returns (first, last) handled time
    /// after `healed`.
    async fn finish(mut self, redis_url: &str, healed: Instant) -> (Duration, Duration) {
        self.publisher.take().unwrap().await.unwrap();
        let published: HashSet<String> = self.published.lock().unwrap().iter().cloned().collect();
        let handled = self.handled.clone();
        let all = published.clone();
        common::wait_for(settle(), move || {
            let handled = handled.clone();
            let all = all.clone();
            async move {
                let seen: HashSet<String> = handled
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(_, id)| id.clone())
                    .collect();
                all.is_subset(&seen)
            }
        })
        .await;
        let mut conn = common::connect(redis_url).await;
        let (stream, group) = (self.stream.clone(), self.group.clone());
        common::wait_for(settle(), move || {
            let mut conn = conn.clone();
            let (stream, group) = (stream.clone(), group.clone());
            async move { common::pending_count(&mut conn, &stream, &group).await == 0 }
        })
        .await;
        self.stop.cancel();
        let report = tokio::time::timeout(settle(), self.worker)
            .await
            .expect("the worker stops")
            .unwrap()
            .unwrap();
        conn = common::connect(redis_url).await;
        assert_eq!(
            common::pending_count(&mut conn, &self.stream, &self.group).await,
            0
        );
        let handled = self.handled.lock().unwrap();
        let seen: HashSet<&String> = handled.iter().map(|(_, id)| id).collect();
        let lost = published.iter().filter(|id| !seen.contains(id)).count();
        assert_eq!(lost, 0, "lost entries");
        let after: Vec<Instant> = handled
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| *t >= healed)
            .collect();
        let first = after.iter().min().map_or(Duration::ZERO, |t| *t - healed);
        let last = after.iter().max().map_or(Duration::ZERO, |t| *t - healed);
        eprintln!(
            "published {}, deliveries {}, duplicates {}, reconnect report {report:?}",
            published.len(),
            handled.len(),
            handled.len() - seen.len()
        );
        (first, last)
    }
}

/// Publishes `total` envelopes at about `per_sec`, recording the ids that were
/// written. A publish that fails `Unconfirmed` is published again with the
/// same envelope (so a consumer may see it twice, never lose it).
async fn publish_steadily(
    client: Client,
    stream: String,
    total: usize,
    per_sec: u64,
    published: Arc<Mutex<Vec<String>>>,
) {
    let producer = Producer::new(&client, ProducerOptions::default())
        .await
        .unwrap();
    let every = Duration::from_micros(1_000_000 / per_sec.max(1));
    let mut tick = tokio::time::interval(every);
    for i in 0..total {
        tick.tick().await;
        let mut message = Message::json(&serde_json::json!({ "n": i })).unwrap();
        let id = message.envelope_id().unwrap().to_owned();
        loop {
            match producer.publish(&stream, message).await {
                Ok(_) => break,
                Err(mut e)
                    if e.kind() == ErrorKind::Unconfirmed || e.kind() == ErrorKind::Unavailable =>
                {
                    message = e.take_unpublished().expect("the message comes back");
                }
                Err(e) => panic!("publish failed: {e}"),
            }
        }
        published.lock().unwrap().push(id);
    }
}

/// Waits until `run` has handled at least `n` entries.
async fn handled_at_least(run: &Run, n: usize) {
    let handled = run.handled.clone();
    common::wait_for(Duration::from_secs(10), move || {
        let handled = handled.clone();
        async move { handled.lock().unwrap().len() >= n }
    })
    .await;
}

fn report(what: &str, first: Duration, last: Duration) {
    eprintln!("{what}: heal -> first entry handled {first:?}, -> all handled {last:?}");
    assert!(
        first <= recovery(),
        "{what}: first entry after heal took {first:?} (bound {:?})",
        recovery()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_survives_a_black_hole_and_heals_on_new_connections() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis_addr(&redis)).await.unwrap();
    let run = Run::start("bh", &proxy, &redis.url(), 1500, 500).await;
    handled_at_least(&run, 200).await;
    proxy.black_hole();
    let before = run.handled_count();
    tokio::time::sleep(Duration::from_secs(3)).await; // the fault's length, not a wait for a condition
    assert!(
        run.handled_count() <= before + 16,
        "nothing is handled through a black hole"
    );
    proxy.heal();
    let healed = Instant::now();
    let (first, last) = run.finish(&redis.url(), healed).await;
    report("black hole 3 s", first, last);
}

/// The promise of the README with the default settings: working again within
/// 10 s of the network healing, whatever was under way when it went silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_default_settings_a_worker_recovers_within_10s_of_healing() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis_addr(&redis)).await.unwrap();
    let stream = format!("{}:s", unique_prefix("defaults"));
    let handled = Arc::new(Mutex::new(Vec::new()));
    let seen = handled.clone();
    let stop = CancellationToken::new();
    let worker = tokio::spawn(
        Worker::new(
            &Client::open(&proxy.url()).unwrap(),
            &stream,
            "g",
            WorkerOptions::default(),
        )
        .run(
            move |d: Delivery| {
                let seen = seen.clone();
                async move {
                    seen.lock()
                        .unwrap()
                        .push((Instant::now(), d.envelope().unwrap().unwrap().id))
                }
            },
            stop.clone(),
        ),
    );
    let direct = Client::open(&redis.url()).unwrap();
    let producer = Producer::new(&direct, ProducerOptions::default())
        .await
        .unwrap();
    let mut conn = common::connect(&redis.url()).await;
    let s = stream.clone();
    common::wait_for(Duration::from_secs(5), move || {
        let mut conn = conn.clone();
        let s = s.clone();
        async move {
            !streambus::admin::group::list_groups(&mut conn, &s)
                .await
                .unwrap_or_default()
                .is_empty()
        }
    })
    .await;
    producer
        .publish(&stream, Message::json(&0).unwrap())
        .await
        .unwrap();
    let h = handled.clone();
    common::wait_for(Duration::from_secs(5), move || {
        let h = h.clone();
        async move { h.lock().unwrap().len() == 1 }
    })
    .await;
    // The probe: 10 s of silence, entries arriving meanwhile, then the
    // network heals for new connections only.
    proxy.black_hole();
    let ids: Vec<streambus::EntryId> = producer
        .publish_batch(&stream, (1..=50).map(|n| Message::json(&n).unwrap()))
        .await
        .unwrap();
    assert_eq!(ids.len(), 50);
    tokio::time::sleep(Duration::from_secs(10)).await; // the fault's length
    proxy.heal();
    let healed = Instant::now();
    producer
        .publish_batch(&stream, (51..=100).map(|n| Message::json(&n).unwrap()))
        .await
        .unwrap();
    let h = handled.clone();
    common::wait_for(Duration::from_secs(20), move || {
        let h = h.clone();
        async move { h.lock().unwrap().len() >= 101 }
    })
    .await;
    let (recovered, all) = {
        let handled = handled.lock().unwrap();
        assert_eq!(handled.len(), 101, "each entry handled once");
        let after: Vec<Instant> = handled[1..].iter().map(|(t, _)| *t).collect();
        (
            *after.iter().min().unwrap() - healed,
            *after.iter().max().unwrap() - healed,
        )
    };
    eprintln!(
        "default settings, black hole 10 s: heal -> first entry handled {recovered:?}, -> all 100 {all:?}"
    );
    assert!(recovered <= Duration::from_secs(10), "{recovered:?}");
    stop.cancel();
    worker.await.unwrap().unwrap();
    conn = common::connect(&redis.url()).await;
    assert_eq!(common::pending_count(&mut conn, &stream, "g").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_survives_a_reset_storm() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis_addr(&redis)).await.unwrap();
    let run = Run::start("rst", &proxy, &redis.url(), 2500, 500).await;
    handled_at_least(&run, 200).await;
    let storm_end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < storm_end {
        proxy.reset_all();
        tokio::time::sleep(Duration::from_millis(500)).await; // the storm's rhythm
    }
    let healed = Instant::now();
    let (first, last) = run.finish(&redis.url(), healed).await;
    report("reset storm 3 s", first, last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_spikes_below_the_timeout_cause_no_reconnects() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis_addr(&redis)).await.unwrap();
    // Timeouts well above the spike: a slow reply is still a reply.
    let prefix = unique_prefix("lat");
    let stream = format!("{prefix}:s");
    let options = ConnectOptions {
        response_timeout: Duration::from_secs(3),
        ..fast()
    };
    let client = Client::open_with(&proxy.url(), options).unwrap();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let seen = handled.clone();
    let stop = CancellationToken::new();
    let worker = tokio::spawn(
        Worker::new(
            &client,
            &stream,
            "g",
            WorkerOptions {
                concurrency: 16,
                block: Duration::from_millis(200),
                ..Default::default()
            },
        )
        .run(
            move |d: Delivery| {
                let seen = seen.clone();
                async move { seen.lock().unwrap().push(d.envelope().unwrap().unwrap().id) }
            },
            stop.clone(),
        ),
    );
    let mut conn = common::connect(&redis.url()).await;
    let s = stream.clone();
    common::wait_for(Duration::from_secs(5), move || {
        let mut conn = conn.clone();
        let s = s.clone();
        async move {
            !streambus::admin::group::list_groups(&mut conn, &s)
                .await
                .unwrap_or_default()
                .is_empty()
        }
    })
    .await;
    let accepted = proxy.connections_accepted();
    proxy.latency(Duration::from_secs(1));
    let published = Arc::new(Mutex::new(Vec::new()));
    publish_steadily(
        Client::open(&redis.url()).unwrap(),
        stream.clone(),
        300,
        100,
        published.clone(),
    )
    .await;
    proxy.pass_through();
    let ids: HashSet<String> = published.lock().unwrap().iter().cloned().collect();
    let h = handled.clone();
    let all = ids.clone();
    common::wait_for(Duration::from_secs(15), move || {
        let h = h.clone();
        let all = all.clone();
        async move { all.is_subset(&h.lock().unwrap().iter().cloned().collect()) }
    })
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    let deliveries = handled.lock().unwrap().len();
    let new_connections = proxy.connections_accepted() - accepted;
    eprintln!(
        "latency 1 s: {deliveries} deliveries of {} entries, {new_connections} new connections",
        ids.len()
    );
    assert_eq!(deliveries, ids.len(), "no entry handled twice");
    assert_eq!(new_connections, 0, "a slow reply is no reason to reconnect");
    conn = common::connect(&redis.url()).await;
    assert_eq!(common::pending_count(&mut conn, &stream, "g").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_and_producer_survive_a_redis_crash_with_aof() {
    let mut redis = RedisServer::start_with(ServerOptions {
        appendonly: true,
        appendfsync: Appendfsync::Always,
        ..Default::default()
    });
    let proxy = FaultProxy::start(redis_addr(&redis)).await.unwrap();
    let run = Run::start("crash", &proxy, &redis.url(), 1500, 500).await;
    handled_at_least(&run, 200).await;
    redis.kill();
    let down = Instant::now();
    // A restart takes a moment: publishes wait meanwhile (publish_timeout).
    tokio::time::sleep(Duration::from_secs(1)).await; // the outage's length
    redis.restart();
    let healed = Instant::now();
    eprintln!("redis down for {:?}", healed - down);
    let (first, last) = run.finish(&redis.url(), healed).await;
    report("redis SIGKILL + restart (AOF always)", first, last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_persistence_recreates_the_group() {
    let mut redis = RedisServer::start();
    let proxy = FaultProxy::start(redis_addr(&redis)).await.unwrap();
    // Everything written before the restart is gone with the server; what is
    // published after it must be handled: the worker recreates the group.
    let run = Run::start("nopersist", &proxy, &redis.url(), 300, 1000).await;
    handled_at_least(&run, 300).await;
    redis.kill();
    redis.restart();
    let healed = Instant::now();
    let mut second = Run {
        publisher: None,
        ..run
    };
    second.published.lock().unwrap().clear();
    second.handled.lock().unwrap().clear();
    second.publisher = Some(tokio::spawn(publish_steadily(
        Client::open_with(&redis.url(), fast()).unwrap(),
        second.stream.clone(),
        300,
        500,
        second.published.clone(),
    )));
    let (first, last) = second.finish(&redis.url(), healed).await;
    report("redis restart without persistence", first, last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_waits_while_redis_refuses_then_gives_up_with_the_message() {
    let Proxied {
        redis,
        proxy,
        stream,
        client,
    } = Proxied::start("pub").await;
    let producer = Producer::new(
        &client,
        ProducerOptions {
            publish_timeout: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let accepted = proxy.connections_accepted();
    // Refused connections: nothing can be sent, so publish waits for Redis...
    proxy.refuse();
    proxy.reset_all();
    let p = producer.clone();
    let s = stream.clone();
    let waiting = tokio::spawn(async move {
        let mut message = Message::json(&serde_json::json!({"k": 1})).unwrap();
        loop {
            match p.publish(&s, message).await {
                // The reset socket's end may not be noticed before this XADD is
                // handed to it: redis-rs then cannot say whether it went out.
                Err(mut e) if e.kind() == ErrorKind::Unconfirmed => {
                    message = e.take_unpublished().unwrap()
                }
                other => return other,
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await; // an outage shorter than publish_timeout
    proxy.pass_through();
    let id = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut direct = common::connect(&redis.url()).await;
    let len = xlen(&mut direct, &stream).await;
    assert_eq!(len, 1, "written once, as {id}");
    assert!(proxy.connections_accepted() > accepted, "a new socket");

    // ... and gives up after publish_timeout, nothing written, message given back.
    proxy.refuse();
    proxy.reset_all();
    let mut message = Message::json(&serde_json::json!({"k": 2})).unwrap();
    let envelope_id = message.envelope_id().unwrap().to_owned();
    let mut started = Instant::now();
    let mut e = producer.publish(&stream, message).await.unwrap_err();
    if e.kind() == ErrorKind::Unconfirmed {
        // As above: handed to the reset socket. Nothing reached Redis.
        message = e.take_unpublished().unwrap();
        started = Instant::now();
        e = producer.publish(&stream, message).await.unwrap_err();
    }
    let waited = started.elapsed();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_retryable());
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    assert!(e.to_string().contains("nothing was written"), "{e}");
    let back = e.take_unpublished().expect("the message comes back");
    assert_eq!(back.envelope_id(), Some(envelope_id.as_str()));
    // Publishing it again once Redis is back keeps its envelope id.
    proxy.pass_through();
    producer.publish(&stream, back).await.unwrap();
    let len = xlen(&mut direct, &stream).await;
    assert_eq!(len, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_without_a_reply_is_unconfirmed_and_the_connection_replaced() {
    let Proxied {
        redis: _redis,
        proxy,
        stream,
        client,
    } = Proxied::start("unconf").await;
    let producer = Producer::new(&client, ProducerOptions::default())
        .await
        .unwrap();
    producer
        .publish(&stream, Message::json(&1).unwrap())
        .await
        .unwrap();
    // The socket goes silent: the XADD is sent, and no reply ever comes.
    proxy.black_hole();
    let started = Instant::now();
    let mut e = producer
        .publish(&stream, Message::json(&2).unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unconfirmed, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(e.to_string().contains("may or may not"), "{e}");
    let back = e.take_unpublished().unwrap();
    // The network heals for new connections only: the old socket stays
    // silent, and the next publish must not be sent on it.
    let accepted = proxy.connections_accepted();
    proxy.heal();
    let healed = Instant::now();
    producer.publish(&stream, back).await.unwrap();
    eprintln!(
        "unconfirmed publish: heal -> next publish written {:?}",
        healed.elapsed()
    );
    assert!(healed.elapsed() < Duration::from_secs(2));
    assert_eq!(
        proxy.connections_accepted() - accepted,
        1,
        "one new socket, not one per request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_that_died_is_replaced_before_a_write() {
    let Proxied {
        redis,
        proxy,
        stream,
        client,
    } = Proxied::start("idle").await;
    let producer = Producer::new(&client, ProducerOptions::default())
        .await
        .unwrap();
    producer
        .publish(&stream, Message::json(&1).unwrap())
        .await
        .unwrap();
    let accepted = proxy.connections_accepted();
    // The connection dies silently while idle (an expired NAT entry), and new
    // connections work.
    proxy.black_hole();
    proxy.heal();
    tokio::time::sleep(Duration::from_millis(600)).await; // longer than health_check_after_idle
                                                          // The health check finds it dead before the XADD goes out: no
                                                          // "unconfirmed" outcome, the publish simply succeeds on a new socket.
    producer
        .publish(&stream, Message::json(&2).unwrap())
        .await
        .unwrap();
    assert_eq!(proxy.connections_accepted() - accepted, 1, "one new socket");
    let mut direct = common::connect(&redis.url()).await;
    let len = xlen(&mut direct, &stream).await;
    assert_eq!(len, 2);
}

/// A private Redis behind a proxy, a stream name, and a connection with short
/// timeouts through the proxy: the setting of the producer's own tests.
struct Proxied {
    redis: RedisServer,
    proxy: FaultProxy,
    stream: String,
    client: Client,
}

impl Proxied {
    async fn start(label: &str) -> Proxied {
        let redis = RedisServer::start();
        let proxy = FaultProxy::start(redis_addr(&redis)).await.unwrap();
        let stream = format!("{}:s", unique_prefix(label));
        let client = Client::open_with(&proxy.url(), short()).unwrap();
        Proxied {
            redis,
            proxy,
            stream,
            client,
        }
    }
}

/// The length of `stream`.
async fn xlen(conn: &mut impl redis::aio::ConnectionLike, stream: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(conn)
        .await
        .unwrap()
}

fn redis_addr(redis: &RedisServer) -> std::net::SocketAddr {
    format!("127.0.0.1:{}", redis.port()).parse().unwrap()
}

/// Redis refusing for a while (`BUSY` while a script runs; `LOADING` after a
/// restart is the same kind of refusal): nothing was written, so the publish is
/// sent again until Redis takes it, within `publish_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_waits_out_a_busy_redis() {
    let redis = RedisServer::start_with(ServerOptions {
        extra_args: vec!["--busy-reply-threshold".into(), "50".into()],
        ..Default::default()
    });
    let stream = format!("{}:s", unique_prefix("busy"));
    let producer = Producer::new(
        &Client::open_with(&redis.url(), short()).unwrap(),
        ProducerOptions::default(),
    )
    .await
    .unwrap();
    // A script that runs until killed; its own connection waits for it.
    let mut blocker = common::connect(&redis.url()).await;
    let script = tokio::spawn(async move {
        let _: redis::RedisResult<()> = redis::cmd("EVAL")
            .arg("while true do end")
            .arg(0)
            .query_async(&mut blocker)
            .await;
    });
    let url = redis.url();
    common::wait_for(Duration::from_secs(5), move || {
        let url = url.clone();
        async move {
            let mut c = redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let r: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
            r.is_err_and(|e| e.code() == Some("BUSY"))
        }
    })
    .await;
    let p = producer.clone();
    let s = stream.clone();
    let publishing = tokio::spawn(async move { p.publish(&s, Message::json(&1).unwrap()).await });
    tokio::time::sleep(Duration::from_millis(300)).await; // how long Redis stays busy
    assert!(
        !publishing.is_finished(),
        "publish waits while Redis is busy"
    );
    let mut admin = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("KILL")
        .query_async(&mut admin)
        .await
        .unwrap();
    let id = tokio::time::timeout(Duration::from_secs(5), publishing)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let len = xlen(&mut admin, &stream).await;
    assert_eq!(len, 1, "written once, as {id}");
    let _ = script.await;
}
