//! Connections by role.
//!
//! A [`Client`] knows where Redis is (one server, or a cluster) and hands out
//! [`Connection`]s:
//!
//! - [`Client::connect`]: the shared connection for XADD, XACK, XCLAIM, XINFO.
//!   Multiplexed and cheap to clone; reconnects by itself after a failure (the
//!   command in flight then fails with a retryable error).
//! - [`Client::connect_blocking`]: a connection of its own for one blocking reader.
//!   A blocking `XREADGROUP ... BLOCK` holds its connection, so every other command
//!   on it would wait behind the read; and its response timeout must exceed BLOCK.
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
//!
//! The rest of the library is written against [`Connection`], which implements
//! `redis::aio::ConnectionLike` for a single server, a cluster, and a primary
//! found through Redis Sentinel.
//!
//! # Layout
//!
//! - this file: [`ConnectOptions`], [`Client`] (URL forms, dialing), [`mask_password`];
//! - `tls`: [`TlsOptions`] (certificates, and their settings in a URL's query);
//! - `sentinel`: `redis+sentinel://` URLs, finding the primary, and the
//!   listener for failover announcements that retires sockets on the old primary;
//! - `socket`: [`Connection`], the socket shared by clones, retired after a failure.

mod sentinel;
mod socket;
mod tls;

pub(crate) use socket::not_sent;
pub use socket::Connection;
use socket::Inner;
pub use tls::TlsOptions;

use std::sync::Arc;
use std::time::Duration;

use redis::cluster::ClusterClientBuilder;
use redis::io::tcp::TcpSettings;

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

/// Where Redis is: a single server (`redis://`, `rediss://`), a cluster
/// (`redis+cluster://host1:port1,host2:port2`, `rediss+cluster://...`), or the
/// primary of a master name watched by Redis Sentinel
/// (`redis+sentinel://s1:26379,s2:26379/MASTER_NAME`, `rediss+sentinel://...`).
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
    /// Shared by the clones: they share one listener for failover announcements.
    Sentinel(Arc<sentinel::Sentinel>),
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
    /// (or `rediss+cluster://` for TLS), and for Redis Sentinel
    /// `redis+sentinel://[user:password@]host1[:port1],host2[:port2]/MASTER_NAME[?db=N]`
    /// (or `rediss+sentinel://`, where sentinels and Redis both speak TLS). The
    /// user and password are Redis's; the sentinels' own, if they need any, go
    /// in the query: `sentinel_username=...&sentinel_password=...`. A sentinel
    /// given without a port is on 26379.
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
                format!("TLS settings were given for {display:?}, which is not a TLS URL: use rediss:// (or rediss+cluster://, rediss+sentinel://)"),
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
                format!("invalid Redis URL {display:?}: {why} (expected redis://[user:password@]host:port, rediss:// for TLS, redis+cluster://host1:port1,host2:port2, or redis+sentinel://host1:port1,host2:port2/MASTER_NAME)"),
            )
        };
        if tls {
            install_crypto_provider();
        }
        let sentinel = url
            .strip_prefix("redis+sentinel://")
            .map(|r| (false, r))
            .or_else(|| url.strip_prefix("rediss+sentinel://").map(|r| (true, r)));
        let target = if let Some((tls, rest)) = sentinel {
            let s = sentinel::Sentinel::parse(tls, rest, &options).map_err(bad)?;
            Target::Sentinel(Arc::new(s))
        } else if let Some(rest) = url
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

    /// Whether this client finds its primary through Redis Sentinel.
    pub fn is_sentinel(&self) -> bool {
        matches!(self.target, Target::Sentinel(_))
    }

    /// The database number of a single-server or Sentinel URL.
    fn single_db(&self) -> Option<i64> {
        match &self.target {
            Target::Single(c) => Some(c.get_connection_info().redis_settings().db()),
            Target::Sentinel(s) => Some(s.db()),
            Target::Cluster(_) => None,
        }
    }

    /// For a Sentinel target, how many new primaries the sentinels have
    /// announced so far: a socket dialed under an older count is retired.
    fn switches(&self) -> Option<u64> {
        match &self.target {
            Target::Sentinel(s) => Some(s.switches()),
            _ => None,
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
        let mut conn = Connection::new(self.clone(), response_timeout);
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
            // Each sentinel asked, and the primary connected and checked, are
            // under their own timeouts; this bounds the asking again too.
            Target::Sentinel(s) => tokio::time::timeout(
                (connect_timeout + response_timeout) * 3,
                s.dial(&self.options, response_timeout),
            )
            .await
            .map(|r| r.map(Inner::Single)),
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

/// rustls needs exactly one process-wide crypto provider; redis-rs picks none.
fn install_crypto_provider() {
    // Err means a provider is installed already (by us or by the application),
    // which is what we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Replaces the password of a URL (`scheme://user:password@host`) with `***`.
pub fn mask_password(url: &str) -> String {
    // The query first: a sentinel password may hold an '@'.
    let url = &mask_query_password(url);
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

/// Replaces the value of a `sentinel_password=` query parameter with `***`.
fn mask_query_password(url: &str) -> String {
    const KEY: &str = "sentinel_password=";
    let Some(q) = url.find('?') else {
        return url.to_owned();
    };
    let mut out = url[..=q].to_owned();
    let (query, fragment) = match url[q + 1..].split_once('#') {
        Some((query, f)) => (query, Some(f)),
        None => (&url[q + 1..], None),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|p| match p.strip_prefix(KEY) {
            Some(_) => format!("{KEY}***"),
            None => p.to_owned(),
        })
        .collect();
    out.push_str(&pairs.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

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
        assert_eq!(
            mask_password("redis+sentinel://u:p@s1,s2/m?db=1&sentinel_password=a@b&x=1"),
            "redis+sentinel://u:***@s1,s2/m?db=1&sentinel_password=***&x=1"
        );
        assert_eq!(
            mask_password("redis+sentinel://s1/m?sentinel_password=pw"),
            "redis+sentinel://s1/m?sentinel_password=***"
        );
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
    fn sentinel_urls() {
        let c =
            Client::open("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster?db=3").unwrap();
        assert!(c.is_sentinel() && !c.is_cluster());
        assert_eq!(c.single_db(), Some(3));
        for bad in ["redis+sentinel://h:1", "redis+sentinel://h:1/m?nope=1"] {
            let e = Client::open(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad}");
            assert!(e.to_string().contains("redis+sentinel://"), "{e}");
        }
    }

    #[test]
    fn cluster_urls() {
        let c = Client::open("redis+cluster://127.0.0.1:7000,127.0.0.1:7001").unwrap();
        assert!(c.is_cluster());
        assert!(!Client::open("redis://127.0.0.1").unwrap().is_cluster());
    }
}
