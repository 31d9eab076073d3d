//! A Redis behind the testkit's [`FaultProxy`], and the connection settings
//! of the fault tests.
//!
//! The timeouts are short (500 ms) so that the suite stays fast; the README's
//! "Faults" section gives the bounds with the defaults (3 s), measured with
//! `STREAMBUS_FAULTS_DEFAULTS=1` (as `scripts/faults` does).

use std::time::Duration;

use streambus::{Client, ConnectOptions, Message, Producer, ProducerOptions};
use streambus_testkit::{unique_prefix, FaultProxy, RedisServer};

/// Whether to run with the default settings (`STREAMBUS_FAULTS_DEFAULTS=1`,
/// as `scripts/faults` does to measure what users get) instead of short ones.
pub fn defaults() -> bool {
    std::env::var_os("STREAMBUS_FAULTS_DEFAULTS").is_some()
}

/// The connection settings of the fault runs: short, or the defaults.
pub fn fast() -> ConnectOptions {
    if defaults() {
        ConnectOptions::default()
    } else {
        short()
    }
}

/// Short timeouts: a dead connection is noticed within half a second. The
/// producer's own tests always use them: they check outcomes, not figures.
pub fn short() -> ConnectOptions {
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
pub fn recovery() -> Duration {
    if defaults() {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(4)
    }
}

/// How long the end of a run may take (longer with the default timeouts).
pub fn settle() -> Duration {
    if defaults() {
        Duration::from_secs(40)
    } else {
        Duration::from_secs(20)
    }
}

/// A proxy in front of `redis`, passing everything through until told otherwise.
pub async fn proxy_to(redis: &RedisServer) -> FaultProxy {
    let addr = format!("127.0.0.1:{}", redis.port()).parse().unwrap();
    FaultProxy::start(addr).await.unwrap()
}

/// Waits (up to `deadline`) until `n` more connections than `accepted` have
/// been made through `proxy`: its clients noticed the fault and are dialing
/// again. The fault tests end a fault on that, not after a fixed time.
pub async fn wait_for_dials(
    proxy: &FaultProxy,
    accepted: u64,
    n: u64,
    deadline: std::time::Duration,
    what: &str,
) {
    streambus_testkit::wait::wait_for(deadline, what, || {
        std::future::ready(proxy.connections_accepted() >= accepted + n)
    })
    .await;
}

/// A private Redis behind a proxy, a stream name, and a connection with short
/// timeouts through the proxy: the setting of the producer's own tests.
pub struct Proxied {
    pub redis: RedisServer,
    pub proxy: FaultProxy,
    pub stream: String,
    pub client: Client,
}

impl Proxied {
    pub async fn start(label: &str) -> Proxied {
        let redis = RedisServer::start();
        let proxy = proxy_to(&redis).await;
        let stream = format!("{}:s", unique_prefix(label));
        let client = Client::open_with(&proxy.url(), short()).unwrap();
        Proxied {
            redis,
            proxy,
            stream,
            client,
        }
    }

    /// A producer through the proxy that has written one entry, so that its
    /// connection is up before the fault.
    pub async fn connected_producer(&self) -> Producer {
        let producer = Producer::new(&self.client, ProducerOptions::default())
            .await
            .unwrap();
        producer
            .publish(&self.stream, Message::json(&1).unwrap())
            .await
            .unwrap();
        producer
    }
}
