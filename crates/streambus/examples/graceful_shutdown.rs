//! **Guarantee shown: graceful shutdown loses nothing.** On Ctrl-C (or SIGTERM)
//! the worker stops reading, lets the handlers in flight finish within the grace
//! period, flushes their acknowledgements and returns. Whatever did not finish
//! stays pending and is taken back by the next run under the same name.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p streambus --example graceful_shutdown
//! # press Ctrl-C while it works, then run it again: it resumes where it stopped
//! ```

use std::time::Duration;

use streambus::{
    CancellationToken, Client, Delivery, Message, Producer, ProducerOptions, Worker, WorkerOptions,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = Client::open(&url)?;
    let stream = "example:tasks";
    let producer = Producer::new(&client, ProducerOptions::default()).await?;
    let tasks: Vec<Message> = (0..50)
        .map(|n| Message::json(&serde_json::json!({ "task": n })))
        .collect::<Result<_, _>>()?;
    producer.publish_batch(stream, tasks).await?;

    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("stopping: finishing the tasks in flight...");
        on_signal.cancel();
    });

    let options = WorkerOptions {
        concurrency: 4,
        shutdown_grace: Duration::from_secs(10),
        ..Default::default()
    };
    let worker = Worker::new(
        &client,
        stream,
        "runners",
        WorkerOptions {
            consumer_name: Some("example-1".into()),
            ..options
        },
    );
    let report = worker
        .run(
            |d: Delivery| async move {
                let task: serde_json::Value = d.decode()?;
                tokio::time::sleep(Duration::from_millis(300)).await; // the work
                println!("done {}", task["task"]);
                Ok::<_, streambus::Error>(())
            },
            stop,
        )
        .await?;
    println!("stopped cleanly: {report:?}");
    Ok(())
}
