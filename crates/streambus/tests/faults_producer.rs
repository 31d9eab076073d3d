//! The [`Producer`]'s own faults: Redis refusing connections, a socket gone
//! silent, an idle connection that died, a busy Redis. Each checks the outcome
//! (written once, or given back with the message), not figures; they always
//! use the short timeouts ([`common::proxied::short`]).

use std::time::Duration;

use streambus::{Client, ErrorKind, Message, Producer, ProducerOptions};
use streambus_testkit::{unique_prefix, RedisServer, ServerOptions};
use tokio::time::Instant;

mod common;

use common::proxied::{short, Proxied};
use common::xlen;

/// Pipelines the producers of this test binary have sent again
/// (`streambus_publish_resends_total`), read from a recorder installed on
/// first use. The tests that make a producer resend hold [`RESENDING`], so
/// that one's count is not another's.
fn resends() -> u64 {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    let handle = HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .unwrap()
    });
    handle
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(streambus::metrics::PUBLISH_RESENDS))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

/// Held by the tests in which a producer resends (see [`resends`]).
static RESENDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until the producers have sent pipelines again `n` more times than
/// `before`: a publish is waiting out the fault, not just started.
async fn wait_resends(before: u64, n: u64, what: &str) {
    streambus_testkit::wait::wait_for(Duration::from_secs(10), what, || {
        std::future::ready(resends() >= before + n)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_waits_while_redis_refuses_then_gives_up_with_the_message() {
    let _resending = RESENDING.lock().await;
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
    let before = resends();
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
    // The outage lasts until the publish has been refused and sent again
    // three times (its backoff: 50, 100, 200 ms), well within publish_timeout.
    wait_resends(before, 3, "the publish sent again while refused").await;
    assert!(
        !waiting.is_finished(),
        "publish is still waiting when Redis comes back"
    );
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
    let proxied = Proxied::start("unconf").await;
    let producer = proxied.connected_producer().await;
    let Proxied { proxy, stream, .. } = &proxied;
    // The socket goes silent: the XADD is sent, and no reply ever comes.
    proxy.black_hole();
    let started = Instant::now();
    let mut e = producer
        .publish(stream, Message::json(&2).unwrap())
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
    producer.publish(stream, back).await.unwrap();
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
    let proxied = Proxied::start("idle").await;
    let producer = proxied.connected_producer().await;
    let Proxied {
        redis,
        proxy,
        stream,
        ..
    } = &proxied;
    let accepted = proxy.connections_accepted();
    // The connection dies silently while idle (an expired NAT entry), and new
    // connections work.
    proxy.black_hole();
    proxy.heal();
    // Idle for longer than health_check_after_idle: the idle time is the
    // condition under test, not a wait for something to happen.
    let idle = short().health_check_after_idle.unwrap();
    tokio::time::sleep(idle + Duration::from_millis(100)).await;
    // The health check finds it dead before the XADD goes out: no
    // "unconfirmed" outcome, the publish simply succeeds on a new socket.
    producer
        .publish(stream, Message::json(&2).unwrap())
        .await
        .unwrap();
    assert_eq!(proxy.connections_accepted() - accepted, 1, "one new socket");
    let mut direct = common::connect(&redis.url()).await;
    let len = xlen(&mut direct, stream).await;
    assert_eq!(len, 2);
}

/// Redis refusing for a while (`BUSY` while a script runs; `LOADING` after a
/// restart is the same kind of refusal): nothing was written, so the publish is
/// sent again until Redis takes it, within `publish_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_waits_out_a_busy_redis() {
    let _resending = RESENDING.lock().await;
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
    let before = resends();
    let publishing = tokio::spawn(async move { p.publish(&s, Message::json(&1).unwrap()).await });
    // Redis stays busy until the publish has been refused (BUSY) and sent
    // again twice.
    wait_resends(before, 2, "the publish sent again while Redis is busy").await;
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
