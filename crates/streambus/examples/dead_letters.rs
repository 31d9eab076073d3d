//! **Guarantee shown: poison messages never block the group.** An event that
//! keeps failing is moved to the dead-letter stream `{<stream>}:dlq` after
//! `max_deliveries` attempts, atomically with its acknowledgement, together with
//! the reason; the others keep flowing. A dead letter can be inspected and
//! replayed onto the stream.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p streambus --example dead_letters
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use streambus::admin::dead_letter;
use streambus::{
    Backoff, CancellationToken, Client, Delivery, Message, Outcome, Producer, ProducerOptions,
    Worker, WorkerOptions,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = Client::open(&url)?;
    let stream = "example:alerts";
    let mut conn = client.connect().await?;
    let producer = Producer::new(&client, ProducerOptions::default()).await?;
    for host in ["web-1", "db-1", "POISON", "web-2"] {
        producer
            .publish(stream, Message::json(&serde_json::json!({ "host": host }))?)
            .await?;
    }

    let ok = Arc::new(AtomicU32::new(0));
    let counter = ok.clone();
    let stop = CancellationToken::new();
    let options = WorkerOptions {
        max_deliveries: 3,
        retry_backoff: Backoff::new(Duration::from_millis(20), Duration::from_millis(100)),
        reclaim_interval: Duration::from_millis(20),
        ..Default::default()
    };
    let worker = Worker::new(
        &client,
        stream,
        "enricher",
        WorkerOptions {
            consumer_name: Some("example-1".into()),
            ..options
        },
    );
    let running = tokio::spawn(worker.run(
        move |d: Delivery| {
            let counter = counter.clone();
            async move {
                let alert: serde_json::Value = d.decode()?;
                if alert["host"] == "POISON" {
                    return Ok(Outcome::retry(format!(
                        "cannot enrich host {}",
                        alert["host"]
                    )));
                }
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<_, streambus::Error>(Outcome::Ack)
            }
        },
        stop.clone(),
    ));
    while dead_letter::count(&mut conn, stream).await? == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let report = running.await??;
    println!(
        "handled {} alerts, dead-lettered {}",
        ok.load(Ordering::SeqCst),
        report.dead_lettered
    );
    for dl in dead_letter::list(&mut conn, stream, None, 10).await? {
        println!(
            "dead letter {} (was {:?}): {:?} after {:?} deliveries",
            dl.id, dl.source_id, dl.reason, dl.deliveries
        );
        let new_id = dead_letter::replay(&mut conn, stream, dl.id).await?;
        println!("replayed as {new_id:?}");
    }
    Ok(())
}
