//! Shared by the library's integration tests: connect, read through a group
//! as a given consumer, and count what a group has pending.
// Each test binary uses a part of it.
#![allow(dead_code)]

use redis::streams::StreamReadReply;
use redis::Value;
use streambus::{Client, Connection, Producer, ProducerOptions};

/// A multiplexed connection to `url`.
pub async fn connect(url: &str) -> Connection {
    Client::open(url).unwrap().connect().await.unwrap()
}

/// A producer with default options on `url`.
pub async fn producer(url: &str) -> Producer {
    let client = Client::open(url).unwrap();
    Producer::new(&client, ProducerOptions::default())
        .await
        .unwrap()
}

/// `XREADGROUP ... COUNT count STREAMS stream from` as `consumer`; the ids read.
/// `from` is `>` for new entries or `0` to re-read (and so refresh) its own.
pub async fn read_as(
    conn: &mut Connection,
    stream: &str,
    group: &str,
    consumer: &str,
    count: usize,
    from: &str,
) -> Vec<String> {
    let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(stream)
        .arg(from)
        .query_async(conn)
        .await
        .unwrap();
    reply
        .map(|r| {
            r.keys
                .into_iter()
                .flat_map(|k| k.ids.into_iter().map(|i| i.id))
                .collect()
        })
        .unwrap_or_default()
}

/// The number of pending entries of `group` (first field of XPENDING's summary).
pub async fn pending_count(conn: &mut Connection, stream: &str, group: &str) -> i64 {
    let v: Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .unwrap();
    match v {
        Value::Array(parts) => match parts[0] {
            Value::Int(n) => n,
            _ => panic!("{parts:?}"),
        },
        other => panic!("{other:?}"),
    }
}

/// Polls `check` until it holds; panics after `deadline`
/// ([`streambus_testkit::wait::wait_for`], on tokio's clock).
pub async fn wait_for<F, Fut>(deadline: std::time::Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    streambus_testkit::wait::wait_for(deadline, "a condition", check).await
}

/// Polls `cond` until it holds; panics after `secs` seconds naming `what`
/// ([`streambus_testkit::wait::wait_for`]).
pub async fn eventually<F, Fut>(secs: u64, what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    streambus_testkit::wait::wait_for(std::time::Duration::from_secs(secs), what, cond).await
}
