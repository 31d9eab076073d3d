//! [`ServerConfig`]: where the service listens, who may use it, and every bound.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use streambus::admin::monitor::MonitorOptions;
use streambus::admin::scaler::AdvisorConfig;
use streambus::admin::scaler::{DEFAULT_SCALE_IN, DEFAULT_SCALE_OUT};

/// How the service runs. Build it with `..Default::default()` and check it with
/// [`ServerConfig::validate`] before binding.
///
/// Not `#[non_exhaustive]`, so that callers can write
/// `ServerConfig { token: Some(t), ..Default::default() }`.
#[derive(Clone)]
pub struct ServerConfig {
    /// The address to listen on. [`serve`](crate::serve) takes a bound listener;
    /// this is what [`validate`](ServerConfig::validate) checks and what the CLI
    /// binds.
    pub listen: SocketAddr,
    /// The bearer token every route but `/healthz` and the dashboard's static
    /// files requires. Required when `listen` is not a loopback address: the API
    /// can publish events and read every payload.
    pub token: Option<String>,
    /// The streams the service shows and relays. When empty, any stream may be
    /// asked for by name, and `/api/streams` lists the streams found by `SCAN`
    /// (at most [`ServerConfig::max_streams`]).
    pub streams: Vec<String>,
    /// Partitioned streams: logical stream name to its number of partitions
    /// (see `streambus::partition`). Such a stream is shown as one (totals,
    /// with a per-partition breakdown) and relayed from every partition. A
    /// stream not listed here, or listed with 1, is a plain stream.
    pub partitions: HashMap<String, u32>,
    /// Largest request body accepted (a published payload), in bytes; larger
    /// bodies get 413 before they are read into memory.
    pub max_body_bytes: usize,
    /// Per client, how many entries the relay may hold for it before it counts
    /// as too slow and is cut off (the capacity of each stream's broadcast
    /// channel, shared by all its clients: memory is this times the entry size,
    /// per stream, whatever the number of clients).
    pub ws_client_queue: usize,
    /// Most WebSocket clients at once; the next one gets 503. Each holds a
    /// task, a socket and a write buffer.
    pub max_ws_clients: usize,
    /// Largest message a WebSocket client may send us (clients send nothing
    /// useful; this only stops abuse), in bytes.
    pub max_ws_message_bytes: usize,
    /// How long one WebSocket write may take before the client counts as stalled
    /// and is disconnected. A client that stops reading fills its socket buffer;
    /// without this its task would wait forever.
    pub ws_send_timeout: Duration,
    /// Origins (`scheme://host[:port]`) besides the service's own that may open
    /// the WebSocket from a browser. Other browser origins get 403, so that a
    /// page elsewhere cannot ride on a user's token.
    pub allowed_origins: Vec<String>,
    /// How long a relay reader waits in `XREAD BLOCK` before it asks again (and
    /// notices a shutdown).
    pub relay_block: Duration,
    /// Most streams the relay reads at once (one task and one connection each),
    /// when [`ServerConfig::streams`] is empty and clients pick streams.
    pub max_streams: usize,
    /// Time allowed for open WebSockets to close after shutdown begins.
    pub shutdown_grace: Duration,
    /// How long `POST /api/streams/{s}/messages` waits for Redis while it is
    /// unreachable (the producer's `publish_timeout`) before it answers 503.
    /// Short, because an HTTP client waits meanwhile; long enough to ride out
    /// a blip. Default 5 s.
    pub publish_timeout: Duration,
    /// What the monitor calls idle or overloaded (consumer statuses).
    pub monitor: MonitorOptions,
    /// The throughput advisor's rules (`/scale`).
    pub advisor: AdvisorConfig,
    /// How often the service samples every group for the advisor, whatever
    /// the rate of requests (the advisor's rates are over this interval).
    /// Default 1 s.
    pub scale_interval: Duration,
    /// The reference rule's scale-out threshold, percent.
    pub scale_out: f64,
    /// The reference rule's scale-in threshold, percent.
    pub scale_in: f64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
            streams: Vec::new(),
            partitions: HashMap::new(),
            max_body_bytes: 1024 * 1024,
            ws_client_queue: 1024,
            max_ws_clients: 256,
            max_ws_message_bytes: 64 * 1024,
            ws_send_timeout: Duration::from_secs(10),
            allowed_origins: Vec::new(),
            relay_block: Duration::from_secs(2),
            max_streams: 64,
            shutdown_grace: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(5),
            monitor: MonitorOptions::default(),
            advisor: AdvisorConfig::default(),
            scale_interval: Duration::from_secs(1),
            scale_out: DEFAULT_SCALE_OUT,
            scale_in: DEFAULT_SCALE_IN,
        }
    }
}

/// The token is a secret: never print it, not even in `{:?}`.
impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("streams", &self.streams)
            .field("partitions", &self.partitions)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("ws_client_queue", &self.ws_client_queue)
            .field("max_ws_clients", &self.max_ws_clients)
            .field("allowed_origins", &self.allowed_origins)
            .finish_non_exhaustive()
    }
}

/// Why a [`ServerConfig`] was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Shortest token accepted: a short token can be guessed over the network.
pub const MIN_TOKEN_LEN: usize = 16;

impl ServerConfig {
    /// Checks the configuration: a token is required beyond loopback, tokens are
    /// long enough and usable in a WebSocket subprotocol, names and bounds are
    /// valid.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        match &self.token {
            None if !self.listen.ip().is_loopback() => {
                return err(format!(
                    "refusing to listen on {} without a token: anyone who can reach it could read every event and publish; set a token (e.g. --token or STREAMBUS_TOKEN), or listen on 127.0.0.1",
                    self.listen
                ));
            }
            Some(t) if t.len() < MIN_TOKEN_LEN => {
                return err(format!(
                    "the token is too short ({} characters; at least {MIN_TOKEN_LEN}): generate one with e.g. `openssl rand -hex 32`",
                    t.len()
                ));
            }
            Some(t) if !t.bytes().all(is_token_char) => {
                return err("the token may contain only letters, digits and -._~+/= (it travels in an HTTP header and a WebSocket subprotocol)".into());
            }
            _ => {}
        }
        for s in &self.streams {
            streambus::keys::validate_name("stream", s).map_err(|e| ConfigError(e.to_string()))?;
        }
        let max = streambus::partition::MAX_PARTITIONS;
        for (s, &n) in &self.partitions {
            streambus::keys::validate_name("stream", s).map_err(|e| ConfigError(e.to_string()))?;
            if n == 0 || n > max {
                return err(format!(
                    "stream {s:?}: partitions must be between 1 and {max}, got {n}"
                ));
            }
        }
        for o in &self.allowed_origins {
            if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                return err(format!(
                    "allowed origin {o:?} must look like https://host[:port] (scheme, host, optional port, no path)"
                ));
            }
        }
        let positive = [
            ("max_body_bytes", self.max_body_bytes),
            ("ws_client_queue", self.ws_client_queue),
            ("max_ws_clients", self.max_ws_clients),
            ("max_ws_message_bytes", self.max_ws_message_bytes),
            ("max_streams", self.max_streams),
        ];
        for (name, v) in positive {
            if v == 0 {
                return err(format!("{name} must be at least 1"));
            }
        }
        if self.scale_interval.is_zero() {
            return err("scale_interval must be above zero".into());
        }
        streambus::admin::scaler::validate_thresholds(self.scale_out, self.scale_in)
            .map_err(|e| ConfigError(e.to_string()))?;
        Ok(())
    }
}

/// Characters allowed in a token: RFC 6750 `b64token`, which also fit in a
/// `Sec-WebSocket-Protocol` value after `bearer.` (except `/` and `=`, see the
/// dashboard's fallback to `?token=`).
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_public_listen_without_token() {
        let c = ServerConfig {
            listen: "0.0.0.0:8080".parse().unwrap(),
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("without a token"), "{e}");
        let c = ServerConfig {
            token: Some("0123456789abcdef0123".into()),
            ..c
        };
        c.validate().unwrap();
        ServerConfig::default().validate().unwrap();
        let v6 = ServerConfig {
            listen: "[::1]:80".parse().unwrap(),
            ..Default::default()
        };
        v6.validate().unwrap();
    }

    #[test]
    fn refuses_weak_or_odd_tokens() {
        for bad in [
            "short",
            "has space in it 0123456",
            "quote\"0123456789abcdef",
        ] {
            let c = ServerConfig {
                token: Some(bad.into()),
                ..Default::default()
            };
            assert!(c.validate().is_err(), "{bad}");
        }
        let dbg = format!(
            "{:?}",
            ServerConfig {
                token: Some("supersecrettoken123".into()),
                ..Default::default()
            }
        );
        assert!(!dbg.contains("supersecret"), "{dbg}");
    }

    #[test]
    fn refuses_bad_origins_and_zero_bounds() {
        let c = ServerConfig {
            allowed_origins: vec!["example.com".into()],
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let c = ServerConfig {
            ws_client_queue: 0,
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let c = ServerConfig {
            partitions: [("orders".to_owned(), 0)].into(),
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let c = ServerConfig {
            partitions: [("orders".to_owned(), 6)].into(),
            ..Default::default()
        };
        c.validate().unwrap();
    }
}
