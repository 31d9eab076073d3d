//! The socket that clones of a [`Connection`] share, and its replacement after
//! a failure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::Client;

/// Whether a request failed before anything of it was sent: no socket could be
/// dialed for it. Such a request can be retried without any risk of doing it twice.
pub(crate) fn not_sent(e: &redis::RedisError) -> bool {
    // A refusal only ever happens at connect: no request can have gone out.
    e.is_connection_refusal()
}

/// A connection to Redis (single server, cluster, or the primary found through
/// Sentinel), cheap to clone; clones share one multiplexed socket per server,
/// and replace it together when it fails.
///
/// A request that gets no reply within the response timeout, or whose socket is
/// reset or closed, fails with a retryable error (`Timeout` or `Connection`) and
/// retires the socket: it is never used again, because replies on it could be
/// out of step. The next request dials anew. A connection idle for longer than
/// [`ConnectOptions::health_check_after_idle`](super::ConnectOptions::health_check_after_idle) is checked with `PING` first.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
    /// This clone's copy of the current socket's handle, and its generation:
    /// while the generation is current, a request costs no lock.
    cached: Option<(u64, Inner)>,
}

struct Shared {
    client: Client,
    /// Includes the BLOCK time for a blocking reader's connection.
    response_timeout: Duration,
    /// Bumped when the current socket is retired; a cached handle of an older
    /// generation is never used.
    generation: AtomicU64,
    /// The live socket, if one is dialed, with its generation.
    current: std::sync::Mutex<Option<(u64, Inner)>>,
    /// One dial at a time: requests that find no socket wait for it. Holds the
    /// last failed dial, which the requests that waited for it share.
    dial: tokio::sync::Mutex<Option<(Instant, redis::RedisError)>>,
    epoch: Instant,
    /// When a reply last arrived, in ms since `epoch` (for the idle check).
    last_reply_ms: AtomicU64,
    /// Sockets dialed so far; every one after the first is a reconnect.
    dialed: AtomicU64,
    /// Sentinel only: how many new primaries the sentinels had announced
    /// when the current socket was dialed (see [`Client::switches`]).
    switches: AtomicU64,
}

#[derive(Clone)]
pub(super) enum Inner {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.shared.client.display)
            .field("cluster", &self.shared.client.is_cluster())
            .field("reconnects", &self.reconnects())
            .finish()
    }
}

impl Connection {
    /// A connection of `client` with no socket yet: the first request dials.
    pub(super) fn new(client: Client, response_timeout: Duration) -> Connection {
        Connection {
            shared: Arc::new(Shared {
                client,
                response_timeout,
                generation: AtomicU64::new(0),
                current: std::sync::Mutex::new(None),
                dial: tokio::sync::Mutex::new(None),
                epoch: Instant::now(),
                last_reply_ms: AtomicU64::new(0),
                dialed: AtomicU64::new(0),
                switches: AtomicU64::new(0),
            }),
            cached: None,
        }
    }

    /// How many times this connection (and its clones) replaced a failed socket.
    pub fn reconnects(&self) -> u64 {
        self.shared.dialed.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// Whether a socket is open now; false after one failed until the next
    /// request dials again.
    pub fn is_connected(&self) -> bool {
        lock(&self.shared.current).is_some()
    }

    /// The handle of the current socket, dialing one if there is none.
    async fn handle(&mut self) -> redis::RedisResult<(u64, Inner)> {
        let shared = &self.shared;
        let generation = shared.generation.load(Ordering::Acquire);
        if let Some((g, inner)) = &self.cached {
            if *g == generation {
                return Ok((*g, inner.clone()));
            }
        }
        if let Some(current) = lock(&shared.current).clone() {
            self.cached = Some(current.clone());
            return Ok(current);
        }
        let waited_since = Instant::now();
        let mut dialing = shared.dial.lock().await;
        // Another request may have dialed while this one waited...
        if let Some(current) = lock(&shared.current).clone() {
            self.cached = Some(current.clone());
            return Ok(current);
        }
        // ... or failed to: then this one fails too, at once, rather than each
        // waiter taking its own connect timeout in turn.
        if let Some((at, e)) = &*dialing {
            if *at >= waited_since {
                return Err(e.clone());
            }
        }
        // Read before the sentinels are asked: a switch announced meanwhile
        // costs one more dial, never a socket kept on the old primary.
        let switches = shared.client.switches().unwrap_or(0);
        let inner = match shared.client.dial(shared.response_timeout).await {
            Ok(inner) => inner,
            Err(e) => {
                *dialing = Some((Instant::now(), e.clone()));
                return Err(e);
            }
        };
        shared.switches.store(switches, Ordering::Release);
        let n = shared.dialed.fetch_add(1, Ordering::Relaxed);
        if n > 0 {
            metrics::counter!(crate::metrics::RECONNECTS).increment(1);
            tracing::info!(
                url = shared.client.display.as_str(),
                reconnects = n,
                "reconnected to Redis"
            );
        }
        let current = (shared.generation.load(Ordering::Acquire), inner);
        *lock(&shared.current) = Some(current.clone());
        self.cached = Some(current.clone());
        shared.touch();
        Ok(current)
    }

    /// Retires the socket of `generation` (if it is still the current one).
    fn retire(&mut self, generation: u64, why: &dyn std::fmt::Display) {
        self.cached = None;
        let shared = &self.shared;
        let mut current = lock(&shared.current);
        if matches!(&*current, Some((g, _)) if *g == generation) {
            *current = None;
            shared.generation.fetch_add(1, Ordering::AcqRel);
            drop(current);
            // Info, not a warning: the caller that sees the failure decides
            // what it means and says so (and a reset storm would flood).
            tracing::info!(
                url = shared.client.display.as_str(),
                error = %why,
                "connection to Redis retired; the next request dials a new one"
            );
        }
    }

    /// The socket for the next request: the current one, checked with `PING`
    /// when it sat idle, else a new one.
    async fn ready(&mut self) -> redis::RedisResult<(u64, Inner)> {
        let (generation, mut inner) = self.handle().await?;
        if let Some(switches) = self.shared.client.switches() {
            if switches != self.shared.switches.load(Ordering::Acquire) {
                // A sentinel announced a new primary: this socket may be on
                // the old one, which takes writes that a resync will discard.
                // The request fails as not sent (the caller retries it on a
                // new socket) rather than going quietly to the new primary:
                // what was acknowledged on the old one since the replica left
                // it is gone, and a caller that resynchronizes after a lost
                // connection (a consumer re-reading its pending entries) must
                // do so now too.
                let why = "a sentinel announced a new primary; the request was not sent";
                self.retire(generation, &why);
                return Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    why,
                )));
            }
        }
        let Some(idle) = self.shared.client.options.health_check_after_idle else {
            return Ok((generation, inner));
        };
        if self.shared.idle_for() < idle {
            return Ok((generation, inner));
        }
        match inner.req_packed_command(&redis::cmd("PING")).await {
            Ok(_) => {
                self.shared.touch();
                Ok((generation, inner))
            }
            Err(e) if poisons(&e) => {
                // Nothing of the caller's was sent: dial once more for it.
                self.retire(generation, &e);
                self.handle().await
            }
            Err(_) => Ok((generation, inner)),
        }
    }

    fn after(&mut self, generation: u64, result: &redis::RedisResult<impl Sized>) {
        match result {
            Ok(_) => self.shared.touch(),
            Err(e) if poisons(e) => self.retire(generation, e),
            // Through Sentinel, a server that says it is not a writable
            // primary is left: the next request asks the sentinels again.
            Err(e) if self.shared.client.is_sentinel() && super::sentinel::wrong_role(e.code()) => {
                self.shared.touch();
                self.retire(generation, e);
            }
            // A reply came: the socket is fine.
            Err(_) => self.shared.touch(),
        }
    }

    /// A pipeline's replies come back as values, errors included: through
    /// Sentinel, one that says the server is not a writable primary retires
    /// the socket, as a single command's error would.
    fn after_replies(&mut self, generation: u64, replies: &[Value]) {
        if !self.shared.client.is_sentinel() {
            return;
        }
        let refusal = replies.iter().find_map(|r| match r {
            Value::ServerError(e) if super::sentinel::wrong_role(Some(e.code())) => Some(e),
            _ => None,
        });
        if let Some(e) = refusal {
            let why = format!("{} {}", e.code(), e.details().unwrap_or_default());
            self.retire(generation, &why);
        }
    }
}

impl Shared {
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_reply_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_reply_ms.load(Ordering::Relaxed)))
    }
}

/// Whether an error leaves its socket unusable: no reply in time (a late reply
/// would answer the next request), or the socket failed. A reply from the
/// server, even an error reply, leaves it fine.
fn poisons(e: &redis::RedisError) -> bool {
    e.is_timeout()
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || matches!(e.kind(), redis::ErrorKind::Parse)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding it cannot leave the slot half-written.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConnectionLike for Inner {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Inner::Single(c) => c.req_packed_command(cmd),
            Inner::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Inner::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Inner::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Inner::Single(c) => c.get_db(),
            Inner::Cluster(c) => c.get_db(),
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut inner) = self.ready().await?;
            let result = inner.req_packed_command(cmd).await;
            self.after(generation, &result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut inner) = self.ready().await?;
            let result = inner.req_packed_commands(pipeline, offset, count).await;
            self.after(generation, &result);
            if let Ok(replies) = &result {
                self.after_replies(generation, replies);
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.shared.client.single_db().unwrap_or(0)
    }
}
