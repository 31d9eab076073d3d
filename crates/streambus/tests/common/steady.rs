//! A steady publisher through a failover (the Sentinel tests, plain and
//! TLS): about 200 envelopes a second, each acknowledged one recorded with
//! its time, so that a test can tell which fell in the failover's window.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use streambus::{Client, EntryId, ErrorKind, Message, Producer, ProducerOptions};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One acknowledged publish.
#[derive(Clone, Debug)]
pub struct Acked {
    pub envelope: String,
    pub entry: EntryId,
    /// When it was acknowledged.
    pub at: Instant,
}

/// Publishes about 200 envelopes a second until `stop`, recording each one
/// acknowledged. One that fails `Unconfirmed` or `Unavailable` is published
/// again with the same envelope; any other failure fails the test.
pub async fn publish_steadily(
    client: Client,
    stream: String,
    acked: Arc<Mutex<Vec<Acked>>>,
    stop: CancellationToken,
) {
    let producer = Producer::new(&client, ProducerOptions::default())
        .await
        .unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    // Steady, not a burst of the ticks missed while a publish waited out the
    // failover: the window must hold only what it held.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0.. {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut message = Message::json(&serde_json::json!({ "n": i })).unwrap();
        let envelope = message.envelope_id().unwrap().to_owned();
        let entry = loop {
            match producer.publish(&stream, message).await {
                Ok(id) => break id,
                Err(mut e)
                    if matches!(e.kind(), ErrorKind::Unconfirmed | ErrorKind::Unavailable) =>
                {
                    message = e.take_unpublished().expect("the message comes back");
                }
                Err(e) => panic!("publish failed: {e}"),
            }
        };
        acked.lock().unwrap().push(Acked {
            envelope,
            entry,
            at: Instant::now(),
        });
    }
}
