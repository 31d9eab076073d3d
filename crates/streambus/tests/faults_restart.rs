//! Redis restarts under a running [`Worker`](streambus::Worker) and
//! [`Producer`](streambus::Producer): a crash with an append-only file, and a
//! restart that lost everything.
//!
//! As in `faults_worker.rs`: the worker reaches Redis through the testkit's
//! `FaultProxy`, a steady publisher writes straight to Redis, and each test
//! checks at the end that every envelope was handled (lost = 0), that nothing
//! is pending, and how long after the restart ("heal") entries were handled
//! again ([`common::fault_run`]).

use std::time::Duration;

use streambus_testkit::{Appendfsync, RedisServer, ServerOptions};
use tokio::time::Instant;

mod common;

use common::fault_run::Run;
use common::proxied::proxy_to;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_and_producer_survive_a_redis_crash_with_aof() {
    let mut redis = RedisServer::start_with(ServerOptions {
        appendonly: true,
        appendfsync: Appendfsync::Always,
        ..Default::default()
    });
    let proxy = proxy_to(&redis).await;
    let run = Run::start("crash", &proxy, &redis.url(), 1500, 500).await;
    run.handled_at_least(200).await;
    redis.kill();
    let down = Instant::now();
    // Redis stays down until the clients have noticed and have dialed again
    // and again (six new connections through the proxy, each closed for want
    // of Redis, through the reconnect backoff): publishes wait meanwhile
    // (publish_timeout).
    let accepted = proxy.connections_accepted();
    common::proxied::wait_for_dials(
        &proxy,
        accepted,
        6,
        Duration::from_secs(15),
        "the worker dialing a dead Redis",
    )
    .await;
    redis.restart();
    let healed = Instant::now();
    eprintln!("redis down for {:?}", healed - down);
    run.finish(&redis.url(), healed, "redis SIGKILL + restart (AOF always)")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_persistence_recreates_the_group() {
    let mut redis = RedisServer::start();
    let proxy = proxy_to(&redis).await;
    // Everything written before the restart is gone with the server; what is
    // published after it must be handled: the worker recreates the group.
    let mut run = Run::start("nopersist", &proxy, &redis.url(), 300, 1000).await;
    run.handled_at_least(300).await;
    redis.kill();
    redis.restart();
    let healed = Instant::now();
    run.publish_anew(&redis.url(), 300, 500).await;
    run.finish(&redis.url(), healed, "redis restart without persistence")
        .await;
}
