//! How to start a server ([`ServerOptions`], [`AclUser`], [`TlsOptions`],
//! [`Appendfsync`]) and the `redis.conf` built from them.

use std::path::Path;
use std::time::Duration;

use crate::certs::{CA_CERT, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY};
use crate::support::redis_server_bin;
use crate::{HOST, LOG_FILE, NODES_CONF};

/// The `appendfsync` policy of the append-only file.
///
/// Only used when [`ServerOptions::appendonly`] is `true`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appendfsync {
    /// `fsync` after every write: nothing acknowledged is lost on a crash.
    /// Use this to test durability guarantees.
    Always,
    /// `fsync` once per second (Redis' default): up to ~1 s of writes may be
    /// lost on a crash of the machine (not of the process).
    EverySec,
    /// Leave flushing to the operating system.
    No,
}

impl Appendfsync {
    /// The value as written in `redis.conf`.
    pub fn as_str(self) -> &'static str {
        match self {
            Appendfsync::Always => "always",
            Appendfsync::EverySec => "everysec",
            Appendfsync::No => "no",
        }
    }
}

/// An extra ACL user created when the server starts.
///
/// Written as `user NAME on >PASSWORD RULES...` into the generated
/// `redis.conf`, so it also exists again after [`RedisServer::restart`](crate::RedisServer::restart).
#[derive(Clone, Debug)]
pub struct AclUser {
    /// User name, used with `AUTH name password` / [`RedisServer::url_for_user`](crate::RedisServer::url_for_user).
    pub name: String,
    /// The user's password (any characters, spaces included).
    pub password: String,
    /// ACL rules, e.g. `["~ev:*", "+@stream", "+@connection", "+ping"]`.
    /// A new user starts with no key patterns and no commands, so list
    /// everything the user needs.
    pub rules: Vec<String>,
}

impl AclUser {
    /// An ACL user with the given name, password and rules.
    pub fn new(
        name: impl Into<String>,
        password: impl Into<String>,
        rules: impl IntoIterator<Item = impl Into<String>>,
    ) -> AclUser {
        AclUser {
            name: name.into(),
            password: password.into(),
            rules: rules.into_iter().map(Into::into).collect(),
        }
    }
}

/// How to start a [`RedisServer`](crate::RedisServer).
///
/// Build it with struct-update syntax:
/// `ServerOptions { appendonly: true, ..ServerOptions::default() }`.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Turn on the append-only file, so data survives a crash
    /// ([`RedisServer::kill`](crate::RedisServer::kill) followed by [`RedisServer::restart`](crate::RedisServer::restart)).
    /// Default `false`: no persistence at all (RDB snapshots are always off).
    pub appendonly: bool,
    /// The AOF `fsync` policy; only used when `appendonly` is set.
    /// Default [`Appendfsync::EverySec`].
    pub appendfsync: Appendfsync,
    /// `requirepass` for the `default` user, to test authenticated
    /// connections. [`RedisServer::url`](crate::RedisServer::url) and [`RedisServer::cli`](crate::RedisServer::cli) use it.
    /// Default `None` (no password).
    pub password: Option<String>,
    /// Extra ACL users created at start, to test restricted permissions.
    pub acl_users: Vec<AclUser>,
    /// Extra arguments appended to the `redis-server` command line, e.g.
    /// `["--maxmemory-policy", "noeviction"]`. They override the generated
    /// configuration file.
    pub extra_args: Vec<String>,
    /// How long to wait for the server to answer `PING` (including loading
    /// the AOF). Default 10 s.
    pub startup_timeout: Duration,
    /// The `redis-server` binary to run; overrides [`redis_server_bin`]
    /// (`$REDIS_SERVER_BIN` or `redis-server`). Default `None`.
    pub binary: Option<String>,
    /// Serve TLS only (no plain-text port), with certificates generated in
    /// the server's directory. Default `None` (plain TCP). See [`TlsOptions`].
    pub tls: Option<TlsOptions>,
}

/// TLS for a [`RedisServer`](crate::RedisServer) ([`ServerOptions::tls`]).
///
/// When set, the testkit generates in the server's directory (once; restarts
/// reuse them):
///
/// | file | what |
/// |---|---|
/// | `ca.crt`, `ca.key` | a test CA |
/// | `server.crt`, `server.key` | the server's certificate, signed by the CA, for `DNS:localhost` and `IP:127.0.0.1` |
/// | `client.crt`, `client.key` | a client certificate signed by the same CA |
/// | `other-ca.crt` | an unrelated CA, for "wrong CA" tests |
///
/// The files are the same for every TLS server of one test process (one CA),
/// so TLS servers trust each other and one `ca.crt` serves for all of them.
///
/// The server then listens with `port 0` (no plain-text port) and
/// `tls-port` = [`RedisServer::port`](crate::RedisServer::port). Keys are ECDSA P-256.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// Require clients to present a certificate signed by the test CA
    /// (`tls-auth-clients yes`). Default `false` (`tls-auth-clients no`:
    /// a client certificate is optional, but checked if one is sent).
    pub require_client_cert: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            appendonly: false,
            appendfsync: Appendfsync::EverySec,
            password: None,
            acl_users: Vec::new(),
            extra_args: Vec::new(),
            startup_timeout: Duration::from_secs(10),
            binary: None,
            tls: None,
        }
    }
}

impl ServerOptions {
    /// The password of the `default` user: [`ServerOptions::password`], or
    /// the password of an ACL user named `default`. Empty means none.
    pub(crate) fn default_password(&self) -> Option<&str> {
        self.password
            .as_deref()
            .or_else(|| {
                self.acl_users
                    .iter()
                    .find(|u| u.name == "default")
                    .map(|u| u.password.as_str())
            })
            .filter(|p| !p.is_empty())
    }

    /// The binary to run.
    pub(crate) fn server_binary(&self) -> String {
        self.binary.clone().unwrap_or_else(redis_server_bin)
    }
}

/// The cluster part of a node's configuration.
pub(crate) struct ClusterConf {
    /// `cluster-port`: the cluster bus.
    pub(crate) bus_port: u16,
    /// `cluster-node-timeout`.
    pub(crate) node_timeout: Duration,
}

/// The generated `redis.conf`.
pub(crate) fn render_conf(
    opts: &ServerOptions,
    port: u16,
    dir: &Path,
    cluster: Option<&ClusterConf>,
) -> String {
    // A TLS server has no plain-text port.
    let plain_port = if opts.tls.is_some() { 0 } else { port };
    let mut lines: Vec<Vec<String>> = vec![
        vec!["port".into(), plain_port.to_string()],
        vec!["bind".into(), HOST.into()],
        vec!["protected-mode".into(), "no".into()],
        vec!["daemonize".into(), "no".into()],
        vec!["save".into(), String::new()],
        vec!["dir".into(), dir.display().to_string()],
        vec!["logfile".into(), dir.join(LOG_FILE).display().to_string()],
        vec![
            "appendonly".into(),
            if opts.appendonly { "yes" } else { "no" }.into(),
        ],
    ];
    if opts.appendonly {
        lines.push(vec!["appendfsync".into(), opts.appendfsync.as_str().into()]);
    }
    if let Some(pass) = opts.password.as_deref().filter(|p| !p.is_empty()) {
        lines.push(vec!["requirepass".into(), pass.into()]);
    }
    if let Some(tls) = &opts.tls {
        let file = |name: &str| dir.join(name).display().to_string();
        lines.extend([
            vec!["tls-port".into(), port.to_string()],
            vec!["tls-cert-file".into(), file(SERVER_CERT)],
            vec!["tls-key-file".into(), file(SERVER_KEY)],
            vec!["tls-ca-cert-file".into(), file(CA_CERT)],
            // What the server presents when it is the client (a replica to
            // its primary, a sentinel to the servers and its peers): the
            // server certificate is for server authentication only, and a
            // peer that requires client certificates would refuse it.
            vec!["tls-client-cert-file".into(), file(CLIENT_CERT)],
            vec!["tls-client-key-file".into(), file(CLIENT_KEY)],
            vec![
                "tls-auth-clients".into(),
                if tls.require_client_cert { "yes" } else { "no" }.into(),
            ],
        ]);
    }
    if let Some(node) = cluster {
        lines.extend([
            vec!["cluster-enabled".into(), "yes".into()],
            vec![
                "cluster-config-file".into(),
                dir.join(NODES_CONF).display().to_string(),
            ],
            vec![
                "cluster-node-timeout".into(),
                node.node_timeout.as_millis().to_string(),
            ],
            vec!["cluster-port".into(), node.bus_port.to_string()],
            // Replicas sync at once instead of waiting 5 s for company.
            vec!["repl-diskless-sync-delay".into(), "0".into()],
        ]);
    }
    for user in &opts.acl_users {
        let mut line = vec![
            "user".to_owned(),
            user.name.clone(),
            "on".into(),
            format!(">{}", user.password),
        ];
        line.extend(user.rules.iter().cloned());
        lines.push(line);
    }
    let mut out = String::from("# Generated by streambus-testkit.\n");
    for line in lines {
        let mut tokens = line.iter();
        // Directive names are plain words; values are always quoted.
        out.push_str(tokens.next().map(String::as_str).unwrap_or_default());
        for token in tokens {
            out.push(' ');
            out.push_str(&conf_quote(token));
        }
        out.push('\n');
    }
    out
}

/// Quote a value for `redis.conf` (parsed like `sdssplitargs`): inside
/// double quotes, `\"`, `\\` and `\xHH` escapes are understood.
pub(crate) fn conf_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for b in value.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_quoting() {
        assert_eq!(conf_quote(""), "\"\"");
        assert_eq!(conf_quote("a \"b\" \\c\n"), "\"a \\\"b\\\" \\\\c\\x0a\"");
    }

    #[test]
    fn conf_has_everything() {
        let opts = ServerOptions {
            appendonly: true,
            appendfsync: Appendfsync::Always,
            password: Some("p w".into()),
            acl_users: vec![AclUser::new("bob", "s3cret", ["~ev:*", "+ping"])],
            ..ServerOptions::default()
        };
        let conf = render_conf(&opts, 1234, Path::new("/tmp/x"), None);
        for needle in [
            "port \"1234\"",
            "save \"\"",
            "appendonly \"yes\"",
            "appendfsync \"always\"",
            "requirepass \"p w\"",
            "user \"bob\" \"on\" \">s3cret\" \"~ev:*\" \"+ping\"",
        ] {
            assert!(conf.contains(needle), "{needle:?} not in\n{conf}");
        }
    }
}
