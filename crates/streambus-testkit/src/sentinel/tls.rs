//! A [`RedisSentinel`](super::RedisSentinel) with TLS
//! ([`SentinelOptions::server`](super::SentinelOptions::server)`.tls` set).
//!
//! Every server and sentinel serves TLS on its [`RedisServer::port`], and
//! everything they announce or are told is that port: `replicaof`,
//! `sentinel monitor`, a replica's `REPLCONF listening-port` and a sentinel's
//! hello message (Redis picks the TLS port for both under
//! `tls-replication yes`, which also makes replicas and sentinels connect with
//! TLS). A client finds nothing but TLS ports.
//!
//! Each process also listens on a plain-text port of its own, known only to
//! the testkit: its readiness and failover checks (which speak plain RESP,
//! this crate has no TLS client) go there, mapped by [`CheckPorts`].

use std::collections::HashMap;
use std::path::Path;

use crate::support::free_port;
use crate::{RedisServer, ServerOptions, TestkitError, PORT_ATTEMPTS};

/// For each process of a TLS set, its TLS port (the one announced, and
/// [`RedisServer::port`]) → the plain-text port the testkit checks through.
/// Empty without TLS: then every port is checked as it is.
#[derive(Debug, Default)]
pub(super) struct CheckPorts(HashMap<u16, u16>);

impl CheckPorts {
    /// Where to send the testkit's own check for the process on `port`.
    pub(super) fn of(&self, port: u16) -> u16 {
        self.0.get(&port).copied().unwrap_or(port)
    }

    /// Starts a server or sentinel in `parent`: as given without TLS; with
    /// TLS, with `tls-replication yes` and a plain-text port for the checks,
    /// remembered here.
    pub(super) fn start(
        &mut self,
        opts: ServerOptions,
        parent: &Path,
    ) -> Result<RedisServer, TestkitError> {
        if opts.tls.is_none() {
            return RedisServer::start_node(opts, Some(parent), None);
        }
        let mut attempt = 1;
        loop {
            let plain = free_port();
            let mut o = opts.clone();
            // After the configuration file, so that they win over its `port 0`.
            o.extra_args.extend([
                "--port".into(),
                plain.to_string(),
                "--tls-replication".into(),
                "yes".into(),
            ]);
            match RedisServer::start_node(o, Some(parent), None) {
                Ok(server) => {
                    self.0.insert(server.port(), plain);
                    return Ok(server);
                }
                // Someone took the plain port before the server bound it
                // (start_node only tries other TLS ports).
                Err(TestkitError::Exited { log, .. })
                    if attempt < PORT_ATTEMPTS && log.contains("Address already in use") =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The query parameters that give a client the set's TLS files: `ca=`, and
/// `cert=` and `key=` when the servers require client certificates.
pub(super) fn url_params(any: &RedisServer, require_client_cert: bool) -> Vec<String> {
    let file = |name: &str, path: &Path| {
        let path = path.display().to_string();
        format!("{name}={}", crate::support::percent_encode(&path))
    };
    let mut params = vec![file("ca", &any.ca_cert_path())];
    if require_client_cert {
        params.push(file("cert", &any.client_cert_path()));
        params.push(file("key", &any.client_key_path()));
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::query;
    use crate::{RedisSentinel, SentinelOptions, TlsOptions};

    /// What the sentinels name and know is TLS ports only; the testkit's own
    /// plain-text ports stay out of sight.
    #[test]
    fn a_tls_set_announces_tls_ports_only() {
        let set = RedisSentinel::start_with(SentinelOptions {
            server: ServerOptions {
                tls: Some(TlsOptions::default()),
                ..ServerOptions::default()
            },
            ..SentinelOptions::default()
        });
        let url = set.url();
        assert!(
            url.starts_with("rediss+sentinel://") && url.contains("?ca="),
            "{url}"
        );
        let primary = set.primary();
        let sentinel = &set.sentinels()[0];
        // Plain RESP gets no answer on an announced port, TLS does.
        assert!(query(primary.port(), &["PING"]).is_err());
        assert!(query(sentinel.port(), &["PING"]).is_err());
        assert_eq!(primary.cli(&["PING"]), "PONG");
        let named = sentinel.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", set.master_name()]);
        assert_eq!(
            named.lines().last(),
            Some(primary.port().to_string().as_str())
        );
        let peers = sentinel.cli(&["SENTINEL", "SENTINELS", set.master_name()]);
        for other in &set.sentinels()[1..] {
            assert!(
                peers.lines().any(|l| l == other.port().to_string()),
                "{peers}"
            );
        }
        let replica = set.server_ports()[1];
        let info = primary.cli(&["INFO", "replication"]);
        assert!(info.contains(&format!("port={replica},")), "{info}");
    }

    #[test]
    fn a_port_without_a_plain_one_is_checked_as_it_is() {
        let mut ports = CheckPorts::default();
        ports.0.insert(7000, 8000);
        assert_eq!(ports.of(7000), 8000);
        assert_eq!(ports.of(7001), 7001);
    }
}
