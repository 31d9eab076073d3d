//! Hostile entries (attacker-controlled producers): huge fields, binary values,
//! thousands of fields, invalid JSON, missing envelope fields, ids in the future.
//! None crashes or blocks a worker or the monitor; each is delivered raw or
//! dead-lettered with a reason, and the others keep flowing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use streambus::admin::dead_letter;
use streambus::admin::monitor::{self, MonitorOptions};
use streambus::{
    Backoff, CancellationToken, Client, Delivery, Message, Outcome, Producer, ProducerOptions,
    Worker, WorkerOptions,
};
use streambus_testkit::RedisServer;
use tokio::time::Instant;

#[tokio::test]
async fn hostile_entries_never_block_the_group() {
    let redis = RedisServer::start();
    let client = Client::open(&redis.url()).unwrap();
    let mut conn = client.connect().await.unwrap();
    let s = "hostile";
    let mut pipe = redis::pipe();
    // A 5 MB field.
    pipe.cmd("XADD")
        .arg(s)
        .arg("*")
        .arg("blob")
        .arg(vec![b'x'; 5 * 1024 * 1024]);
    // Binary, non-UTF-8 names and values.
    pipe.cmd("XADD")
        .arg(s)
        .arg("*")
        .arg(&b"\xff\xfename"[..])
        .arg(&b"\x00\x9f\x92\x96"[..]);
    // Thousands of fields.
    let mut many = redis::cmd("XADD");
    many.arg(s).arg("*");
    for i in 0..5000 {
        many.arg(format!("f{i}")).arg(i);
    }
    pipe.add_command(many);
    // Envelopes with invalid JSON, non-UTF-8 data, or missing fields.
    pipe.cmd("XADD")
        .arg(s)
        .arg("*")
        .arg("id")
        .arg("e1")
        .arg("data")
        .arg("{not json");
    pipe.cmd("XADD")
        .arg(s)
        .arg("*")
        .arg("id")
        .arg("e2")
        .arg("data")
        .arg(&b"\xff"[..]);
    pipe.cmd("XADD").arg(s).arg("*").arg("data").arg("{}");
    pipe.cmd("XADD").arg(s).arg("*").arg("id").arg("only-id");
    let _: Vec<String> = pipe.query_async(&mut conn).await.unwrap();
    // An id far in the future: later `*` ids come after it.
    let _: String = redis::cmd("XADD")
        .arg(s)
        .arg("99999999999999-0")
        .arg("id")
        .arg("future")
        .arg("data")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Good ones after all of that.
    let producer = Producer::new(&client, ProducerOptions::default())
        .await
        .unwrap();
    producer
        .publish_batch(s, (0..20).map(|i| Message::json(&i).unwrap()))
        .await
        .unwrap();
    let total: u64 = 8 + 20;

    let ok = Arc::new(AtomicU64::new(0));
    let counter = ok.clone();
    let stop = CancellationToken::new();
    let options = WorkerOptions {
        block: Duration::from_millis(100),
        reclaim_interval: Duration::from_millis(10),
        retry_backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(20)),
        max_deliveries: 2,
        ..Default::default()
    };
    let worker = Worker::new(
        &client,
        s,
        "g",
        WorkerOptions {
            consumer_name: Some("w1".into()),
            ..options
        },
    );
    let task = tokio::spawn(worker.run(
        move |d: Delivery| {
            let counter = counter.clone();
            async move {
                // A typical handler: envelopes must decode; raw entries are fine.
                match d.envelope() {
                    Err(e) => Outcome::dead_letter(e.to_string()),
                    Ok(Some(env)) if env.data_value().is_err() => Outcome::dead_letter("bad data"),
                    Ok(_) => {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let _ = d.entry.to_json(); // what tail and the relay print
                        Outcome::Ack
                    }
                }
            }
        },
        stop.clone(),
    ));

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let groups = streambus::admin::group::list_groups(&mut conn, s)
            .await
            .unwrap_or_default();
        let settled = groups
            .first()
            .is_some_and(|g| g.pending == 0 && g.lag == Some(0));
        if settled {
            break;
        }
        assert!(Instant::now() < deadline, "group never settled: {groups:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let report = task.await.unwrap().unwrap();
    let dead = dead_letter::count(&mut conn, s).await.unwrap();
    assert_eq!(ok.load(Ordering::SeqCst) + dead, total, "{report:?}");
    assert_eq!(dead, 2, "the invalid-JSON and non-UTF-8 envelopes");
    assert_eq!(report.panicked, 0);

    // The dead letters keep their original fields and a reason.
    let letters = dead_letter::list(&mut conn, s, None, 10).await.unwrap();
    for dl in &letters {
        assert!(dl.reason.as_deref().is_some_and(|r| !r.is_empty()));
        assert!(dl.fields.get("id").is_some());
    }

    // The monitor copes with all of it.
    let snap = monitor::snapshot(&mut conn, s, &MonitorOptions::default())
        .await
        .unwrap();
    assert_eq!(snap.length, total);
    serde_json::to_string(&snap).unwrap();
}

#[tokio::test]
async fn an_entry_with_thousands_of_fields_can_be_dead_lettered_and_replayed() {
    let redis = RedisServer::start();
    let client = Client::open(&redis.url()).unwrap();
    let mut conn = client.connect().await.unwrap();
    let s = "wide";
    let mut wide = redis::cmd("XADD");
    wide.arg(s).arg("*");
    for i in 0..6000 {
        wide.arg(format!("f{i}")).arg(i);
    }
    let _: String = wide.query_async(&mut conn).await.unwrap();
    let stop = CancellationToken::new();
    let worker = Worker::new(
        &client,
        s,
        "g",
        WorkerOptions {
            consumer_name: Some("w1".into()),
            ..Default::default()
        },
    );
    let task = tokio::spawn(worker.run(
        |_d: Delivery| async { Outcome::dead_letter("too wide to handle") },
        stop.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while dead_letter::count(&mut conn, s).await.unwrap() == 0 {
        assert!(Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    let dl = dead_letter::list(&mut conn, s, None, 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(dl.fields.len(), 6000);
    assert_eq!(dl.fields.get_str("f5999"), Some("5999"));
    assert_eq!(dl.reason.as_deref(), Some("too wide to handle"));
    let new_id = dead_letter::replay(&mut conn, s, dl.id)
        .await
        .unwrap()
        .unwrap();
    let back = streambus::read::last(&mut conn, s, 1).await.unwrap();
    assert_eq!(back[0].id, new_id);
    assert_eq!(back[0].fields.len(), 6000);
    assert_eq!(dead_letter::count(&mut conn, s).await.unwrap(), 0);
}
