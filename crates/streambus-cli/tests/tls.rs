//! The command line over TLS: --redis-ca (or ?ca= in the URL), a wrong CA's
//! clear error, and mutual TLS with --redis-cert/--redis-key.

mod common;

use std::time::Duration;

use common::{run, sb, text};
use streambus_testkit::{RedisServer, ServerOptions, TlsOptions};

const DEADLINE: Duration = Duration::from_secs(20);

#[test]
fn publish_and_tail_over_tls() {
    let redis = RedisServer::start_with(ServerOptions {
        tls: Some(TlsOptions {
            require_client_cert: true,
        }),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let url = redis.tls_url();
    let ca = redis.ca_cert_path();
    let (cert, key) = (redis.client_cert_path(), redis.client_key_path());
    let tls = [
        "--redis-ca",
        ca.to_str().unwrap(),
        "--redis-cert",
        cert.to_str().unwrap(),
        "--redis-key",
        key.to_str().unwrap(),
    ];

    let mut args = vec!["--redis", url.as_str()];
    args.extend(tls);
    args.extend(["publish", "tls:s", r#"{"over":"tls"}"#]);
    let out = run(sb(dir.path(), &args), DEADLINE);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let mut args = vec!["--redis", url.as_str()];
    args.extend(tls);
    args.extend(["tail", "tls:s"]);
    let out = run(sb(dir.path(), &args), DEADLINE);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(r#""over":"tls""#));

    // A CA that did not sign the server's certificate: one clear line.
    let other = redis.other_ca_cert_path();
    let out = run(
        sb(
            dir.path(),
            &[
                "--redis",
                &url,
                "--redis-ca",
                other.to_str().unwrap(),
                "tail",
                "tls:s",
            ],
        ),
        DEADLINE,
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("certificate") && err.contains("CA"), "{err}");

    // TLS settings on a plain URL are a mistake worth saying.
    let out = run(
        sb(
            dir.path(),
            &[
                "--redis",
                "redis://127.0.0.1:1",
                "--redis-ca",
                ca.to_str().unwrap(),
                "tail",
                "x",
            ],
        ),
        DEADLINE,
    );
    assert!(
        text(&out.stderr).contains("not a TLS URL"),
        "{}",
        text(&out.stderr)
    );
}
