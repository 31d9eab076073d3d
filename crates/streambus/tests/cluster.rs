//! streambus on a real local Redis Cluster (3 masters): producer, consumer,
//! worker, reclaim, dead letters, monitor.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streambus::admin::dead_letter;
use streambus::admin::monitor::{self, MonitorOptions};
use streambus::{
    keys, Backoff, CancellationToken, Client, Delivery, Message, Outcome, Producer,
    ProducerOptions, Worker, WorkerOptions,
};
use streambus_testkit::RedisCluster;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_works_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0);
    let client = Client::open(&cluster.url()).unwrap();
    assert!(client.is_cluster());
    let conn = client.connect().await.unwrap();

    // Streams in different slots, published to concurrently: the producer's
    // pipelines must not mix slots.
    let streams: Vec<String> = (0..6).map(|i| format!("c:stream{i}")).collect();
    let slots: HashSet<u16> = streams.iter().map(|s| keys::slot(s)).collect();
    assert!(slots.len() > 1);
    let producer = Producer::new(&client, ProducerOptions::default())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for s in &streams {
        for i in 0..100 {
            let p = producer.clone();
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                p.publish(&s, Message::json(&i).unwrap()).await.unwrap()
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    for s in &streams {
        producer
            .publish_batch(s, (100..150).map(|i| Message::json(&i).unwrap()))
            .await
            .unwrap();
    }

    // A worker per stream; entry 7 of each is poison (dead-lettered by the
    // script, which touches the stream and its {stream}:dlq in one slot).
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for s in &streams {
        let seen = seen.clone();
        let worker = Worker::new(
            &client,
            s.as_str(),
            "g",
            WorkerOptions {
                consumer_name: Some("w1".into()),
                block: Duration::from_millis(100),
                reclaim_interval: Duration::from_millis(20),
                retry_backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(20)),
                max_deliveries: 2,
                ..Default::default()
            },
        );
        workers.push(tokio::spawn(worker.run(
            move |d: Delivery| {
                let seen = seen.clone();
                async move {
                    let n: i64 = d.decode().unwrap();
                    if n == 7 {
                        return Outcome::retry("seven always fails");
                    }
                    seen.lock().unwrap().insert((d.entry.stream.to_string(), n));
                    Outcome::Ack
                }
            },
            stop.clone(),
        )));
    }
    let mut c = conn.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = seen.lock().unwrap().len();
        let mut dead = 0;
        for s in &streams {
            dead += dead_letter::count(&mut c, s).await.unwrap();
        }
        if done == 6 * 149 && dead == 6 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "handled {done}, dead-lettered {dead}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    for w in workers {
        let report = w.await.unwrap().unwrap();
        assert_eq!(report.dead_lettered, 1);
    }
    // An operation across slots is named as such, with what to do.
    let mut multi = redis::pipe();
    multi
        .atomic()
        .cmd("XLEN")
        .arg("c:stream0")
        .cmd("XLEN")
        .arg("c:stream1");
    let e = multi
        .query_async::<redis::Value>(&mut c)
        .await
        .map_err(|e| streambus::Error::from_redis("MULTI over two streams", e))
        .unwrap_err();
    assert_eq!(e.kind(), streambus::ErrorKind::CrossSlot, "{e}");
    assert!(e.to_string().contains("hash tag"), "{e}");

    for s in &streams {
        let snap = monitor::snapshot(&mut c, s, &MonitorOptions::default())
            .await
            .unwrap();
        assert_eq!(snap.length, 150);
        assert_eq!(snap.groups[0].pending, 0);
        assert_eq!(snap.groups[0].lag, Some(0));
    }
}
