//! TLS settings for `rediss://` URLs.

use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

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
    pub(super) fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.client_cert_file.is_some() || self.client_key_file.is_some()
    }

    /// Reads the certificate files into what redis-rs takes.
    pub(super) fn certificates(&self) -> Result<redis::TlsCertificates> {
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
    pub(super) fn take_from_url(&mut self, url: &str) -> String {
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
