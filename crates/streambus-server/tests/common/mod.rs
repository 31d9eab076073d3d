//! Shared by the test binaries: a real Redis, an [`AppState`] on it, a real
//! server on a free port, and polling with deadlines.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use streambus::{Client, EntryId, Message, Producer, ProducerOptions};
use streambus_server::{serve, AppState, ServerConfig};
use streambus_testkit::RedisServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The token the tests configure (long enough for `validate`).
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A unique stream name for one test.
pub fn stream(label: &str) -> String {
    format!("{}{label}", streambus_testkit::unique_prefix(label))
}

/// A state on `redis` with `config` (token set unless the config says otherwise).
pub async fn state(redis: &RedisServer, config: ServerConfig) -> AppState {
    config.validate().expect("valid test config");
    let client = Client::open(&redis.url()).unwrap();
    AppState::new(config, client).await.unwrap()
}

/// A config with the test token and these streams.
pub fn config(streams: &[&str]) -> ServerConfig {
    ServerConfig {
        token: Some(TOKEN.into()),
        streams: streams.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
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

/// Polls `check` until it returns `Some`, or panics with `what` after `limit`
/// ([`streambus_testkit::wait::wait_for_some`], arguments in this file's order).
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    streambus_testkit::wait::wait_for_some(limit, what, check).await
}

/// A real server on a free port of 127.0.0.1.
pub struct RunningServer {
    pub addr: std::net::SocketAddr,
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

    /// Signals shutdown and waits for `serve` to return.
    pub async fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
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
