//! The fault tests' rig: a real redis-server behind the testkit's
//! [`FaultProxy`], and the service reading through the proxy with short
//! timeouts (500 ms), so that a fault is noticed in about a second.
//!
//! With `SERVE_FAULTS_DEFAULT_TIMEOUTS=1` the service runs with the default
//! timeouts instead (3 s connect and response, 2 s BLOCK), and [`bound`] is
//! the documented 10 s.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use streambus::{Client, ConnectOptions, EntryId};
use streambus_server::{AppState, ServerConfig};
use streambus_testkit::{FaultProxy, RedisServer, ServerOptions};

use super::{state_with, stream, RunningServer, TOKEN};

/// Short timeouts, so that a fault is noticed in about a second.
pub const TIMEOUT: Duration = Duration::from_millis(500);

/// The tests' own clients (publisher, checks), and the service unless it runs
/// with the defaults: always short timeouts.
pub fn connect_options() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: TIMEOUT,
        response_timeout: TIMEOUT,
        ..Default::default()
    }
}

/// Whether the service runs with the default timeouts (see the module docs).
fn default_timeouts() -> bool {
    std::env::var_os("SERVE_FAULTS_DEFAULT_TIMEOUTS").is_some()
}

/// The service's connection options.
fn service_options() -> ConnectOptions {
    if default_timeouts() {
        ConnectOptions::default()
    } else {
        connect_options()
    }
}

/// The recovery bound asserted.
///
/// With the short timeouts (see `src/relay/mod.rs`): a read or dial in flight
/// on a dead path fails within 1 s (500 ms BLOCK + 500 ms response timeout,
/// or 500 ms connect + 500 ms handshake), then one backoff of at most 2 s:
/// 3 s, and the tests allow 6 s for a loaded 2-core machine. With the
/// defaults, the documented 10 s.
pub fn bound() -> Duration {
    if default_timeouts() {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(6)
    }
}

/// A [`FaultProxy`] in front of `redis`.
pub async fn proxy(redis: &RedisServer) -> FaultProxy {
    FaultProxy::start(SocketAddr::from((Ipv4Addr::LOCALHOST, redis.port())))
        .await
        .unwrap()
}

/// A Redis, a proxy in front of it, and the service reading through the proxy.
pub struct Rig {
    pub redis: RedisServer,
    pub proxy: FaultProxy,
    pub srv: RunningServer,
    /// The one stream the service serves.
    pub stream: String,
}

impl Rig {
    pub async fn start(label: &str, redis: ServerOptions) -> Rig {
        let redis = RedisServer::start_with(redis);
        let proxy = proxy(&redis).await;
        let s = stream(label);
        let config = ServerConfig {
            token: Some(TOKEN.into()),
            streams: vec![s.clone()],
            relay_block: if default_timeouts() {
                ServerConfig::default().relay_block
            } else {
                TIMEOUT
            },
            publish_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let client = Client::open_with(&proxy.url(), service_options()).unwrap();
        let srv = RunningServer::start(state_with(client, config).await).await;
        Rig {
            redis,
            proxy,
            srv,
            stream: s,
        }
    }

    pub fn state(&self) -> &AppState {
        &self.srv.state
    }

    /// The stream's entry ids, read straight from Redis: the truth.
    pub async fn stream_ids(&self) -> Vec<EntryId> {
        let client = Client::open_with(&self.redis.url(), connect_options()).unwrap();
        let mut conn = client.connect().await.unwrap();
        streambus::read::range_after(&mut conn, &self.stream, None, 1_000_000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect()
    }

    /// The stream's newest id, straight from Redis.
    pub fn newest(&self) -> Option<EntryId> {
        let out = self
            .redis
            .cli(&["XREVRANGE", &self.stream, "+", "-", "COUNT", "1"]);
        out.lines().next().and_then(|l| l.trim().parse().ok())
    }
}
