//! Connections by role.
//!
//! A [`Client`] knows where Redis is (one server, or a cluster) and hands out
//! [`Connection`]s:
//!
//! - [`Client::connect`]: the shared connection for XADD, XACK, XCLAIM, XINFO.
//!   Multiplexed and cheap to clone; reconnects by itself after a failure (the
//!   command in flight then fails with a retryable error).
//!
//! **A failed socket is never reused.** A request that gets no reply within the
//! response timeout, or whose socket is reset or closed, retires the socket, and
//! the next request dials a new one. This matters most for the silent faults (an
//! expired NAT entry, a paused VM, a failover behind one address): the socket
//! stays open but nothing comes back, and redis-rs alone would keep sending on it
//! (its `ConnectionManager` reconnects only when the socket is closed). A socket
//! idle for a while is checked with `PING` before the next request, and TCP
//! keepalive is on, so that a write is not sent into a dead socket where its
//! outcome would be unknown.
//! - [`Client::connect_blocking`]: a connection of its own for one blocking reader.
//!   A blocking `XREADGROUP ... BLOCK` holds its connection, so every other command
//!   on it would wait behind the read; and its response timeout must exceed BLOCK.
//!
//! The rest of the library is written against [`Connection`], which implements
//! `redis::aio::ConnectionLike` for both a single server and a cluster.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::error::{Error, ErrorKind, Result};

/// How connections are made, how long they wait, and how a dead one is noticed.
///
/// The defaults are chosen so that every long-running component is working again
/// within 10 s of the network healing (see the README's "Faults" section): a
/// request on a connection that went silent fails after `response_timeout`
/// (3 s), its connection is retired, and the next request dials a new one
/// within `connect_timeout` (3 s).
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Time allowed to open a TCP (and TLS) connection and authenticate.
    /// Default 3 s.
    pub connect_timeout: Duration,
    /// Time allowed for a reply to an ordinary command. Blocking readers add their
    /// BLOCK time to this. A request that gets no reply in time retires its
    /// connection: its later replies could no longer be matched to requests.
    /// Default 3 s.
    pub response_timeout: Duration,
    /// A connection unused for this long is checked with a `PING` (which gets
    /// `response_timeout`) before the next request goes out on it, so that a
    /// connection that died while idle (an expired NAT or load-balancer entry) is
    /// replaced before a write is sent into the void, where its outcome would be
    /// unknown. `None` turns the check off. Default 5 s.
    pub health_check_after_idle: Option<Duration>,
    /// TCP keepalive: the kernel probes an idle socket after this long, and gives
    /// up on it after three unanswered probes at this interval. `None` leaves the
    /// system's setting (usually off). Default 10 s.
    pub tcp_keepalive: Option<Duration>,
    /// Certificates for `rediss://` (TLS) URLs.
    pub tls: TlsOptions,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(3),
            response_timeout: Duration::from_secs(3),
            health_check_after_idle: Some(Duration::from_secs(5)),
            tcp_keepalive: Some(Duration::from_secs(10)),
            tls: TlsOptions::default(),
        }
    }
}

/// TLS settings for `rediss://` URLs. Certificate verification is on by default,
/// against the system's trusted roots unless `ca_file` is given.
///
/// The same settings can be given in the URL's query:
/// `rediss://host:6380/?ca=/etc/redis/ca.crt&cert=client.crt&key=client.key`.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// PEM file with the CA certificate(s) that signed the server's certificate,
    /// used instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that require one (mutual TLS).
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// **For tests only.** Accepts any server certificate: anyone on the network
    /// path can then read and change the traffic, passwords included. A warning is
    /// logged at every connection.
    pub insecure_skip_verify: bool,
}

impl TlsOptions {
    fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.client_cert_file.is_some() || self.client_key_file.is_some()
    }

    /// Reads the certificate files into what redis-rs takes.
    fn certificates(&self) -> Result<redis::TlsCertificates> {
        fn read(what: &str, path: &Path) -> Result<Vec<u8>> {
            std::fs::read(path).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("cannot read the TLS {what} file {}: {e}", path.display()),
                )
            })
        }
        let client_tls =
            match (&self.client_cert_file, &self.client_key_file) {
                (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                    client_cert: read("client certificate", cert)?,
                    client_key: read("client key", key)?,
                }),
                (None, None) => None,
                _ => return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "a TLS client certificate needs its key, and a key its certificate: give both",
                )),
            };
        let root_cert = match &self.ca_file {
            Some(ca) => Some(read("CA certificate", ca)?),
            None => None,
        };
        Ok(redis::TlsCertificates {
            client_tls,
            root_cert,
        })
    }

    /// Takes `ca`, `cert`, `key` and `insecure` out of a URL's query, for the
    /// fields not already set.
    fn take_from_url(&mut self, url: &str) -> String {
        let Some((base, query)) = url.split_once('?') else {
            return url.to_owned();
        };
        let (query, fragment) = match query.split_once('#') {
            Some((q, f)) => (q, Some(f)),
            None => (query, None),
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = crate::config::percent_decode(v);
            match k {
                "ca" => self.ca_file = self.ca_file.take().or(Some(v.into())),
                "cert" => self.client_cert_file = self.client_cert_file.take().or(Some(v.into())),
                "key" => self.client_key_file = self.client_key_file.take().or(Some(v.into())),
                "insecure" => self.insecure_skip_verify |= v.is_empty() || v == "true" || v == "1",
                _ => kept.push(pair),
            }
        }
        let mut out = base.to_owned();
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
        if let Some(f) = fragment {
            out.push('#');
            out.push_str(f);
        }
        out
    }
}

/// Where Redis is: a single server (`redis://`, `rediss://`) or a cluster
/// (`redis+cluster://host1:port1,host2:port2`, `rediss+cluster://...`).
#[derive(Clone)]
pub struct Client {
    target: Target,
    /// The URL with its password masked, for messages and logs.
    display: String,
    options: ConnectOptions,
}

/// The clients differ a lot in size; a `Client` is made once per process, so
/// the padding costs nothing worth a box.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
enum Target {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.display)
            .finish()
    }
}

impl Client {
    /// Parses a Redis URL. Nothing is connected yet.
    ///
    /// Accepted forms: `redis://[user:password@]host[:port][/db]`,
    /// `rediss://...` (TLS), `redis+unix:///path`, and for Redis Cluster
    /// `redis+cluster://[user:password@]host1:port1,host2:port2`
    /// (or `rediss+cluster://` for TLS).
    pub fn open(url: &str) -> Result<Client> {
        Self::open_with(url, ConnectOptions::default())
    }

    /// Like [`Client::open`], with connection options.
    pub fn open_with(url: &str, mut options: ConnectOptions) -> Result<Client> {
        let display = mask_password(url);
        let url = &options.tls.take_from_url(url.trim());
        let tls = url.starts_with("rediss");
        if !tls && (options.tls.is_set() || options.tls.insecure_skip_verify) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("TLS settings were given for {display:?}, which is not a TLS URL: use rediss:// (or rediss+cluster://)"),
            ));
        }
        if options.tls.insecure_skip_verify {
            let shown = display.as_str();
            tracing::warn!(
                url = shown,
                "TLS certificate verification is OFF (insecure option): for tests only"
            );
        }
        let bad = |why: String| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("invalid Redis URL {display:?}: {why} (expected redis://[user:password@]host:port, rediss:// for TLS, or redis+cluster://host1:port1,host2:port2)"),
            )
        };
        if tls {
            install_crypto_provider();
        }
        let target = if let Some(rest) = url
            .strip_prefix("redis+cluster://")
            .map(|r| ("redis", r))
            .or_else(|| url.strip_prefix("rediss+cluster://").map(|r| ("rediss", r)))
        {
            let (scheme, rest) = rest;
            let (auth, hosts) = match rest.rfind('@') {
                Some(at) => (&rest[..=at], &rest[at + 1..]),
                None => ("", rest),
            };
            let hosts = hosts.trim_end_matches('/');
            if hosts.is_empty() {
                return Err(bad("no cluster nodes given".into()));
            }
            let nodes: Vec<String> = hosts
                .split(',')
                .map(|h| format!("{scheme}://{auth}{}", h.trim()))
                .collect();
            for n in &nodes {
                redis::parse_redis_url(n)
                    .ok_or_else(|| bad(format!("bad node {:?}", mask_password(n))))?;
            }
            let mut builder = ClusterClientBuilder::new(nodes)
                .connection_timeout(options.connect_timeout)
                .response_timeout(options.response_timeout)
                .tcp_settings(tcp_settings(&options, TcpSettings::default()));
            if options.tls.is_set() {
                builder = builder.certs(options.tls.certificates()?);
            }
            if options.tls.insecure_skip_verify {
                builder = builder.tls(redis::TlsMode::Insecure);
            }
            let client = builder.build().map_err(|e| bad(e.to_string()))?;
            Target::Cluster(client)
        } else {
            if !url.contains("://") {
                return Err(bad("missing scheme".into()));
            }
            if redis::parse_redis_url(url.split('#').next().unwrap_or(url)).is_none() {
                return Err(bad("not a redis://, rediss:// or redis+unix:// URL".into()));
            }
            let url = if options.tls.insecure_skip_verify && !url.contains('#') {
                format!("{url}#insecure")
            } else {
                url.to_owned()
            };
            let client = if options.tls.is_set() {
                redis::Client::build_with_tls(url.as_str(), options.tls.certificates()?)
            } else {
                redis::Client::open(url.as_str())
            };
            let client = client.map_err(|e| bad(e.to_string()))?;
            // Keepalive on every socket (the URL forms cannot say it).
            let info = client.get_connection_info().clone();
            let tcp = tcp_settings(&options, info.tcp_settings().clone());
            let client =
                redis::Client::open(info.set_tcp_settings(tcp)).map_err(|e| bad(e.to_string()))?;
            Target::Single(client)
        };
        Ok(Client {
            target,
            display,
            options,
        })
    }

    /// The URL with its password replaced by `***`: safe to print and log.
    pub fn display_url(&self) -> &str {
        &self.display
    }

    /// Whether this client talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// The connection options in use.
    pub fn options(&self) -> &ConnectOptions {
        &self.options
    }

    /// The database number of a single-server URL.
    fn single_db(&self) -> Option<i64> {
        match &self.target {
            Target::Single(c) => Some(c.get_connection_info().redis_settings().db()),
            Target::Cluster(_) => None,
        }
    }

    /// Opens the shared, multiplexed connection and checks it with `PING`, so that
    /// a wrong address or password is reported here rather than at first use.
    ///
    /// Clones share one socket (per server). When a request on it fails in a way
    /// that leaves the socket unusable (no reply in time, a reset, a closed
    /// connection), the socket is retired and the next request on any clone
    /// dials a new one: the caller decides whether to retry the request.
    pub async fn connect(&self) -> Result<Connection> {
        self.open_connection(self.options.response_timeout).await
    }

    /// Opens a connection of its own for a reader that blocks up to `block`: its
    /// response timeout is `block` plus the normal response timeout.
    pub async fn connect_blocking(&self, block: Duration) -> Result<Connection> {
        self.open_connection(block + self.options.response_timeout)
            .await
    }

    async fn open_connection(&self, response_timeout: Duration) -> Result<Connection> {
        let shared = Arc::new(Shared {
            client: self.clone(),
            response_timeout,
            generation: AtomicU64::new(0),
            current: std::sync::Mutex::new(None),
            dial: tokio::sync::Mutex::new(None),
            epoch: Instant::now(),
            last_reply_ms: AtomicU64::new(0),
            dialed: AtomicU64::new(0),
        });
        let mut conn = Connection {
            shared,
            cached: None,
        };
        let context = || format!("cannot connect to Redis at {}", self.display);
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| Error::redis(context(), e))?;
        Ok(conn)
    }

    /// Dials one new socket (or cluster connection). Its I/O errors come back
    /// as `ConnectionRefused` (see [`not_sent`]), with what the socket said, so
    /// that a caller can tell that nothing of its request went out.
    async fn dial(&self, response_timeout: Duration) -> redis::RedisResult<Inner> {
        let connect_timeout = self.options.connect_timeout;
        let dialed = match &self.target {
            Target::Single(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(response_timeout));
                // The connect timeout covers TCP and TLS; AUTH and SELECT are
                // requests, under the response timeout. One bound for the whole.
                tokio::time::timeout(
                    connect_timeout + response_timeout,
                    client.get_multiplexed_async_connection_with_config(&config),
                )
                .await
                .map(|r| r.map(Inner::Single))
            }
            Target::Cluster(client) => {
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(connect_timeout)
                    .set_response_timeout(response_timeout);
                tokio::time::timeout(
                    connect_timeout * 2 + response_timeout,
                    client.get_async_connection_with_config(config),
                )
                .await
                .map(|r| r.map(Inner::Cluster))
            }
        };
        let not_connected = |why: String| {
            redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                why,
            ))
        };
        match dialed {
            Err(_) => Err(not_connected(format!(
                "no connection within the connect timeout of {connect_timeout:?}"
            ))),
            // LOADING (a restarted Redis reading its AOF) refuses the handshake:
            // nothing of the caller's was sent either.
            Ok(Err(e))
                if e.is_io_error()
                    || e.is_timeout()
                    || crate::error::classify(&e) == crate::error::ErrorKind::Busy =>
            {
                Err(not_connected(e.to_string()))
            }
            Ok(r) => r,
        }
    }
}

/// Whether a request failed before anything of it was sent: no socket could be
/// dialed for it. Such a request can be retried without any risk of doing it twice.
pub(crate) fn not_sent(e: &redis::RedisError) -> bool {
    // A refusal only ever happens at connect: no request can have gone out.
    e.is_connection_refusal()
}

/// Keepalive on top of the URL's own TCP settings.
fn tcp_settings(options: &ConnectOptions, base: TcpSettings) -> TcpSettings {
    match options.tcp_keepalive {
        Some(every) => base.set_keepalive(
            redis::io::tcp::socket2::TcpKeepalive::new()
                .with_time(every)
                .with_interval(every)
                .with_retries(3),
        ),
        None => base,
    }
}

/// A connection to Redis (single server or cluster), cheap to clone; clones share
/// one multiplexed socket per server, and replace it together when it fails.
///
/// A request that gets no reply within the response timeout, or whose socket is
/// reset or closed, fails with a retryable error (`Timeout` or `Connection`) and
/// retires the socket: it is never used again, because replies on it could be
/// out of step. The next request dials anew. A connection idle for longer than
/// [`ConnectOptions::health_check_after_idle`] is checked with `PING` first.
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
}

#[derive(Clone)]
enum Inner {
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
        let inner = match shared.client.dial(shared.response_timeout).await {
            Ok(inner) => inner,
            Err(e) => {
                *dialing = Some((Instant::now(), e.clone()));
                return Err(e);
            }
        };
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
    fn retire(&mut self, generation: u64, why: &redis::RedisError) {
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
            // A reply came: the socket is fine.
            Err(_) => self.shared.touch(),
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
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.shared.client.single_db().unwrap_or(0)
    }
}

/// rustls needs exactly one process-wide crypto provider; redis-rs picks none.
fn install_crypto_provider() {
    // Err means a provider is installed already (by us or by the application),
    // which is what we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Replaces the password of a URL (`scheme://user:password@host`) with `***`.
pub fn mask_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let after = &url[scheme_end + 3..];
    // The authority ends at the first '/', but a password may contain '/', so look
    // for the last '@' instead.
    let Some(at) = after.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &after[..at];
    let masked = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None if userinfo.is_empty() => String::new(),
        // `redis://password@host` is read by redis-rs as a user name; mask it too.
        None => "***".to_owned(),
    };
    format!("{}{}@{}", &url[..scheme_end + 3], masked, &after[at + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_password("redis://bob:s3cret@host:6379/0"),
            "redis://bob:***@host:6379/0"
        );
        assert_eq!(mask_password("redis://:pw@h"), "redis://:***@h");
        assert_eq!(mask_password("redis://h:1"), "redis://h:1");
        assert_eq!(mask_password("rediss://u:p/w@x@h"), "rediss://u:***@h");
    }

    #[test]
    fn bad_urls_are_invalid_input() {
        for bad in ["localhost:6379", "http://x", "redis+cluster://", ""] {
            let e = Client::open(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad}");
            assert!(e.to_string().contains("expected redis://"), "{e}");
        }
        let e = Client::open("redis://u:hunter2@:::").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn tls_settings_in_the_url() {
        let mut tls = TlsOptions::default();
        let url = tls.take_from_url(
            "rediss://u:p@h:6380/0?ca=/etc/ca%20dir/ca.crt&cert=c.crt&key=c.key&foo=1#x",
        );
        assert_eq!(url, "rediss://u:p@h:6380/0?foo=1#x");
        assert_eq!(
            tls.ca_file.as_deref(),
            Some(Path::new("/etc/ca dir/ca.crt"))
        );
        assert_eq!(tls.client_cert_file.as_deref(), Some(Path::new("c.crt")));
        assert_eq!(tls.client_key_file.as_deref(), Some(Path::new("c.key")));
        assert!(!tls.insecure_skip_verify);
        let mut tls = TlsOptions::default();
        assert_eq!(tls.take_from_url("rediss://h?insecure"), "rediss://h");
        assert!(tls.insecure_skip_verify);
    }

    #[test]
    fn tls_settings_need_a_tls_url_and_readable_files() {
        let opts = |ca: &str| ConnectOptions {
            tls: TlsOptions {
                ca_file: Some(ca.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let e = Client::open_with("redis://h:1", opts("/nonexistent/ca.crt")).unwrap_err();
        assert!(e.to_string().contains("not a TLS URL"), "{e}");
        let e = Client::open_with("rediss://h:1", opts("/nonexistent/ca.crt")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("/nonexistent/ca.crt"), "{e}");
        let e = Client::open("rediss://h:1?cert=a.crt").unwrap_err();
        assert!(e.to_string().contains("give both"), "{e}");
    }

    #[test]
    fn cluster_urls() {
        let c = Client::open("redis+cluster://127.0.0.1:7000,127.0.0.1:7001").unwrap();
        assert!(c.is_cluster());
        assert!(!Client::open("redis://127.0.0.1").unwrap().is_cluster());
    }
}
