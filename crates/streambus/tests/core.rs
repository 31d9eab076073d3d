//! Producer, consumer, groups and the envelope against a real redis-server.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use streambus::admin::group;
use streambus::{
    Client, Connection, Consumer, ConsumerOptions, EntryId, ErrorKind, Message, Producer,
    ProducerOptions, Retention, StartId,
};
use streambus_testkit::{unique_prefix, RedisServer, ServerOptions};

use common::{numbered, pending_count, shared_server as server, xlen};

async fn connect() -> (Client, Connection) {
    let client = Client::open(&server().url()).unwrap();
    let conn = client.connect().await.unwrap();
    (client, conn)
}

async fn producer(client: &Client) -> Producer {
    Producer::new(client, ProducerOptions::default())
        .await
        .unwrap()
}

/// Raw XRANGE as another program would run it: `[(id, [(field, value)])]`.
async fn xrange(conn: &mut Connection, key: &str) -> Vec<(String, Vec<(String, String)>)> {
    let v: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    v
}

/// A consumer named `name` that reads batches of `batch_size`, waiting
/// `max_wait` at most for a batch to fill.
fn opts(name: &str, batch_size: usize, max_wait: Duration) -> ConsumerOptions {
    ConsumerOptions {
        consumer_name: Some(name.into()),
        batch_size,
        max_wait,
        ..Default::default()
    }
}

/// A consumer of `group` on `stream` (the group made if missing).
async fn consumer(
    client: &Client,
    stream: &str,
    group: &str,
    options: ConsumerOptions,
) -> Consumer {
    Consumer::new(client, stream, group, options).await.unwrap()
}

#[tokio::test]
async fn envelope_is_readable_by_reference_code() {
    let (client, mut conn) = connect().await;
    let s = format!("{}alerts", unique_prefix("env"));
    let payload = serde_json::json!({"rule": "ssh-bruteforce", "severity": 7, "host": "<b>x</b>"});
    let msg = Message::json(&payload).unwrap();
    let envelope_id = msg.envelope_id().unwrap().to_owned();
    let id = producer(&client).await.publish(&s, msg).await.unwrap();

    let entries = xrange(&mut conn, &s).await;
    assert_eq!(entries.len(), 1);
    let (raw_id, fields) = &entries[0];
    assert_eq!(raw_id, &id.to_string());
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["id", "timestamp", "data"]);
    // What the reference consumer does: json.loads(data["data"]).
    let data: serde_json::Value = serde_json::from_str(&fields[2].1).unwrap();
    assert_eq!(data, payload);
    assert_eq!(fields[0].1, envelope_id);
    assert!(fields[1].1.ends_with("+00:00"), "{}", fields[1].1);
}

#[tokio::test]
async fn reference_and_raw_entries_are_delivered() {
    let (client, mut conn) = connect().await;
    let s = format!("{}mixed", unique_prefix("interop"));
    // What the reference publisher writes (plain XADD of its three fields) ...
    let _: String = redis::cmd("XADD")
        .arg(&s)
        .arg("*")
        .arg("id")
        .arg("3b241101-e2bb-4255-8caf-4136c566a962")
        .arg("timestamp")
        .arg("2024-05-01T12:30:45.123456")
        .arg("data")
        .arg(r#"{"alert": "port scan"}"#)
        .query_async(&mut conn)
        .await
        .unwrap();
    // ... and a raw sensor reading as in the walrus tutorial.
    let _: String = redis::cmd("XADD")
        .arg(&s)
        .arg("*")
        .arg("sensor_id")
        .arg("sensor1")
        .arg("temp")
        .arg("0.42")
        .arg("humidity")
        .arg("0.7")
        .query_async(&mut conn)
        .await
        .unwrap();

    let mut c = consumer(&client, &s, "g", opts("c1", 10, Duration::from_millis(50))).await;
    let batch = c.next_batch().await.unwrap();
    assert_eq!(batch.len(), 2);
    let env = batch[0].envelope().unwrap().expect("an envelope");
    assert_eq!(env.id, "3b241101-e2bb-4255-8caf-4136c566a962");
    assert_eq!(env.data_value().unwrap()["alert"], "port scan");
    assert!(env.published_at().is_some());
    assert!(batch[1].envelope().unwrap().is_none());
    assert_eq!(batch[1].fields.get_str("sensor_id"), Some("sensor1"));
    let line = batch[1].to_json();
    assert_eq!(line["fields"]["temp"], "0.42");
    assert_eq!(c.ack(&[batch[0].id, batch[1].id]).await.unwrap(), 2);
}

#[tokio::test]
async fn concurrent_publishes_are_all_written_in_order_per_caller() {
    let (client, mut conn) = connect().await;
    let s = format!("{}many", unique_prefix("concurrent"));
    let p = producer(&client).await;
    let mut tasks = Vec::new();
    for t in 0..50 {
        let p = p.clone();
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..200 {
                let m = Message::json(&serde_json::json!({"t": t, "i": i})).unwrap();
                ids.push(p.publish(&s, m).await.unwrap());
            }
            ids
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        let ids = t.await.unwrap();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "one caller's ids ascend"
        );
        all.extend(ids);
    }
    assert_eq!(all.len(), 10_000);
    assert_eq!(xlen(&mut conn, &s).await, 10_000);
}

#[tokio::test]
async fn publish_batch_returns_ids_in_order() {
    let (client, mut conn) = connect().await;
    let s = format!("{}batch", unique_prefix("batch"));
    // 12 pipelines of 128, 8 at once: still appended in the order given.
    let msgs = numbered(0..1500);
    let ids = producer(&client)
        .await
        .publish_batch(&s, msgs)
        .await
        .unwrap();
    assert_eq!(ids.len(), 1500);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(xlen(&mut conn, &s).await, 1500);
    let entries = xrange(&mut conn, &s).await;
    for (i, (_, fields)) in entries.iter().enumerate() {
        assert_eq!(fields[2].1, i.to_string(), "entry {i} out of order");
    }
}

/// The same when the caller's cooperative budget (tokio's, 128 per turn) runs
/// out in the middle of the call: a pipeline stopped by it before it was
/// queued on the connection must still be written before the later ones.
/// Each round spends a different part of the budget first, so that it runs
/// out at a different pipeline. Before the pipelines ran `unconstrained`,
/// rounds wrote later pipelines first (seen under CPU load in a benchmark:
/// entries of positions 768-999 of a call ahead of 512-767).
#[tokio::test]
async fn publish_batch_keeps_order_when_the_callers_budget_runs_out() {
    let (client, mut conn) = connect().await;
    let s = format!("{}budget", unique_prefix("batch"));
    let p = producer(&client).await;
    let mut disordered = Vec::new();
    for round in 0..24usize {
        // Ready receives spend one unit of budget each, without yielding.
        let spend = 100 + round;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..spend {
            tx.send(()).unwrap();
        }
        for _ in 0..spend {
            rx.recv().await.unwrap();
        }
        let ids = p.publish_batch(&s, numbered(0..1000)).await.unwrap();
        if !ids.windows(2).all(|w| w[0] < w[1]) {
            disordered.push(round);
        }
    }
    assert!(
        disordered.is_empty(),
        "rounds written out of order: {disordered:?}"
    );
    assert_eq!(xlen(&mut conn, &s).await, 24_000);
}

#[tokio::test]
async fn retention_trims_in_the_xadd() {
    let (client, mut conn) = connect().await;
    let prefix = unique_prefix("retention");
    let exact = Producer::new(
        &client,
        ProducerOptions {
            retention: Retention::MaxLen {
                len: 100,
                exact: true,
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let s1 = format!("{prefix}exact");
    exact.publish_batch(&s1, numbered(0..1000)).await.unwrap();
    assert_eq!(xlen(&mut conn, &s1).await, 100);

    let approx = Producer::new(
        &client,
        ProducerOptions {
            retention: Retention::max_len(100),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let s2 = format!("{prefix}approx");
    approx.publish_batch(&s2, numbered(0..1000)).await.unwrap();
    let n = xlen(&mut conn, &s2).await;
    assert!((100..1000).contains(&n), "approximate trim kept {n}");

    // Age-based: entries with ids from 1970 are older than any max age.
    // Approximate MINID trimming removes whole radix-tree nodes (100 entries by
    // default) once every entry in them is too old, so write 150 old entries: the
    // first node is then entirely old and must go.
    let s3 = format!("{prefix}age");
    let mut pipe = redis::pipe();
    for ms in 1..=150 {
        pipe.cmd("XADD")
            .arg(&s3)
            .arg(format!("{ms}-0"))
            .arg("old")
            .arg("1");
    }
    let _: Vec<String> = pipe.query_async(&mut conn).await.unwrap();
    let by_age = Producer::new(
        &client,
        ProducerOptions {
            retention: Retention::MaxAge(Duration::from_secs(3600)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    by_age
        .publish(&s3, Message::json(&"new").unwrap())
        .await
        .unwrap();
    let first = xrange(&mut conn, &s3).await;
    let old_left = first.iter().filter(|(_, f)| f[0].0 == "old").count();
    assert!(
        old_left <= 50,
        "the first node of old entries should be trimmed, {old_left} old left"
    );
    assert_eq!(first.last().unwrap().1[0].0, "id");
}

#[tokio::test]
async fn oversized_messages_are_refused_before_redis() {
    let (client, mut conn) = connect().await;
    let s = format!("{}big", unique_prefix("big"));
    let p = producer(&client).await;
    let big = "x".repeat(1024 * 1024 + 1);
    let err = p
        .publish(&s, Message::raw([("blob", big.clone())]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge);
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    // A batch with one oversized message writes nothing at all.
    let batch = vec![
        Message::json(&1).unwrap(),
        Message::raw([("blob", big)]),
        Message::json(&2).unwrap(),
    ];
    let err = p.publish_batch(&s, batch).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&s)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0);
    // Just under the limit is fine.
    let limit_ok = "y".repeat(1024 * 1024 - 4);
    p.publish(&s, Message::raw([("blob", limit_ok)]))
        .await
        .unwrap();
}

#[tokio::test]
async fn group_setup_is_idempotent_and_honours_start() {
    let (client, mut conn) = connect().await;
    let s = format!("{}groups", unique_prefix("groups"));
    let p = producer(&client).await;
    let first = p.publish(&s, Message::json(&"old").unwrap()).await.unwrap();
    assert!(
        group::create_group(&mut conn, &s, "from-start", StartId::Beginning)
            .await
            .unwrap()
    );
    assert!(
        !group::create_group(&mut conn, &s, "from-start", StartId::Beginning)
            .await
            .unwrap()
    );
    group::create_group(&mut conn, &s, "only-new", StartId::End)
        .await
        .unwrap();
    group::create_group(&mut conn, &s, "after-first", StartId::After(first))
        .await
        .unwrap();
    let second = p.publish(&s, Message::json(&"new").unwrap()).await.unwrap();

    for (g, expect) in [
        ("from-start", vec![first, second]),
        ("only-new", vec![second]),
        ("after-first", vec![second]),
    ] {
        let mut c = consumer(&client, &s, g, opts("c", 10, Duration::from_millis(20))).await;
        let got: Vec<EntryId> = c.next_batch().await.unwrap().iter().map(|e| e.id).collect();
        assert_eq!(got, expect, "group {g}");
    }
    let infos = group::list_groups(&mut conn, &s).await.unwrap();
    let names: Vec<&str> = infos.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["after-first", "from-start", "only-new"]);
    let fs = infos.iter().find(|g| g.name == "from-start").unwrap();
    assert_eq!(fs.pending, 2);
    assert_eq!(fs.lag, Some(0));
    assert!(group::destroy_group(&mut conn, &s, "only-new")
        .await
        .unwrap());
    assert!(!group::destroy_group(&mut conn, &s, "only-new")
        .await
        .unwrap());
}

#[tokio::test]
async fn next_batch_returns_when_full_or_after_max_wait() {
    let (client, _) = connect().await;
    let s = format!("{}batches", unique_prefix("batches"));
    let p = producer(&client).await;
    p.publish_batch(&s, numbered(0..25)).await.unwrap();
    let max_wait = Duration::from_millis(300);
    let mut c = consumer(&client, &s, "g", opts("c", 10, max_wait)).await;
    // Full batches come back without waiting for max_wait.
    let t = Instant::now();
    assert_eq!(c.next_batch().await.unwrap().len(), 10);
    assert_eq!(c.next_batch().await.unwrap().len(), 10);
    assert!(t.elapsed() < max_wait, "full batches must not wait");
    // A partial batch waits for max_wait, collecting what arrives meanwhile.
    let t = Instant::now();
    let late = {
        let p = p.clone();
        let s = s.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            p.publish(&s, Message::json(&"late").unwrap())
                .await
                .unwrap()
        })
    };
    let batch = c.next_batch().await.unwrap();
    let late_id = late.await.unwrap();
    assert!(t.elapsed() >= max_wait);
    assert_eq!(batch.len(), 6, "5 waiting + 1 published during the wait");
    assert_eq!(batch.last().unwrap().id, late_id);
    // Nothing at all: empty after max_wait, not an error.
    assert!(c.next_batch().await.unwrap().is_empty());
}

#[tokio::test]
async fn blocking_reads_outlast_the_default_response_timeout() {
    // redis-rs gives up on a reply after 500 ms by default; a BLOCK longer than
    // that must still end in an empty read, not a timeout error.
    let (client, _) = connect().await;
    let s = format!("{}slow", unique_prefix("block"));
    let mut c = consumer(&client, &s, "g", opts("c", 10, Duration::from_millis(1200))).await;
    let t = Instant::now();
    let got = c.read(10, Some(Duration::from_millis(1200))).await.unwrap();
    assert!(got.is_empty());
    assert!(t.elapsed() >= Duration::from_millis(1200));
}

#[tokio::test]
async fn a_restarted_consumer_resumes_its_own_pending_entries() {
    let (client, mut conn) = connect().await;
    let s = format!("{}resume", unique_prefix("resume"));
    let p = producer(&client).await;
    let ids = p.publish_batch(&s, numbered(0..8)).await.unwrap();
    {
        let mut c = consumer(
            &client,
            &s,
            "g",
            opts("worker-1", 5, Duration::from_millis(20)),
        )
        .await;
        let got = c.next_batch().await.unwrap();
        assert_eq!(got.len(), 5);
        // Dies here: nothing acknowledged.
    }
    let more = p
        .publish(&s, Message::json(&"after").unwrap())
        .await
        .unwrap();
    let mut c = consumer(
        &client,
        &s,
        "g",
        opts("worker-1", 3, Duration::from_millis(20)),
    )
    .await;
    assert!(c.is_recovering());
    let mut seen = Vec::new();
    loop {
        let batch = c.next_batch().await.unwrap();
        if batch.is_empty() {
            break;
        }
        seen.extend(batch.iter().map(|e| e.id));
        c.ack(&batch.iter().map(|e| e.id).collect::<Vec<_>>())
            .await
            .unwrap();
    }
    let mut expect = ids.clone();
    expect.push(more);
    assert_eq!(seen, expect, "own pending first, in order, then new ones");
    assert!(!c.is_recovering());
    assert_eq!(pending_count(&mut conn, &s, "g").await, 0);
}

#[tokio::test]
async fn ack_and_delete_removes_entries() {
    let (client, mut conn) = connect().await;
    let s = format!("{}ackdel", unique_prefix("ackdel"));
    producer(&client)
        .await
        .publish_batch(&s, numbered(0..4))
        .await
        .unwrap();
    let mut c = consumer(&client, &s, "g", opts("c", 4, Duration::from_millis(20))).await;
    let batch = c.next_batch().await.unwrap();
    let ids: Vec<EntryId> = batch.iter().map(|e| e.id).collect();
    assert_eq!(c.ack_and_delete(&ids[..2]).await.unwrap(), 2);
    assert_eq!(xlen(&mut conn, &s).await, 2);
    assert_eq!(c.ack(&ids[2..]).await.unwrap(), 2);
    assert_eq!(
        c.ack(&ids[2..]).await.unwrap(),
        0,
        "acking twice is harmless"
    );
}

#[tokio::test]
async fn errors_say_what_is_wrong() {
    let (client, mut conn) = connect().await;
    let prefix = unique_prefix("errors");
    // No such group, and not allowed to create it.
    let s = format!("{prefix}s");
    let err = Consumer::new(
        &client,
        &s,
        "missing",
        ConsumerOptions {
            consumer_name: Some("c".into()),
            create_group: false,
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .next_batch()
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoGroup, "{err}");
    assert!(err.to_string().contains("create the group"), "{err}");

    // A key that is not a stream.
    let k = format!("{prefix}string");
    let _: () = redis::cmd("SET")
        .arg(&k)
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = producer(&client)
        .await
        .publish(&k, Message::json(&1).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongType, "{err}");
    let err = group::list_groups(&mut conn, &k).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongType, "{err}");
    let err = group::list_groups(&mut conn, &format!("{prefix}nothing"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoStream, "{err}");

    // Nothing listening.
    let port = streambus_testkit::free_port();
    let err = Client::open(&format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn wrong_password_is_an_auth_error_that_hides_the_password() {
    let server = RedisServer::start_with(ServerOptions {
        password: Some("right-horse-battery".into()),
        ..Default::default()
    });
    let url = format!("redis://:wrong-staple-9@127.0.0.1:{}", server.port());
    let err = Client::open(&url).unwrap().connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains("wrong-staple-9") && !shown.contains("right-horse"),
        "{shown}"
    );
    assert!(shown.contains("password"), "{shown}");
    // And the right one works.
    Client::open(&server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let no_auth = format!("redis://127.0.0.1:{}", server.port());
    let err = Client::open(&no_auth).unwrap().connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err:?}");
}

#[tokio::test]
async fn plain_reads_do_not_touch_groups() {
    let (client, conn) = connect().await;
    let s = format!("{}plain", unique_prefix("read"));
    let ids = producer(&client)
        .await
        .publish_batch(&s, numbered(0..10))
        .await
        .unwrap();
    let mut c = conn.clone();
    let after: Vec<EntryId> = streambus::read::range_after(&mut c, &s, Some(ids[6]), 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(after, ids[7..]);
    let tail: Vec<EntryId> = streambus::read::last(&mut c, &s, 3)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(tail, ids[7..]);
    assert_eq!(
        streambus::read::last_id(&mut c, &s).await.unwrap(),
        Some(ids[9])
    );
    let mut blocking = client
        .connect_blocking(Duration::from_millis(50))
        .await
        .unwrap();
    let none = streambus::read::read_after(
        &mut blocking,
        &s,
        ids[9],
        10,
        Some(Duration::from_millis(50)),
    )
    .await
    .unwrap();
    assert!(none.is_empty());
    let some = streambus::read::read_after(&mut blocking, &s, ids[4], 2, None)
        .await
        .unwrap();
    assert_eq!(some.iter().map(|e| e.id).collect::<Vec<_>>(), ids[5..7]);
}

#[tokio::test]
async fn preflight_reports_the_servers_settings() {
    let (_, mut conn) = connect().await;
    let settings = streambus::admin::preflight::inspect(&mut conn)
        .await
        .unwrap();
    let (major, _, _) = settings.version.unwrap();
    assert!(major >= 7);
    // The test server runs without persistence (the testkit's default).
    assert_eq!(settings.appendonly, Some(false));
    assert!(settings.warnings().iter().any(|w| w.contains("appendonly")));
}
