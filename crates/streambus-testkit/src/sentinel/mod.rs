//! [`RedisSentinel`]: a private primary, its replicas and the sentinels that
//! watch them, for failover tests.
//!
//! Every process is a [`RedisServer`] (its own port, temp dir, log, killed on
//! drop); a sentinel is `redis-server redis.conf --sentinel` with its
//! `sentinel monitor` lines on the command line (the configuration file stays
//! writable: sentinels rewrite it). Readiness and failovers are polled from
//! what the sentinels and servers say, never waited for with a sleep.
//!
//! - this file: [`SentinelOptions`], [`RedisSentinel`] (start, failovers,
//!   readiness);
//! - `reply`: asking a sentinel or server, with array replies kept;
//! - `tls`: starting a set that speaks TLS, and where the testkit checks it.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{RedisServer, ServerOptions, TestkitError, HOST};

mod reply;
mod tls;

use reply::{call_as, field, replication, sentinel_table, Reply};
use tls::CheckPorts;

/// How often sentinel and replication state is polled.
const SENTINEL_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How to start a [`RedisSentinel`]. The defaults make failovers quick:
/// a primary is judged down after 1 s.
#[derive(Clone, Debug)]
pub struct SentinelOptions {
    /// The name the sentinels monitor the primary under. Default `mymaster`.
    pub master_name: String,
    /// Replicas of the primary. Default 1.
    pub replicas: usize,
    /// Sentinels. Default 3 (a majority survives the loss of one).
    pub sentinels: usize,
    /// Sentinels that must agree the primary is down. Default 2.
    pub quorum: usize,
    /// `down-after-milliseconds`: how long the primary must be silent to be
    /// judged down. Default 1 s.
    pub down_after: Duration,
    /// `failover-timeout`. Default 5 s.
    pub failover_timeout: Duration,
    /// How the primary and the replicas are started (persistence, password:
    /// a password is also given to the sentinels as `auth-pass`).
    ///
    /// With [`ServerOptions::tls`] set, the sentinels serve TLS too (with the
    /// same [`TlsOptions`](crate::TlsOptions)), and servers and sentinels talk
    /// TLS to each other (`tls-replication yes`): every port announced is a
    /// TLS port, and [`RedisSentinel::url`] is `rediss+sentinel://...?ca=...`.
    pub server: ServerOptions,
    /// A password the sentinels require (`requirepass` in sentinel mode, and
    /// `sentinel-pass` so that they can talk to each other). Default `None`.
    /// [`RedisSentinel::url`] gives it as `?sentinel_password=`.
    pub sentinel_password: Option<String>,
    /// How long [`RedisSentinel::start`] waits for everything to be ready.
    /// Default 30 s.
    pub startup_timeout: Duration,
}

impl Default for SentinelOptions {
    fn default() -> Self {
        SentinelOptions {
            master_name: "mymaster".into(),
            replicas: 1,
            sentinels: 3,
            quorum: 2,
            down_after: Duration::from_secs(1),
            failover_timeout: Duration::from_secs(5),
            server: ServerOptions::default(),
            sentinel_password: None,
            startup_timeout: Duration::from_secs(30),
        }
    }
}

/// A primary, its replicas and the sentinels that watch them, all on free
/// ports of `127.0.0.1`.
///
/// [`RedisSentinel::start`] returns once every sentinel names the primary,
/// knows every replica (with its link up) and the other sentinels, and every
/// replica's `master_link_status` is `up`.
///
/// ```no_run
/// use std::time::Duration;
/// use streambus_testkit::RedisSentinel;
///
/// let mut s = RedisSentinel::start();
/// let url = s.url(); // redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/mymaster
/// # let _ = url;
/// let old = s.kill_primary();
/// let new = s.wait_for_failover(old, Duration::from_secs(30)).unwrap();
/// assert_ne!(old, new);
/// ```
pub struct RedisSentinel {
    /// The primary and replicas, the initial primary first. Declared before
    /// `dir`: killed before their parent directory is removed.
    servers: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
    /// Where the testkit's own checks go (a plain-text port with TLS).
    check: CheckPorts,
    opts: SentinelOptions,
    dir: TempDir,
}

impl fmt::Debug for RedisSentinel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSentinel")
            .field("servers", &self.server_ports())
            .field("sentinels", &self.sentinel_ports())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl RedisSentinel {
    /// Start with [`SentinelOptions::default`].
    ///
    /// # Panics
    ///
    /// If it cannot be started; the message says why.
    pub fn start() -> RedisSentinel {
        RedisSentinel::start_with(SentinelOptions::default())
    }

    /// Start with the given options.
    ///
    /// # Panics
    ///
    /// As [`RedisSentinel::start`].
    pub fn start_with(opts: SentinelOptions) -> RedisSentinel {
        RedisSentinel::try_start_with(opts)
            .unwrap_or_else(|e| panic!("failed to start test Redis Sentinel: {e}"))
    }

    /// Start with the given options, returning an error instead of panicking.
    pub fn try_start_with(opts: SentinelOptions) -> Result<RedisSentinel, TestkitError> {
        if opts.sentinels == 0 || opts.quorum == 0 || opts.quorum > opts.sentinels {
            return Err(TestkitError::InvalidOptions(format!(
                "{} sentinels with a quorum of {}",
                opts.sentinels, opts.quorum
            )));
        }
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("streambus-sentinel-")
            .tempdir()?;
        let data = |replica_of: Option<u16>| {
            let mut o = opts.server.clone();
            // Replicas sync at once instead of waiting 5 s for company.
            o.extra_args
                .extend(["--repl-diskless-sync-delay".into(), "0".into()]);
            if let Some(pass) = o.default_password().map(str::to_owned) {
                o.extra_args.extend(["--masterauth".into(), pass]);
            }
            if let Some(port) = replica_of {
                o.extra_args
                    .extend(["--replicaof".into(), HOST.into(), port.to_string()]);
            }
            o
        };
        let mut check = CheckPorts::default();
        let primary = check.start(data(None), dir.path())?;
        let primary_port = primary.port();
        let mut servers = vec![primary];
        for _ in 0..opts.replicas {
            servers.push(check.start(data(Some(primary_port)), dir.path())?);
        }
        let mut sentinels = Vec::with_capacity(opts.sentinels);
        for _ in 0..opts.sentinels {
            let node = ServerOptions {
                extra_args: sentinel_args(&opts, primary_port),
                password: opts.sentinel_password.clone(),
                binary: opts.server.binary.clone(),
                startup_timeout: opts.server.startup_timeout,
                tls: opts.server.tls.clone(),
                ..ServerOptions::default()
            };
            sentinels.push(check.start(node, dir.path())?);
        }
        let s = RedisSentinel {
            servers,
            sentinels,
            check,
            opts,
            dir,
        };
        let left = s.opts.startup_timeout.saturating_sub(started.elapsed());
        s.wait_until_ready(left)?;
        Ok(s)
    }

    /// The URL streambus accepts:
    /// `redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,.../MASTER_NAME`, with the
    /// servers' password (`redis+sentinel://:PASSWORD@...`) and the
    /// sentinels' (`?sentinel_password=...`) when they are set.
    ///
    /// With TLS: `rediss+sentinel://...?ca=CA_FILE`, and
    /// `&cert=CLIENT_CERT&key=CLIENT_KEY` when client certificates are
    /// required. The files are those of every server (one test CA); for
    /// others (the unrelated CA of "wrong CA" tests) ask a server, e.g.
    /// `set.primary().other_ca_cert_path()`.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .sentinel_ports()
            .iter()
            .map(|p| format!("{HOST}:{p}"))
            .collect();
        let auth = match self.opts.server.default_password() {
            Some(pass) => format!(":{}@", crate::support::percent_encode(pass)),
            None => String::new(),
        };
        let mut query: Vec<String> = self
            .opts
            .sentinel_password
            .iter()
            .map(|pass| format!("sentinel_password={}", crate::support::percent_encode(pass)))
            .collect();
        if let Some(tls) = &self.opts.server.tls {
            query.extend(tls::url_params(&self.servers[0], tls.require_client_cert));
        }
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        };
        let scheme = if self.is_tls() {
            "rediss+sentinel"
        } else {
            "redis+sentinel"
        };
        format!(
            "{scheme}://{auth}{}/{}{query}",
            seeds.join(","),
            self.opts.master_name
        )
    }

    /// Whether the set speaks TLS ([`SentinelOptions::server`]`.tls`).
    pub fn is_tls(&self) -> bool {
        self.opts.server.tls.is_some()
    }

    /// The monitored master's name.
    pub fn master_name(&self) -> &str {
        &self.opts.master_name
    }

    /// The ports of the primary and replicas, the initial primary first.
    pub fn server_ports(&self) -> Vec<u16> {
        self.servers.iter().map(RedisServer::port).collect()
    }

    /// The ports of the sentinels.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(RedisServer::port).collect()
    }

    /// The parent directory of every process's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The port of the primary as the sentinels see it now: the one the
    /// running sentinels agree on, if they do.
    pub fn primary_port(&self) -> Option<u16> {
        let named: Vec<Option<u16>> = self
            .sentinels
            .iter()
            .filter(|s| s.is_running())
            .map(|s| self.named_primary(s.port()))
            .collect();
        let first = *named.first()?;
        named.iter().all(|p| *p == first).then_some(first).flatten()
    }

    /// The server the sentinels name as the primary.
    ///
    /// # Panics
    ///
    /// If they do not agree on one (a failover is under way).
    pub fn primary(&self) -> &RedisServer {
        let port = self
            .primary_port()
            .unwrap_or_else(|| panic!("the sentinels do not agree on a primary: {self:?}"));
        self.server(port)
    }

    /// The primary or replica on `port`.
    ///
    /// # Panics
    ///
    /// If none listens there.
    pub fn server(&self, port: u16) -> &RedisServer {
        let i = self.index(port);
        &self.servers[i]
    }

    /// The primary or replica on `port`, to kill or restart it.
    ///
    /// # Panics
    ///
    /// If none listens there.
    pub fn server_mut(&mut self, port: u16) -> &mut RedisServer {
        let i = self.index(port);
        &mut self.servers[i]
    }

    /// The sentinels, to read their logs or stop one.
    pub fn sentinels(&self) -> &[RedisServer] {
        &self.sentinels
    }

    /// A planned failover: `SENTINEL FAILOVER` on the first running
    /// sentinel. Returns the port of the primary it starts from; wait for the
    /// end with [`RedisSentinel::wait_for_failover`].
    ///
    /// # Panics
    ///
    /// If the sentinel refuses (e.g. `NOGOODSLAVE`, or a failover already
    /// under way).
    pub fn failover(&self) -> u16 {
        let old = self.primary().port();
        let sentinel = self
            .sentinels
            .iter()
            .find(|s| s.is_running())
            .expect("a running sentinel");
        let reply = sentinel.cli(&["SENTINEL", "FAILOVER", &self.opts.master_name]);
        assert_eq!(reply, "OK", "SENTINEL FAILOVER: {reply}");
        old
    }

    /// An unplanned failover: `SIGKILL` of the primary. Returns its port.
    pub fn kill_primary(&mut self) -> u16 {
        let old = self.primary().port();
        self.server_mut(old).kill();
        old
    }

    /// Waits until every running sentinel names a primary other than
    /// `old_primary`, and that server says it is a primary; returns its port.
    pub fn wait_for_failover(
        &self,
        old_primary: u16,
        timeout: Duration,
    ) -> Result<u16, TestkitError> {
        let started = Instant::now();
        loop {
            if let Some(new) = self.primary_port().filter(|p| *p != old_primary) {
                if self
                    .servers
                    .iter()
                    .any(|s| s.port() == new && s.is_running())
                    && replication(self.check.of(new), self.password())
                        .ok()
                        .as_deref()
                        .and_then(|i| field(i, "role"))
                        == Some("master")
                {
                    return Ok(new);
                }
            }
            if started.elapsed() >= timeout {
                return Err(self.not_ready(format!("failed over from {old_primary}"), started));
            }
            std::thread::sleep(SENTINEL_POLL_INTERVAL);
        }
    }

    /// Waits until every running sentinel names the same running primary,
    /// knows every running replica with its link up and the other running
    /// sentinels, and every running replica's link to the primary is up.
    pub fn wait_until_ready(&self, timeout: Duration) -> Result<(), TestkitError> {
        let started = Instant::now();
        loop {
            if self.ready().is_ok() {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(self.not_ready("ready".into(), started));
            }
            std::thread::sleep(SENTINEL_POLL_INTERVAL);
        }
    }

    /// `Ok` when ready (see [`RedisSentinel::wait_until_ready`]), else why not.
    fn ready(&self) -> Result<(), String> {
        let primary = self
            .primary_port()
            .ok_or("the sentinels do not agree on a primary")?;
        if replication(self.check.of(primary), self.password())
            .ok()
            .as_deref()
            .and_then(|i| field(i, "role"))
            != Some("master")
        {
            return Err(format!("{primary} is not a primary"));
        }
        let replicas: Vec<u16> = self
            .servers
            .iter()
            .filter(|s| s.is_running() && s.port() != primary)
            .map(RedisServer::port)
            .collect();
        for &r in &replicas {
            let info = replication(self.check.of(r), self.password())?;
            let linked = field(&info, "master_port") == Some(primary.to_string().as_str())
                && field(&info, "master_link_status") == Some("up");
            if !linked {
                return Err(format!("replica {r} not linked to {primary}"));
            }
        }
        let running = self.sentinels.iter().filter(|s| s.is_running()).count();
        for s in self.sentinels.iter().filter(|s| s.is_running()) {
            let name = self.opts.master_name.as_str();
            let known = sentinel_table(
                self.check.of(s.port()),
                self.opts.sentinel_password.as_deref(),
                &["SENTINEL", "REPLICAS", name],
            )?;
            for &r in &replicas {
                let seen = known.iter().any(|k| {
                    k.get("port") == Some(&r.to_string())
                        && k.get("flags").map(String::as_str) == Some("slave")
                        && k.get("master-link-status").map(String::as_str) == Some("ok")
                });
                if !seen {
                    return Err(format!("sentinel {} does not know replica {r}", s.port()));
                }
            }
            let peers = sentinel_table(
                self.check.of(s.port()),
                self.opts.sentinel_password.as_deref(),
                &["SENTINEL", "SENTINELS", name],
            )?;
            if peers.len() + 1 != running {
                return Err(format!(
                    "sentinel {} knows {} of {} other sentinels",
                    s.port(),
                    peers.len(),
                    running - 1
                ));
            }
        }
        Ok(())
    }

    fn not_ready(&self, awaited: String, started: Instant) -> TestkitError {
        let mut state = vec![format!("why: {}", self.ready().err().unwrap_or_default())];
        for s in &self.sentinels {
            state.push(format!(
                "sentinel {}: names {:?}",
                s.port(),
                self.named_primary(s.port())
            ));
        }
        for s in &self.servers {
            let info = replication(self.check.of(s.port()), self.password()).unwrap_or_else(|e| e);
            let brief = ["role", "master_port", "master_link_status"]
                .iter()
                .filter_map(|k| field(&info, k).map(|v| format!("{k}:{v}")))
                .collect::<Vec<_>>()
                .join(" ");
            state.push(format!("server {}: {brief}", s.port()));
        }
        TestkitError::ClusterNotReady {
            awaited: format!("Sentinel {awaited}"),
            waited: started.elapsed(),
            state: state.join("\n"),
        }
    }

    /// The primary's port as one sentinel names it.
    fn named_primary(&self, sentinel: u16) -> Option<u16> {
        let args = [
            "SENTINEL",
            "GET-MASTER-ADDR-BY-NAME",
            &self.opts.master_name,
        ];
        let port = self.check.of(sentinel);
        match call_as(port, self.opts.sentinel_password.as_deref(), &args).ok()? {
            Reply::Array(a) => match a.get(1)? {
                Reply::Text(port) => port.parse().ok(),
                Reply::Array(_) => None,
            },
            Reply::Text(_) => None,
        }
    }

    fn password(&self) -> Option<&str> {
        self.opts.server.default_password()
    }

    fn index(&self, port: u16) -> usize {
        self.servers
            .iter()
            .position(|s| s.port() == port)
            .unwrap_or_else(|| panic!("no server of this set listens on {port}: {self:?}"))
    }
}

/// The `redis-server ... --sentinel` arguments of one sentinel.
fn sentinel_args(opts: &SentinelOptions, primary_port: u16) -> Vec<String> {
    let name = opts.master_name.as_str();
    let mut lines = vec![
        vec!["monitor".to_owned(), name.into(), HOST.into()],
        vec!["down-after-milliseconds".into(), name.into()],
        vec!["failover-timeout".into(), name.into()],
    ];
    lines[0].extend([primary_port.to_string(), opts.quorum.to_string()]);
    lines[1].push(opts.down_after.as_millis().to_string());
    lines[2].push(opts.failover_timeout.as_millis().to_string());
    if let Some(pass) = opts.server.default_password() {
        lines.push(vec!["auth-pass".into(), name.into(), pass.into()]);
    }
    if let Some(pass) = &opts.sentinel_password {
        lines.push(vec!["sentinel-pass".into(), pass.clone()]);
    }
    let mut args = vec!["--sentinel".to_owned()];
    for line in lines {
        args.push("--sentinel".into());
        args.extend(line);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quorum_above_the_sentinels_is_refused() {
        let err = RedisSentinel::try_start_with(SentinelOptions {
            sentinels: 1,
            quorum: 2,
            ..SentinelOptions::default()
        })
        .unwrap_err();
        assert!(matches!(err, TestkitError::InvalidOptions(_)), "{err}");
    }

    #[test]
    fn sentinel_arguments() {
        let opts = SentinelOptions {
            server: ServerOptions {
                password: Some("pw".into()),
                ..ServerOptions::default()
            },
            ..SentinelOptions::default()
        };
        let args = sentinel_args(&opts, 7000).join(" ");
        assert_eq!(
            args,
            "--sentinel --sentinel monitor mymaster 127.0.0.1 7000 2 \
             --sentinel down-after-milliseconds mymaster 1000 \
             --sentinel failover-timeout mymaster 5000 \
             --sentinel auth-pass mymaster pw"
        );
    }
}
