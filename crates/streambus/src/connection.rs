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
//! The rest of the library is written against [`Connection`], which implements
//! `redis::aio::ConnectionLike` for both a single server and a cluster.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::error::{Error, ErrorKind, Result};

/// How connections are made and how long they wait.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Time allowed to open a TCP (and TLS) connection and authenticate.
    pub connect_timeout: Duration,
    /// Time allowed for a reply to an ordinary command. Blocking readers add their
    /// BLOCK time to this.
    pub response_timeout: Duration,
    /// Certificates for `rediss://` (TLS) URLs.
    pub tls: TlsOptions,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
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
            let v = percent_decode(v);
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

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            if let Ok(n) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(n);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
                .response_timeout(options.response_timeout);
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
            Target::Single(client.map_err(|e| bad(e.to_string()))?)
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

    /// Opens the shared, multiplexed connection and checks it with `PING`, so that
    /// a wrong address or password is reported here rather than at first use.
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
        let context = || format!("cannot connect to Redis at {}", self.display);
        let mut conn = match &self.target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.options.connect_timeout))
                    .set_response_timeout(Some(response_timeout))
                    // Reconnect attempts per failure; callers (the worker) retry
                    // with their own backoff on top, so keep this short.
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(1));
                let manager = tokio::time::timeout(
                    self.options.connect_timeout * 2,
                    ConnectionManager::new_with_config(client.clone(), config),
                )
                .await
                .map_err(|_| Error::new(ErrorKind::Timeout, format!("{}: timed out", context())))?
                .map_err(|e| Error::redis(context(), e))?;
                Connection(Inner::Single(manager))
            }
            Target::Cluster(client) => {
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(self.options.connect_timeout)
                    .set_response_timeout(response_timeout);
                let c = tokio::time::timeout(
                    self.options.connect_timeout * 2,
                    client.get_async_connection_with_config(config),
                )
                .await
                .map_err(|_| Error::new(ErrorKind::Timeout, format!("{}: timed out", context())))?
                .map_err(|e| Error::redis(context(), e))?;
                Connection(Inner::Cluster(c))
            }
        };
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| Error::redis(context(), e))?;
        Ok(conn)
    }
}

/// A connection to Redis (single server or cluster), cheap to clone; clones share
/// one multiplexed socket per server.
#[derive(Clone)]
pub struct Connection(Inner);

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Inner::Single(_) => "Connection(single)",
            Inner::Cluster(_) => "Connection(cluster)",
        })
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
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
        match &mut self.0 {
            Inner::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Inner::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Inner::Single(c) => c.get_db(),
            Inner::Cluster(c) => c.get_db(),
        }
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
