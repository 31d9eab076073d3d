//! Redis Sentinel: finding the primary, and following it through a failover.
//!
//! A `redis+sentinel://` URL names sentinels and a master name, never the
//! primary's address. Every dial asks a sentinel where the primary is now
//! (`SENTINEL get-master-addr-by-name`), connects there and checks with `ROLE`
//! that it really is a primary: a sentinel's view lags a failover, and a
//! demoted primary still answers on its old address. redis-rs's own sentinel
//! support resolves the primary only when a connection is made and does not
//! follow a failover on open connections (redis-rs#1438), so streambus does
//! the resolution itself; that also keeps every step under its own timeouts.
//!
//! A socket to the primary is retired, and the next request dials (asks the
//! sentinels) anew:
//!
//! - when the socket fails: the primary was killed or cut off (see `socket`);
//! - when a reply says the server is no longer a writable primary (`READONLY`,
//!   `LOADING`, `MASTERDOWN`, `UNBLOCKED`), see [`wrong_role`];
//! - when a sentinel announces a failover of this master. This one matters
//!   most for a planned failover (`SENTINEL FAILOVER`): the old primary is
//!   not told, and keeps accepting writes for about ten seconds (measured
//!   here: 11 s with Redis 7.0) until the sentinels demote it, and every
//!   write in that time is lost when it resyncs from the new primary. The
//!   sentinels name the new primary (`+switch-master`) only about a second
//!   after they promoted it, so streambus also listens for the leader's
//!   `+failover-state-send-slaveof-noone`, sent just before it promotes the
//!   replica it names: from then on, for up to [`PROMOTION_HOLD`], dials go to
//!   that replica and wait until it says it is a primary, instead of to the
//!   old primary that the sentinels still name.
//!
//! While the sentinels still name a primary that is down, or one that says it
//! is a replica, a dial asks again with a short backoff for up to the connect
//! timeout, then fails as "not sent" (nothing of the request went out), so that
//! callers retry as they do for a refused connection.
//! A certificate refused (ours by a sentinel or the primary, or theirs by us)
//! ends the dial at once instead: every attempt would fail the same way.
//!
//! `rediss+sentinel://` speaks TLS, with the same settings, to the sentinels
//! (asking, and the failover listener's pub/sub) and to the primary.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::io::tcp::TcpSettings;
use redis::{RedisConnectionInfo, Value};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::tls::{certificate_refusal, refused_at};
use super::ConnectOptions;

/// The port of a sentinel given without one.
const DEFAULT_SENTINEL_PORT: u16 = 26379;
/// The first pause between two attempts to find the primary within one dial;
/// it doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
const MAX_RETRY_DELAY: Duration = Duration::from_millis(800);
/// The channel on which every sentinel announces a new primary, once it
/// has seen the promotion: `NAME OLD_IP OLD_PORT NEW_IP NEW_PORT`.
const SWITCH_MASTER: &str = "+switch-master";
/// The channel on which the sentinel leading a failover announces the
/// replica it is about to promote: `slave IP:PORT IP PORT @ NAME IP PORT`.
const PROMOTING: &str = "+failover-state-send-slaveof-noone";
/// How long dials follow a replica announced on [`PROMOTING`] before asking
/// the sentinels again. Sentinel promotes it about 0.1 s after announcing it;
/// a failover that aborts holds writes back this long, not for ever.
const PROMOTION_HOLD: Duration = Duration::from_secs(5);
/// The pause before a lost subscription is made again
/// (doubling up to 8 times this): a sentinel restart should not be missed
/// for long, and a sentinel that is down should not be hammered.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(250);

/// Where the sentinels are, which master to follow, and how to reach it.
pub(super) struct Sentinel {
    master_name: String,
    /// One client per sentinel, with the sentinels' credentials and TLS.
    sentinels: Vec<redis::Client>,
    /// `redis` or `rediss`: the primary is reached the way the sentinels are.
    scheme: &'static str,
    /// `#insecure` (no certificate check) for the primary too.
    insecure: bool,
    certs: Option<redis::TlsCertificates>,
    /// The URL's user, password and database, used on the primary.
    redis: RedisConnectionInfo,
    tcp: TcpSettings,
    /// The sentinel that answered last is asked first next time.
    preferred: AtomicUsize,
    /// How many times a sentinel announced a new primary. A socket dialed
    /// under an older count is retired before its next request.
    switches: AtomicU64,
    /// The address last announced, so that the same switch announced by every
    /// sentinel (and before that by the failover's leader) counts once.
    announced: Mutex<Option<String>>,
    /// The replica the failover's leader is promoting, and until when dials
    /// go to it rather than to the address the sentinels still name.
    promoting: Mutex<Option<(String, Instant)>>,
    /// The listener for failover announcements, started by the first dial;
    /// aborted when the last clone of the client is dropped.
    listener: Mutex<Option<AbortOnDropHandle<()>>>,
}

/// A failure that no retry mends: a bad URL part.
fn invalid(why: String) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "sentinel", why))
}

/// A failure to find the primary: nothing was sent, so callers may retry.
fn not_found(why: String) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        why,
    ))
}

impl Sentinel {
    /// Parses what follows `redis+sentinel://` (TLS settings already taken
    /// out of the query): `[user:pass@]host[:port],host[:port]/MASTER[/db]`
    /// with the query parameters `db`, `sentinel_username`, `sentinel_password`.
    pub(super) fn parse(
        tls: bool,
        rest: &str,
        options: &ConnectOptions,
    ) -> Result<Sentinel, String> {
        let (rest, fragment) = match rest.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (rest, None),
        };
        let insecure = options.tls.insecure_skip_verify || fragment == Some("insecure");
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (auth, rest) = match rest.rfind('@') {
            Some(at) => (&rest[..=at], &rest[at + 1..]),
            None => ("", rest),
        };
        let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut path = path.split('/').filter(|p| !p.is_empty());
        let master_name = crate::config::percent_decode(path.next().unwrap_or_default());
        if master_name.is_empty() {
            return Err("no master name given (redis+sentinel://HOST:PORT/MASTER_NAME)".into());
        }
        let mut db = match path.next() {
            Some(d) => Some(d.parse::<i64>().map_err(|_| format!("bad db {d:?}"))?),
            None => None,
        };
        let (mut sentinel_user, mut sentinel_pass) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = crate::config::percent_decode(v);
            match k {
                "db" => db = Some(v.parse().map_err(|_| format!("bad db {v:?}"))?),
                "sentinel_username" => sentinel_user = Some(v),
                "sentinel_password" => sentinel_pass = Some(v),
                _ => {
                    return Err(format!(
                        "unknown query parameter {k:?} (known: db, sentinel_username, sentinel_password, ca, cert, key, insecure)"
                    ))
                }
            }
        }
        let scheme = if tls { "rediss" } else { "redis" };
        let certs = if options.tls.is_set() {
            Some(options.tls.certificates().map_err(|e| e.to_string())?)
        } else {
            None
        };
        let tcp = super::tcp_settings(options, TcpSettings::default());
        let mut sentinels = Vec::new();
        for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let host = if host.contains(':') && !host.ends_with(']') {
                host.to_owned()
            } else {
                format!("{host}:{DEFAULT_SENTINEL_PORT}")
            };
            let client = node_client(scheme, &host, insecure, certs.as_ref(), &tcp)
                .map_err(|e| format!("bad sentinel {host:?}: {e}"))?;
            let info = client.get_connection_info().clone();
            let mut settings = info.redis_settings().clone().set_db(0);
            if let Some(user) = &sentinel_user {
                settings = settings.set_username(user);
            }
            if let Some(pass) = &sentinel_pass {
                settings = settings.set_password(pass);
            }
            let client = redis::Client::open(info.set_redis_settings(settings))
                .map_err(|e| e.to_string())?;
            sentinels.push(client);
        }
        if sentinels.is_empty() {
            return Err("no sentinels given".into());
        }
        // The URL's user and password (percent-decoded by redis-rs) are the
        // primary's: parse them on a stand-in address.
        let stand_in = redis::parse_redis_url(&format!("redis://{auth}127.0.0.1"))
            .ok_or_else(|| "bad user or password".to_owned())?;
        let mut redis = redis::IntoConnectionInfo::into_connection_info(stand_in)
            .map_err(|e| e.to_string())?
            .redis_settings()
            .clone();
        if let Some(db) = db {
            redis = redis.set_db(db);
        }
        Ok(Sentinel {
            master_name,
            sentinels,
            scheme,
            insecure,
            certs,
            redis,
            tcp,
            preferred: AtomicUsize::new(0),
            switches: AtomicU64::new(0),
            announced: Mutex::new(None),
            promoting: Mutex::new(None),
            listener: Mutex::new(None),
        })
    }

    pub(super) fn db(&self) -> i64 {
        self.redis.db()
    }

    /// How many new primaries the sentinels have announced so far.
    pub(super) fn switches(&self) -> u64 {
        self.switches.load(Ordering::Acquire)
    }

    /// Finds the primary and connects to it, asking again with backoff for up
    /// to the connect timeout while the sentinels name a primary that is down
    /// or is not (yet, or any more) a primary.
    pub(super) async fn dial(
        self: &Arc<Self>,
        options: &ConnectOptions,
        response_timeout: Duration,
    ) -> redis::RedisResult<MultiplexedConnection> {
        self.listen(options.connect_timeout);
        let give_up = Instant::now() + options.connect_timeout;
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            let e = match self.dial_once(options, response_timeout).await {
                Ok(conn) => return Ok(conn),
                Err(e) => e,
            };
            // A certificate refused now is refused on every attempt.
            let passing = (e.is_io_error() || e.is_timeout() || wrong_role(e.code()))
                && certificate_refusal(&e).is_none();
            if !passing || Instant::now() + delay >= give_up {
                return Err(e);
            }
            tracing::debug!(master = self.master_name.as_str(), error = %e, "primary not found yet; asking the sentinels again");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }

    async fn dial_once(
        &self,
        options: &ConnectOptions,
        response_timeout: Duration,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let addr = match self.promoted() {
            Some(addr) => addr,
            None => self.primary_addr(options).await?,
        };
        let client = node_client(
            self.scheme,
            &addr,
            self.insecure,
            self.certs.as_ref(),
            &self.tcp,
        )?;
        let info = client.get_connection_info().clone();
        let client = redis::Client::open(info.set_redis_settings(self.redis.clone()))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(response_timeout));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| match certificate_refusal(&e) {
                Some(tls) => refused_at(format!("{addr} (the primary the sentinels name)"), tls),
                None => e,
            })?;
        // The sentinels' answer may be stale: a demoted primary still answers
        // on its address, and would take reads (and refuse writes) as a replica.
        let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
        match role.first().map(text).as_deref() {
            Some("master") => Ok(conn),
            other => Err(not_found(format!(
                "{addr}, named by the sentinels as the primary of {:?} (or being promoted), says it is {} (a failover is under way?)",
                self.master_name,
                other.unwrap_or("nothing")
            ))),
        }
    }

    /// Asks the sentinels, the one that answered last first, where the
    /// primary is: `host:port`.
    async fn primary_addr(&self, options: &ConnectOptions) -> redis::RedisResult<String> {
        let n = self.sentinels.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut errors = Vec::new();
        // A reply that no retry mends (bad credentials, a certificate refused)
        // wins over "unreachable".
        let mut lasting: Option<redis::RedisError> = None;
        for i in (0..n).map(|k| (first + k) % n) {
            match self.ask(&self.sentinels[i], options).await {
                Ok(Some(addr)) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(addr);
                }
                Ok(None) => errors.push(format!(
                    "{}: does not know a master named {:?}",
                    sentinel_addr(&self.sentinels[i]),
                    self.master_name
                )),
                Err(e) => {
                    let at = sentinel_addr(&self.sentinels[i]);
                    errors.push(format!("{at}: {e}"));
                    if let Some(tls) = certificate_refusal(&e) {
                        lasting = Some(refused_at(format!("sentinel {at}"), tls));
                    } else if !(e.is_io_error() || e.is_timeout()) {
                        lasting = Some(e);
                    }
                }
            }
        }
        if let Some(e) = lasting {
            return Err(e);
        }
        let why = format!(
            "no sentinel named the primary of {:?}: {}",
            self.master_name,
            errors.join("; ")
        );
        if errors.iter().all(|e| e.contains("does not know a master")) {
            Err(invalid(why))
        } else {
            Err(not_found(why))
        }
    }

    /// One sentinel's answer to `SENTINEL get-master-addr-by-name`, on a
    /// connection of its own (closed after), under the connect and response
    /// timeouts.
    async fn ask(
        &self,
        sentinel: &redis::Client,
        options: &ConnectOptions,
    ) -> redis::RedisResult<Option<String>> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout));
        let bound = options.connect_timeout + options.response_timeout * 2;
        let asked = tokio::time::timeout(bound, async {
            let mut conn = sentinel
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&self.master_name)
                .query_async::<Option<(String, u16)>>(&mut conn)
                .await
        })
        .await
        .map_err(|_| not_found(format!("no answer within {bound:?}")))??;
        Ok(asked.map(|(host, port)| join_host_port(&host, port)))
    }

    /// Starts the failover listener unless it runs already (it stops
    /// when the runtime it was started on shuts down: then it is started again).
    fn listen(self: &Arc<Self>, connect_timeout: Duration) {
        let mut listener = self.listener.lock().unwrap_or_else(|e| e.into_inner());
        if listener.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let weak = Arc::downgrade(self);
        let subscriptions: Vec<_> = self
            .sentinels
            .iter()
            .map(|s| subscribe(s.clone(), weak.clone(), connect_timeout))
            .collect();
        *listener = Some(AbortOnDropHandle::new(tokio::spawn(async move {
            futures_util::future::join_all(subscriptions).await;
        })));
    }

    /// The replica being promoted, while dials are to follow it.
    fn promoted(&self) -> Option<String> {
        let promoting = self.promoting.lock().unwrap_or_else(|e| e.into_inner());
        promoting
            .as_ref()
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(addr, _)| addr.clone())
    }

    /// A message of `channel`.
    fn heard(&self, channel: &str, payload: &str) {
        let parts: Vec<&str> = payload.split_whitespace().collect();
        let (name, ip, port) = match (channel, &parts[..]) {
            (SWITCH_MASTER, [name, _, _, ip, port]) => (*name, *ip, *port),
            (PROMOTING, ["slave", _, ip, port, "@", name, _, _]) => (*name, *ip, *port),
            _ => return,
        };
        if name != self.master_name {
            return;
        }
        let Ok(port) = port.parse::<u16>() else {
            return;
        };
        let addr = join_host_port(ip, port);
        *self.promoting.lock().unwrap_or_else(|e| e.into_inner()) =
            (channel == PROMOTING).then(|| (addr.clone(), Instant::now() + PROMOTION_HOLD));
        let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        if announced.as_deref() != Some(addr.as_str()) {
            *announced = Some(addr.clone());
            self.switches.fetch_add(1, Ordering::AcqRel);
            tracing::info!(
                master = name,
                primary = addr.as_str(),
                "a sentinel announced a new primary; reconnecting"
            );
        }
    }
}

/// Listens on one sentinel for failovers until `state` is gone,
/// subscribing again after a failure.
async fn subscribe(sentinel: redis::Client, state: Weak<Sentinel>, connect_timeout: Duration) {
    let mut failures = 0u32;
    loop {
        if let Ok(Ok(mut pubsub)) =
            tokio::time::timeout(connect_timeout, sentinel.get_async_pubsub()).await
        {
            if pubsub.subscribe(&[SWITCH_MASTER, PROMOTING]).await.is_ok() {
                failures = 0;
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    let Some(state) = state.upgrade() else {
                        return;
                    };
                    if let Ok(payload) = msg.get_payload::<String>() {
                        state.heard(msg.get_channel_name(), &payload);
                    }
                }
            }
        }
        if state.strong_count() == 0 {
            return;
        }
        failures = failures.saturating_add(1);
        tokio::time::sleep(RESUBSCRIBE_DELAY * 2u32.pow(failures.min(4) - 1)).await;
    }
}

/// Whether a Redis error code says that the server is not (or not yet, or no
/// longer) a primary that takes writes: after a failover the old primary
/// answers `READONLY`, a blocked read on it is ended with `UNBLOCKED`, a new
/// one may still be `LOADING`, a replica cut off from its primary says
/// `MASTERDOWN`. On a Sentinel target such a socket is retired.
pub(super) fn wrong_role(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("READONLY" | "LOADING" | "MASTERDOWN" | "UNBLOCKED")
    )
}

/// A client for one node (`host:port`) by scheme, without credentials.
fn node_client(
    scheme: &str,
    addr: &str,
    insecure: bool,
    certs: Option<&redis::TlsCertificates>,
    tcp: &TcpSettings,
) -> redis::RedisResult<redis::Client> {
    let fragment = if insecure && scheme == "rediss" {
        "#insecure"
    } else {
        ""
    };
    let url = format!("{scheme}://{addr}{fragment}");
    let client = match certs {
        Some(certs) if scheme == "rediss" => redis::Client::build_with_tls(url, certs.clone())?,
        _ => redis::Client::open(url)?,
    };
    let info = client.get_connection_info().clone();
    redis::Client::open(info.set_tcp_settings(tcp.clone()))
}

/// `host:port`, with an IPv6 address in brackets.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn sentinel_addr(client: &redis::Client) -> String {
    client.get_connection_info().addr().to_string()
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Sentinel, String> {
        let rest = url.strip_prefix("redis+sentinel://").unwrap();
        Sentinel::parse(false, rest, &ConnectOptions::default())
    }

    #[test]
    fn urls() {
        let s =
            parse("redis+sentinel://u:p%40ss@a:1,b,[::1]:3/mymaster?db=2&sentinel_password=x%20y")
                .unwrap();
        assert_eq!(s.master_name, "mymaster");
        assert_eq!(s.db(), 2);
        assert_eq!(s.redis.username(), Some("u"));
        assert_eq!(s.redis.password(), Some("p@ss"));
        let addrs: Vec<String> = s.sentinels.iter().map(sentinel_addr).collect();
        assert_eq!(addrs, ["a:1", "b:26379", "::1:3"]);
        let sentinel = s.sentinels[0].get_connection_info().redis_settings();
        assert_eq!(sentinel.password(), Some("x y"));
        assert_eq!(sentinel.username(), None);
        assert_eq!(parse("redis+sentinel://a/m/5").unwrap().db(), 5);

        for bad in [
            "redis+sentinel://a:1",
            "redis+sentinel://a:1/",
            "redis+sentinel:///m",
            "redis+sentinel://a/m?foo=1",
            "redis+sentinel://a/m?db=x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_switch_announced_by_every_sentinel_counts_once() {
        let s = parse("redis+sentinel://a/m").unwrap();
        s.heard(SWITCH_MASTER, "m 127.0.0.1 1 127.0.0.1 2");
        s.heard(SWITCH_MASTER, "m 127.0.0.1 1 127.0.0.1 2");
        s.heard(SWITCH_MASTER, "other 127.0.0.1 1 127.0.0.1 3");
        s.heard(SWITCH_MASTER, "garbage");
        s.heard("other-channel", "m 127.0.0.1 2 127.0.0.1 3");
        assert_eq!(s.switches(), 1);
        s.heard(SWITCH_MASTER, "m 127.0.0.1 2 127.0.0.1 1");
        assert_eq!(s.switches(), 2);
    }

    #[test]
    fn a_promotion_is_followed_until_the_switch() {
        let s = parse("redis+sentinel://a/m").unwrap();
        let promoting = "slave 127.0.0.1:2 127.0.0.1 2 @ m 127.0.0.1 1";
        s.heard(PROMOTING, &promoting.replace("@ m", "@ other"));
        assert_eq!(s.promoted(), None);
        s.heard(PROMOTING, promoting);
        assert_eq!(s.promoted().as_deref(), Some("127.0.0.1:2"));
        assert_eq!(s.switches(), 1);
        // The switch to the same replica follows: no second reconnect.
        s.heard(SWITCH_MASTER, "m 127.0.0.1 1 127.0.0.1 2");
        assert_eq!(s.switches(), 1);
        assert_eq!(s.promoted(), None);
    }

    #[test]
    fn wrong_roles() {
        assert!(wrong_role(Some("READONLY")));
        assert!(wrong_role(Some("UNBLOCKED")));
        assert!(!wrong_role(Some("NOGROUP")));
        assert!(!wrong_role(None));
    }
}
