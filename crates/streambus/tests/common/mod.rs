//! Shared by the library's integration tests: connect, read through a group
//! as a given consumer, count what a group has pending, wait for a condition.
//!
//! # Layout
//!
//! - this module: connections, one server per test binary, raw stream and
//!   group commands, waiting with a deadline;
//! - [`worker`]: starting a worker under a consumer name, with fast settings;
//! - [`group`]: building a group's state by hand (the monitor's tests);
//! - [`proxied`]: a Redis behind the testkit's `FaultProxy`, and the
//!   connection settings of the fault tests;
//! - [`fault_run`]: a worker and a steady publisher through a fault, and the
//!   figures of its recovery;
//! - [`steady`]: the Sentinel tests' steady publisher, recording each
//!   acknowledged publish with its time.
// Each test binary uses a part of it.
#![allow(dead_code)]

pub mod fault_run;
pub mod group;
pub mod proxied;
pub mod steady;
pub mod worker;

use std::sync::OnceLock;

use redis::streams::StreamReadReply;
use redis::Value;
use streambus::{Client, Connection, Message, Producer, ProducerOptions};
use streambus_testkit::RedisServer;

/// One server for the test binary, started on first use; every test uses its
/// own key prefix. (Each binary compiles this module, so each has its own.)
pub fn shared_server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

/// A client of `url` with the default connection settings.
pub fn client(url: &str) -> Client {
    Client::open(url).unwrap()
}

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

/// The JSON messages `0`, `1`, … for each number of `numbers`.
pub fn numbered<T: serde::Serialize>(
    numbers: impl IntoIterator<Item = T>,
) -> impl Iterator<Item = Message> {
    numbers.into_iter().map(|n| Message::json(&n).unwrap())
}

/// The length of `stream`.
pub async fn xlen(conn: &mut impl redis::aio::ConnectionLike, stream: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(conn)
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

/// Waits (5 s at most) until `stream` has a consumer group: a worker makes its
/// group as it starts, and the tests publish only once it is there.
pub async fn wait_for_group(conn: &Connection, stream: &str) {
    eventually(5, "the worker's group", || {
        let mut conn = conn.clone();
        async move {
            !streambus::admin::group::list_groups(&mut conn, stream)
                .await
                .unwrap_or_default()
                .is_empty()
        }
    })
    .await
}

/// Whether the first group of `stream` has read everything and has nothing
/// pending.
pub async fn settled(conn: &Connection, stream: &str) -> bool {
    let mut conn = conn.clone();
    let groups = streambus::admin::group::list_groups(&mut conn, stream)
        .await
        .unwrap_or_default();
    groups
        .first()
        .is_some_and(|g| g.lag == Some(0) && g.pending == 0)
}
