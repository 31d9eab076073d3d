//! TLS settings for `rediss://` URLs, and telling a refused certificate
//! from a network failure.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// The certificate error in a redis-rs error whose TLS handshake failed on a
/// certificate: ours was refused, or we refused theirs (a wrong CA, a name
/// the certificate does not cover). Such a dial fails the same way until
/// someone changes the certificates, so asking again at once is no use.
///
/// redis-rs keeps the socket's `io::Error` behind an `Arc`; tokio-rustls
/// keeps the `rustls::Error` in it (or [`refused_at`] its [`Refused`]).
pub(super) fn certificate_refusal(e: &redis::RedisError) -> Option<rustls::Error> {
    type Shared = Arc<dyn std::error::Error + Send + Sync>;
    let source = std::error::Error::source(e)?;
    let io = match source.downcast_ref::<Shared>() {
        Some(shared) => shared.downcast_ref::<std::io::Error>(),
        None => source.downcast_ref::<std::io::Error>(),
    }?;
    let inner = io.get_ref()?;
    let tls = match inner.downcast_ref::<Refused>() {
        Some(refused) => &refused.tls,
        None => inner.downcast_ref::<rustls::Error>()?,
    };
    use rustls::AlertDescription as A;
    matches!(
        tls,
        rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::AlertReceived(
                A::BadCertificate
                    | A::UnknownCA
                    | A::CertificateRequired
                    | A::CertificateUnknown
                    | A::UnsupportedCertificate
                    | A::HandshakeFailure
            )
    )
    .then(|| tls.clone())
}

/// A certificate refusal that says where it happened (`sentinel HOST:PORT`,
/// or the primary): still an I/O error for redis-rs and streambus (a
/// connection error, with the certificate hint), and still recognised by
/// [`certificate_refusal`].
pub(super) fn refused_at(at: String, tls: rustls::Error) -> redis::RedisError {
    let refused = Refused { at, tls };
    std::io::Error::new(std::io::ErrorKind::InvalidData, refused).into()
}

/// See [`refused_at`].
#[derive(Debug)]
struct Refused {
    at: String,
    tls: rustls::Error,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.tls)
    }
}

impl std::error::Error for Refused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.tls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_certificate_is_told_from_a_network_failure() {
        let bad_ca = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let wrapped = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            bad_ca.clone(),
        ));
        assert_eq!(certificate_refusal(&wrapped), Some(bad_ca.clone()));
        let located = refused_at("sentinel h:1".into(), bad_ca.clone());
        assert_eq!(certificate_refusal(&located), Some(bad_ca));
        assert!(located
            .to_string()
            .contains("sentinel h:1: invalid peer certificate"));
        assert!(located.is_io_error());

        let reset =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(certificate_refusal(&reset), None);
        let other = rustls::Error::AlertReceived(rustls::AlertDescription::InternalError);
        let other =
            redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::InvalidData, other));
        assert_eq!(certificate_refusal(&other), None);
    }
}
