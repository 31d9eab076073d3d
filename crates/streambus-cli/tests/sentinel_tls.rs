//! The command line on a `rediss+sentinel://` URL, against real TLS
//! sentinels and servers that require client certificates: the TLS files in
//! the URL's query or as `--redis-ca/--redis-cert/--redis-key`, and a wrong
//! CA's one clear line.

mod common;

use std::time::{Duration, Instant};

use common::{run, sb, text};
use streambus_testkit::{RedisSentinel, SentinelOptions, ServerOptions, TlsOptions};

const DEADLINE: Duration = Duration::from_secs(20);

#[test]
fn publish_and_tail_through_tls_sentinels() {
    let set = RedisSentinel::start_with(SentinelOptions {
        server: ServerOptions {
            tls: Some(TlsOptions {
                require_client_cert: true,
            }),
            ..Default::default()
        },
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let stream = format!("{}s", streambus_testkit::unique_prefix("cli-sentinel-tls"));

    // The TLS files in the URL.
    let url = set.url();
    let out = run(
        sb(
            dir.path(),
            &["--redis", &url, "publish", &stream, r#"{"over":"tls"}"#],
        ),
        DEADLINE,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The same files as options, on the bare URL.
    let bare = url.split('?').next().unwrap();
    let primary = set.primary();
    let (ca, cert, key) = (
        primary.ca_cert_path(),
        primary.client_cert_path(),
        primary.client_key_path(),
    );
    let tls = [
        "--redis-ca",
        ca.to_str().unwrap(),
        "--redis-cert",
        cert.to_str().unwrap(),
        "--redis-key",
        key.to_str().unwrap(),
    ];
    let mut args = vec!["--redis", bare];
    args.extend(tls);
    args.extend(["tail", stream.as_str()]);
    let out = run(sb(dir.path(), &args), DEADLINE);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(r#""over":"tls""#),
        "{}",
        text(&out.stdout)
    );

    // A CA that signed none of the certificates: one clear line, at once.
    let other = primary.other_ca_cert_path();
    let mut args = vec!["--redis", bare, "--redis-ca", other.to_str().unwrap()];
    args.extend(&tls[2..]);
    args.extend(["tail", stream.as_str()]);
    let started = Instant::now();
    let out = run(sb(dir.path(), &args), DEADLINE);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("certificate") && err.contains("CA"), "{err}");
    assert!(err.contains("sentinel 127.0.0.1:"), "{err}");
    // Not after asking again for the whole connect timeout (3 s).
    assert!(started.elapsed() < Duration::from_secs(3), "{err}");
}
