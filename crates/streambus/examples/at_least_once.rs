//! **Guarantee shown: at-least-once.** Every published event is handled at least
//! once, even when the handler fails: a failed event stays pending and is retried
//! with backoff until it succeeds. Nothing is acknowledged before its handler
//! succeeded.
//!
//! Run against a Redis of your own (never a production one: it writes
//! `example:orders`):
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p streambus --example at_least_once
//! ```

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streambus::{
    Backoff, CancellationToken, Client, Delivery, Message, Outcome, Producer, ProducerOptions,
    Worker, WorkerOptions,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = Client::open(&url)?;
    let stream = "example:orders";

    let producer = Producer::new(&client, ProducerOptions::default()).await?;
    let batch = (0..100).map(|n| Message::json(&serde_json::json!({ "order": n })));
    let batch: Vec<Message> = batch.collect::<Result<_, _>>()?;
    producer.publish_batch(stream, batch).await?;
    println!("published 100 orders to {stream}");

    let handled = Arc::new(Mutex::new(HashSet::new()));
    let seen = handled.clone();
    let stop = CancellationToken::new();
    let done = stop.clone();
    let options = WorkerOptions {
        retry_backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(1)),
        reclaim_interval: Duration::from_millis(50),
        ..Default::default()
    };
    let worker = Worker::new(
        &client,
        stream,
        "billing",
        WorkerOptions {
            consumer_name: Some("example-1".into()),
            ..options
        },
    );
    let report = worker
        .run(
            move |d: Delivery| {
                let seen = seen.clone();
                let done = done.clone();
                async move {
                    let order: serde_json::Value = d.decode()?;
                    // Every third order fails on its first delivery: it is retried.
                    if order["order"].as_i64().unwrap_or(0) % 3 == 0 && d.deliveries == 1 {
                        return Ok(Outcome::retry("payment service timed out"));
                    }
                    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                    seen.insert(order["order"].to_string());
                    if seen.len() >= 100 {
                        done.cancel();
                    }
                    Ok::<_, streambus::Error>(Outcome::Ack)
                }
            },
            stop,
        )
        .await?;
    println!(
        "handled {} distinct orders; {} retries; {} acknowledged",
        handled.lock().unwrap_or_else(|p| p.into_inner()).len(),
        report.retried,
        report.acked
    );
    Ok(())
}
