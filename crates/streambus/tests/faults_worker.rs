//! Network faults under a running [`Worker`](streambus::Worker): a black hole,
//! a storm of resets, latency spikes.
//!
//! The worker reaches Redis through the testkit's `FaultProxy`; entries are
//! published straight to Redis. Each fault test publishes a steady stream of
//! envelopes while the fault happens, and checks at the end: every envelope
//! handled (lost = 0), nothing pending, and the time from the end of the fault
//! ("heal") to the first entry handled after it and to the last one
//! ([`common::fault_run`]). The timeouts are short (500 ms) so that the suite
//! stays fast; the README's "Faults" section gives the bounds with the
//! defaults (3 s).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streambus::{Client, ConnectOptions, Message, WorkerOptions};
use streambus_testkit::{unique_prefix, RedisServer};
use tokio::time::Instant;

mod common;

use common::fault_run::{publish_steadily, recording_worker, wait_all_handled, wait_handled, Run};
use common::proxied::{fast, proxy_to, wait_for_dials};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_survives_a_black_hole_and_heals_on_new_connections() {
    let redis = RedisServer::start();
    let proxy = proxy_to(&redis).await;
    let run = Run::start("bh", &proxy, &redis.url(), 1500, 500).await;
    run.handled_at_least(200).await;
    proxy.black_hole();
    let cut = Instant::now();
    let before = run.handled_count();
    // The outage lasts until the worker has found its silent sockets dead and
    // is dialing again into the black hole (two new connections: it is in its
    // reconnect loop), not for a fixed time.
    let accepted = proxy.connections_accepted();
    wait_for_dials(
        &proxy,
        accepted,
        2,
        Duration::from_secs(15),
        "the worker dialing into the black hole",
    )
    .await;
    assert!(
        run.handled_count() <= before + 16,
        "nothing is handled through a black hole"
    );
    proxy.heal();
    let healed = Instant::now();
    let what = format!(
        "black hole of {:?} (until two dials went into it)",
        healed - cut
    );
    run.finish(&redis.url(), healed, &what).await;
}

/// The promise of the README with the default settings: working again within
/// 10 s of the network healing, whatever was under way when it went silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_default_settings_a_worker_recovers_within_10s_of_healing() {
    let redis = RedisServer::start();
    let proxy = proxy_to(&redis).await;
    let stream = format!("{}:s", unique_prefix("defaults"));
    let (handled, (worker, stop)) = recording_worker(
        &common::client(&proxy.url()),
        &stream,
        WorkerOptions::default(),
    );
    let producer = common::producer(&redis.url()).await;
    let mut conn = common::connect(&redis.url()).await;
    common::wait_for_group(&conn, &stream).await;
    producer
        .publish(&stream, Message::json(&0).unwrap())
        .await
        .unwrap();
    wait_handled(&handled, 1, Duration::from_secs(5)).await;
    assert_eq!(handled.lock().unwrap().len(), 1);
    // The probe: silence, entries arriving meanwhile, then the
    // network heals for new connections only. The silence lasts until the
    // worker, with the default timeouts, has found its sockets dead and is
    // dialing again into the black hole (two new connections), not for a
    // fixed time.
    let accepted = proxy.connections_accepted();
    proxy.black_hole();
    let ids: Vec<streambus::EntryId> = producer
        .publish_batch(&stream, common::numbered(1..=50))
        .await
        .unwrap();
    assert_eq!(ids.len(), 50);
    let cut = Instant::now();
    wait_for_dials(
        &proxy,
        accepted,
        2,
        Duration::from_secs(40),
        "the worker dialing into the black hole",
    )
    .await;
    proxy.heal();
    let healed = Instant::now();
    producer
        .publish_batch(&stream, common::numbered(51..=100))
        .await
        .unwrap();
    wait_handled(&handled, 101, Duration::from_secs(20)).await;
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
        "default settings, black hole of {:?} (until two dials went into it): heal -> first entry handled {recovered:?}, -> all 100 {all:?}",
        healed - cut
    );
    assert!(recovered <= Duration::from_secs(10), "{recovered:?}");
    stop.cancel();
    worker.await.unwrap().unwrap();
    assert_eq!(common::pending_count(&mut conn, &stream, "g").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_survives_a_reset_storm() {
    let redis = RedisServer::start();
    let proxy = proxy_to(&redis).await;
    let run = Run::start("rst", &proxy, &redis.url(), 2500, 500).await;
    run.handled_at_least(200).await;
    // For 3 s, a reset each time the worker has dialed again after the last
    // one (entries keep arriving meanwhile).
    let storm = Instant::now();
    let mut resets = 0;
    while storm.elapsed() < Duration::from_secs(3) {
        resets += 1;
        let accepted = proxy.connections_accepted();
        proxy.reset_all();
        wait_for_dials(
            &proxy,
            accepted,
            1,
            Duration::from_secs(15),
            "the worker dialing again after a reset",
        )
        .await;
    }
    let healed = Instant::now();
    let what = format!("reset storm of {resets} resets over {:?}", healed - storm);
    run.finish(&redis.url(), healed, &what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_spikes_below_the_timeout_cause_no_reconnects() {
    let redis = RedisServer::start();
    let proxy = proxy_to(&redis).await;
    // Timeouts well above the spike: a slow reply is still a reply.
    let stream = format!("{}:s", unique_prefix("lat"));
    let options = ConnectOptions {
        response_timeout: Duration::from_secs(3),
        ..fast()
    };
    let client = Client::open_with(&proxy.url(), options).unwrap();
    let (handled, (worker, stop)) = recording_worker(
        &client,
        &stream,
        WorkerOptions {
            concurrency: 16,
            block: Duration::from_millis(200),
            ..Default::default()
        },
    );
    let mut conn = common::connect(&redis.url()).await;
    common::wait_for_group(&conn, &stream).await;
    let accepted = proxy.connections_accepted();
    proxy.latency(Duration::from_secs(1));
    let published = Arc::new(Mutex::new(Vec::new()));
    publish_steadily(
        common::client(&redis.url()),
        stream.clone(),
        300,
        100,
        published.clone(),
    )
    .await;
    proxy.pass_through();
    let ids: HashSet<String> = published.lock().unwrap().iter().cloned().collect();
    wait_all_handled(&handled, &ids, Duration::from_secs(15)).await;
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
    assert_eq!(common::pending_count(&mut conn, &stream, "g").await, 0);
}
