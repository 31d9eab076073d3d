//! The scaler's rate and suggestion: the reference package's arithmetic by
//! hand, then the same from a live group of a real `redis-server` (from
//! `streambus-testkit`).

mod common;

use streambus::admin::scaler::{self, Suggestion};
use streambus_testkit::RedisServer;

use common::group::{ack, pel, setup, snapshot};
use common::{connect, read_as};

#[tokio::test]
async fn scaler_matches_the_reference_package() {
    // Hand-computed cases: (undelivered, pending, consumers, scale-out %,
    // scale-in %) -> (rate, suggestion).
    let cases = [
        ((11, 83, 2, 50.0, 20.0), (13.253, Suggestion::In)),
        ((11, 83, 1, 50.0, 20.0), (13.253, Suggestion::NoScale)),
        ((5, 0, 2, 50.0, 10.0), (0.0, Suggestion::Out)),
        ((0, 0, 2, 50.0, 10.0), (0.0, Suggestion::NoScale)),
        ((1000, 3, 2, 50.0, 10.0), (100.0, Suggestion::Out)),
        ((1, 1000, 2, 50.0, 10.0), (1.0, Suggestion::In)),
    ];
    for (args, expected) in cases {
        let (undelivered, pending, consumers, scale_out, scale_in) = args;
        assert_eq!(
            scaler::rate_and_suggestion(undelivered, pending, consumers, scale_out, scale_in),
            expected,
            "{args:?}"
        );
    }
    assert_eq!(
        scaler::reference_sentence(11, 83, 2, 60.0, 20.0),
        "Consumers should be IN as stream length (11) / pending (83) rate is 13.253%"
    );

    // The same from a live group: 83 pending over two consumers, 11 undelivered.
    let server = RedisServer::start();
    let mut conn = connect(&server.url()).await;
    let (s, g) = setup(&mut conn, "scale", 94).await;
    read_as(&mut conn, &s, &g, "a", 40, ">").await;
    read_as(&mut conn, &s, &g, "b", 43, ">").await;
    let snap = snapshot(&mut conn, &s).await;
    assert_eq!(
        scaler::reference_decision(&snap.groups[0], 60.0, 20.0),
        Some((13.253, Suggestion::In))
    );
    let sample = scaler::sample(&mut conn, &s, &g).await.unwrap();
    assert_eq!(
        (
            sample.entries_added,
            sample.entries_read,
            sample.lag,
            sample.pending,
            sample.consumers
        ),
        (Some(94), Some(83), Some(11), 83, 2)
    );
    // Fresh every time: ack everything and ask again.
    let all: Vec<String> = pel(&mut conn, &s, &g).await.into_keys().collect();
    ack(&mut conn, &s, &g, &all).await;
    let snap = snapshot(&mut conn, &s).await;
    assert_eq!(
        scaler::reference_decision(&snap.groups[0], 60.0, 20.0),
        Some((0.0, Suggestion::Out))
    );
    let later = scaler::sample(&mut conn, &s, &g).await.unwrap();
    assert_eq!((later.pending, later.entries_read), (0, Some(83)));
}
