//! TLS (`rediss://`) against a real redis-server with certificates the test kit
//! generates: the right CA works, a wrong one fails clearly, mutual TLS works,
//! and the whole produce → consume → ack path runs over TLS.

use std::time::Duration;

use streambus::TlsOptions;
use streambus::{
    Client, ConnectOptions, Consumer, ConsumerOptions, ErrorKind, Message, Producer,
    ProducerOptions,
};
use streambus_testkit::{RedisServer, ServerOptions, TlsOptions as ServerTls};

fn tls_server(require_client_cert: bool) -> RedisServer {
    RedisServer::start_with(ServerOptions {
        tls: Some(ServerTls {
            require_client_cert,
        }),
        ..Default::default()
    })
}

fn with_ca(ca: std::path::PathBuf) -> ConnectOptions {
    ConnectOptions {
        tls: TlsOptions {
            ca_file: Some(ca),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn produce_consume_ack_over_tls() {
    let redis = tls_server(false);
    let client = Client::open_with(&redis.tls_url(), with_ca(redis.ca_cert_path())).unwrap();
    let producer = Producer::new(&client, ProducerOptions::default())
        .await
        .unwrap();
    let ids = producer
        .publish_batch("tls:s", (0..50).map(|i| Message::json(&i).unwrap()))
        .await
        .unwrap();
    let mut consumer = Consumer::new(
        &client,
        "tls:s",
        "g",
        ConsumerOptions {
            consumer_name: Some("c1".into()),
            batch_size: 100,
            max_wait: Duration::from_millis(50),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let batch = consumer.next_batch().await.unwrap();
    assert_eq!(batch.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    let acked = consumer
        .ack(&batch.iter().map(|e| e.id).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(acked, 50);

    // The CA can also be given in the URL.
    let url = format!("{}?ca={}", redis.tls_url(), redis.ca_cert_path().display());
    Client::open(&url).unwrap().connect().await.unwrap();
}

#[tokio::test]
async fn a_wrong_ca_is_refused_with_a_clear_error() {
    let redis = tls_server(false);
    let client = Client::open_with(&redis.tls_url(), with_ca(redis.other_ca_cert_path())).unwrap();
    let err = client.connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err:?}");
    let chain = format!("{err}: {:?}", std::error::Error::source(&err));
    assert!(
        err.to_string().contains("CA"),
        "the error says what to do: {err}"
    );
    assert!(
        chain.to_lowercase().contains("certificate"),
        "the error should say it is about the certificate: {chain}"
    );
    // Without any CA, the system roots do not know the test CA either.
    assert!(Client::open(&redis.tls_url())
        .unwrap()
        .connect()
        .await
        .is_err());
    // The insecure option (tests only) skips verification.
    Client::open(&format!("{}?insecure", redis.tls_url()))
        .unwrap()
        .connect()
        .await
        .unwrap();
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let redis = tls_server(true);
    let without = Client::open_with(&redis.tls_url(), with_ca(redis.ca_cert_path())).unwrap();
    assert!(
        without.connect().await.is_err(),
        "a client without a certificate is refused"
    );
    let with = Client::open_with(
        &redis.tls_url(),
        ConnectOptions {
            tls: TlsOptions {
                ca_file: Some(redis.ca_cert_path()),
                client_cert_file: Some(redis.client_cert_path()),
                client_key_file: Some(redis.client_key_path()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    Producer::new(&with, ProducerOptions::default())
        .await
        .unwrap()
        .publish("tls:m", Message::json(&1).unwrap())
        .await
        .unwrap();
}
