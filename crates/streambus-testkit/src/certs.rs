//! TLS test certificates, generated in-process with `rcgen` (ring backend).

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

use crate::TestkitError;

/// The test CA's certificate.
pub(crate) const CA_CERT: &str = "ca.crt";
/// The test CA's private key.
pub(crate) const CA_KEY: &str = "ca.key";
/// The server's certificate (signed by the CA).
pub(crate) const SERVER_CERT: &str = "server.crt";
/// The server's private key.
pub(crate) const SERVER_KEY: &str = "server.key";
/// A client certificate (signed by the CA).
pub(crate) const CLIENT_CERT: &str = "client.crt";
/// The client certificate's private key.
pub(crate) const CLIENT_KEY: &str = "client.key";
/// An unrelated CA's certificate, for "wrong CA" tests.
pub(crate) const OTHER_CA_CERT: &str = "other-ca.crt";

/// Write the CA, server, client and other-CA files into `dir`, unless
/// they are already there (a restart keeps the same certificates).
///
/// Every server of one process gets the same files: the certificates are
/// generated once and cached. Servers that talk TLS to each other (a replica
/// to its primary, sentinels to both and to one another) must trust each
/// other's CA, and a client trusting one server's `ca.crt` then trusts them
/// all. `other-ca.crt` stays a CA that signed none of them.
pub(crate) fn write_test_certs(dir: &Path) -> Result<(), TestkitError> {
    if dir.join(OTHER_CA_CERT).is_file() {
        return Ok(());
    }
    static FILES: OnceLock<Result<Vec<(&'static str, String)>, String>> = OnceLock::new();
    let files = FILES
        .get_or_init(|| generate().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| TestkitError::Certificates(e.clone()))?;
    for (name, pem) in files {
        fs::write(dir.join(name), pem)?;
    }
    Ok(())
}

/// `(file name, PEM)` for every file; `other-ca.crt` last, as the marker
/// that all files were written.
fn generate() -> Result<Vec<(&'static str, String)>, rcgen::Error> {
    let ca = CertifiedIssuer::self_signed(ca_params("streambus-testkit CA"), KeyPair::generate()?)?;
    let other_ca = CertifiedIssuer::self_signed(
        ca_params("streambus-testkit other CA"),
        KeyPair::generate()?,
    )?;

    let server_key = KeyPair::generate()?;
    let server = leaf_params(
        "localhost",
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?
    .signed_by(&server_key, &ca)?;

    let client_key = KeyPair::generate()?;
    let client = leaf_params(
        "streambus-testkit client",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    )?
    .signed_by(&client_key, &ca)?;

    Ok(vec![
        (CA_CERT, ca.pem()),
        (CA_KEY, ca.key().serialize_pem()),
        (SERVER_CERT, server.pem()),
        (SERVER_KEY, server_key.serialize_pem()),
        (CLIENT_CERT, client.pem()),
        (CLIENT_KEY, client_key.serialize_pem()),
        (OTHER_CA_CERT, other_ca.pem()),
    ])
}

/// A CA that may sign certificates, valid 2020–2100.
fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params);
    params
}

/// An end-entity certificate for `names` (IP addresses become IP SANs).
fn leaf_params(
    common_name: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertificateParams, rcgen::Error> {
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params);
    Ok(params)
}

/// Fixed, generous validity: tests never depend on the clock.
fn set_validity(params: &mut CertificateParams) {
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2100, 1, 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_all_files_once() {
        let dir = tempfile::tempdir().unwrap();
        write_test_certs(dir.path()).unwrap();
        for name in [
            CA_CERT,
            CA_KEY,
            SERVER_CERT,
            SERVER_KEY,
            CLIENT_CERT,
            CLIENT_KEY,
            OTHER_CA_CERT,
        ] {
            let text = fs::read_to_string(dir.path().join(name)).unwrap();
            assert!(text.starts_with("-----BEGIN "), "{name}: {text}");
        }
        let before = fs::read(dir.path().join(SERVER_CERT)).unwrap();
        write_test_certs(dir.path()).unwrap();
        assert_eq!(fs::read(dir.path().join(SERVER_CERT)).unwrap(), before);
    }

    #[test]
    fn every_directory_shares_one_ca_and_the_other_ca_differs() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_test_certs(a.path()).unwrap();
        write_test_certs(b.path()).unwrap();
        let read = |dir: &tempfile::TempDir, name| fs::read(dir.path().join(name)).unwrap();
        assert_eq!(read(&a, CA_CERT), read(&b, CA_CERT));
        assert_eq!(read(&a, SERVER_CERT), read(&b, SERVER_CERT));
        assert_ne!(read(&a, CA_CERT), read(&a, OTHER_CA_CERT));
    }
}
