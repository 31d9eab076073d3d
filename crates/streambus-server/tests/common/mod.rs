//! Shared by the test binaries: a real Redis, an [`AppState`] on it, fixtures
//! written into it, and a real server on a free port.
//!
//! # Layout
//!
//! - this file: stream names, configs and states, the fixtures, and
//!   [`RunningServer`] with the requests a client makes to it over a socket;
//! - [`http`]: requests to the router in-process (`oneshot`), and their bodies;
//! - [`faults`]: the testkit's `FaultProxy` between the service and Redis,
//!   with short timeouts, for the fault tests.
//!
//! Waiting for something is the testkit's: [`streambus_testkit::wait`].
#![allow(dead_code)]

pub mod faults;
pub mod http;

use std::net::SocketAddr;
use std::time::Duration;

use streambus::partition::{LeaseOptions, PartitionedWorker, Partitions};
use streambus::{
    CancellationToken, Client, Delivery, EntryId, Message, Producer, ProducerOptions,
    WorkerOptions, WorkerReport,
};
use streambus_server::{serve, AppState, ServerConfig};
use streambus_testkit::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request as WsRequest;

/// The token the tests configure (long enough for `validate`).
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A unique stream name for one test.
pub fn stream(label: &str) -> String {
    format!("{}{label}", streambus_testkit::unique_prefix(label))
}

/// A config with the test token and these streams.
pub fn config(streams: &[&str]) -> ServerConfig {
    ServerConfig {
        token: Some(TOKEN.into()),
        streams: streams.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A state on `redis` with `config` (token set unless the config says otherwise).
pub async fn state(redis: &RedisServer, config: ServerConfig) -> AppState {
    state_with(Client::open(&redis.url()).unwrap(), config).await
}

/// A state on `client` (a proxy, a cluster, other timeouts) with `config`.
pub async fn state_with(client: Client, config: ServerConfig) -> AppState {
    config.validate().expect("valid test config");
    AppState::new(config, client).await.unwrap()
}

/// A real server on `redis` with `config`.
pub async fn server(redis: &RedisServer, config: ServerConfig) -> RunningServer {
    RunningServer::start(state(redis, config).await).await
}

/// A producer on `redis`.
pub async fn producer(redis: &RedisServer) -> Producer {
    let client = Client::open(&redis.url()).unwrap();
    Producer::new(&client, ProducerOptions::default())
        .await
        .unwrap()
}

/// Publishes `n` JSON envelopes `{"n": i, "pad": ...}` in pipelined batches.
pub async fn publish_n(p: &Producer, stream: &str, n: usize, pad: usize) -> Vec<EntryId> {
    let padding = "x".repeat(pad);
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
        let msgs = chunk
            .iter()
            .map(|i| Message::json(&serde_json::json!({"n": i, "pad": padding})).unwrap());
        ids.extend(p.publish_batch(stream, msgs).await.unwrap());
    }
    ids
}

/// Delivers `count` new entries of `stream` to `consumer` of `group`, which
/// leaves them pending (never acknowledged).
pub fn deliver(redis: &RedisServer, stream: &str, group: &str, consumer: &str, count: usize) {
    redis.cli(&[
        "XREADGROUP",
        "GROUP",
        group,
        consumer,
        "COUNT",
        &count.to_string(),
        "STREAMS",
        stream,
        ">",
    ]);
}

/// A stream with group `g`: consumer `c1` holding 2 pending entries, 3 undelivered.
pub async fn group_fixture(redis: &RedisServer, s: &str) {
    publish_n(&producer(redis).await, s, 5, 0).await;
    redis.cli(&["XGROUP", "CREATE", s, "g", "0"]);
    deliver(redis, s, "g", "c1", 2);
}

/// The fields of a dead letter that tests choose; [`dead_letter`] adds the rest.
pub struct DeadLetter<'a> {
    pub data: &'a str,
    pub reason: &'a str,
    pub group: &'a str,
    pub consumer: &'a str,
}

impl Default for DeadLetter<'_> {
    fn default() -> Self {
        DeadLetter {
            data: "{\"n\":1}",
            reason: "handler failed",
            group: "g",
            consumer: "c1",
        }
    }
}

/// Adds a dead letter of `source` (5 deliveries, source id 1-1) to its
/// dead-letter stream, with the fields a worker writes.
pub fn dead_letter(redis: &RedisServer, source: &str, d: &DeadLetter) {
    redis.cli(&[
        "XADD",
        &streambus::keys::dead_letter(source),
        "*",
        "data",
        d.data,
        "reason",
        d.reason,
        "group",
        d.group,
        "consumer",
        d.consumer,
        "deliveries",
        "5",
        "source_id",
        "1-1",
        "source_stream",
        source,
    ]);
}

/// A short lease for the tests: a crashed member's partitions are free
/// after 800 ms, and renewals (every 200 ms) are frequent enough that
/// a busy 2-core machine does not lose a lease by accident.
pub fn test_lease() -> LeaseOptions {
    LeaseOptions {
        lease_time: Duration::from_millis(800),
        renew_interval: Duration::from_millis(200),
    }
}

/// A `PartitionedWorker::leased` member of `group`, named `name`, running in
/// a task of this process (its handler acknowledges everything).
pub struct LeasedMember {
    pub stop: CancellationToken,
    pub run: JoinHandle<streambus::Result<WorkerReport>>,
}

impl LeasedMember {
    pub fn start(client: &Client, partitions: &Partitions, group: &str, name: &str) -> Self {
        let worker = PartitionedWorker::new(
            client,
            partitions.clone(),
            group,
            WorkerOptions {
                consumer_name: Some(name.to_owned()),
                block: Duration::from_millis(100),
                ..Default::default()
            },
        )
        .leased(test_lease());
        let stop = CancellationToken::new();
        let run = tokio::spawn(worker.run(|_d: Delivery| async {}, stop.clone()));
        LeasedMember { stop, run }
    }

    /// A crash: the run is dropped mid-flight, so nothing is renewed or
    /// released; its leases and registry entry expire on their own.
    pub fn crash(self) {
        self.run.abort();
    }

    /// A graceful stop: its leases are released at once.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.run)
            .await
            .expect("the member stops")
            .unwrap()
            .unwrap();
    }
}

/// A real server on a free port of 127.0.0.1.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<std::io::Result<()>>>,
}

impl RunningServer {
    pub async fn start(state: AppState) -> RunningServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state.clone(), async move {
            // Err: the test dropped the sender, which also means stop.
            let _ = stopped.await;
        }));
        RunningServer {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A WebSocket request for `/ws?{query}`, with the test token as a header.
    pub fn ws_request(&self, query: &str) -> WsRequest {
        let mut req = format!("ws://{}/ws?{query}", self.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        req
    }

    /// A minimal authorized HTTP/1.1 GET over a raw socket (no HTTP client
    /// dependency): the whole response, head and body, as text.
    pub async fn raw_get(&self, path: &str) -> String {
        let mut sock = TcpStream::connect(self.addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        sock.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Signals shutdown and waits for `serve` to return.
    pub async fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            // Err: `serve` already returned, so there is nothing to stop.
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("serve returns after shutdown")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
