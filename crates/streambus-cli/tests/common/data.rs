//! Entries put into Redis (straight, or with `streambus publish`), and what
//! Redis says about streams, groups and consumers. Each reply shape is parsed
//! here, once.

use std::ops::Range;

use serde_json::Value;
use streambus_testkit::RedisServer;

use super::{ok, run_with, sb_redis, STEP};

/// XADDs `n` entries with a field `n` = `from`, `from + 1`, ... (and a
/// field `payload` = `ARGV[3]` when given), in one round trip.
const ADD: &str = "local ids = {} \
    for i = 0, tonumber(ARGV[2]) - 1 do \
        local f = {'n', tonumber(ARGV[1]) + i} \
        if ARGV[3] then f[3] = 'payload' f[4] = ARGV[3] end \
        ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', unpack(f)) \
    end return ids";

/// Adds `n` entries (`n` = `from`, `from + 1`, ...) to `stream` in one call,
/// straight to Redis (plain fields, no envelope); returns their ids.
pub fn add(redis: &RedisServer, stream: &str, from: u32, n: u32) -> Vec<String> {
    eval_add(redis, stream, from, n, None)
}

/// Adds `n` entries with a 2 KiB payload each (see [`add`]).
pub fn add_big(redis: &RedisServer, stream: &str, from: u32, n: u32) -> Vec<String> {
    eval_add(redis, stream, from, n, Some(&"x".repeat(2048)))
}

fn eval_add(
    redis: &RedisServer,
    stream: &str,
    from: u32,
    n: u32,
    payload: Option<&str>,
) -> Vec<String> {
    let (from, count) = (from.to_string(), n.to_string());
    let mut args = vec!["EVAL", ADD, "1", stream, &from, &count];
    args.extend(payload);
    let out = redis.cli(&args);
    let ids: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(ids.len(), n as usize, "XADD: {out}");
    ids
}

/// `{"n": i}` for each i in `range`, one JSON line each.
pub fn numbered(range: Range<u32>) -> String {
    range.map(|i| format!("{{\"n\":{i}}}\n")).collect()
}

/// `{"n": i}` for i in 0..n, one JSON line each, with two blank lines (one
/// of spaces) after every `every`-th: they publish nothing.
pub fn numbered_with_blanks(n: u32, every: u32) -> String {
    let mut input = String::new();
    for i in 0..n {
        input.push_str(&format!("{{\"n\":{i}}}\n"));
        if i % every == 0 {
            input.push_str("\n  \n");
        }
    }
    input
}

/// Publishes `{"n": i}` for each i in `range` with `streambus publish`
/// (stdin); returns the ids.
pub fn publish_n(server: &RedisServer, stream: &str, range: Range<u32>) -> Vec<String> {
    let out = ok(&run_with(
        sb_redis(server, &["publish", stream]),
        numbered(range).as_bytes(),
        STEP,
    ));
    out.lines().map(str::to_owned).collect()
}

/// The `n` of a printed entry (`data.n`).
#[track_caller]
pub fn data_n(v: &Value) -> u64 {
    v["data"]["n"]
        .as_u64()
        .unwrap_or_else(|| panic!("no data.n in {v}"))
}

/// The length of stream `key`.
pub fn xlen(server: &RedisServer, key: &str) -> u64 {
    server.cli(&["XLEN", key]).parse().unwrap()
}

/// Delivers up to `count` new entries of `group` to `consumer` (creating it),
/// and acknowledges none: as if the consumer had crashed.
pub fn deliver(server: &RedisServer, stream: &str, group: &str, consumer: &str, count: u32) {
    server.cli(&[
        "XREADGROUP",
        "GROUP",
        group,
        consumer,
        "COUNT",
        &count.to_string(),
        "STREAMS",
        stream,
        ">",
    ]);
}

/// A server holding the reference package's example: 94 entries in `s`, 83
/// delivered to two consumers of group `g` (c1 40, c2 43) and not
/// acknowledged, 11 undelivered.
pub fn reference_server() -> RedisServer {
    let server = RedisServer::start();
    add(&server, "s", 0, 94);
    server.cli(&["XGROUP", "CREATE", "s", "g", "0"]);
    deliver(&server, "s", "g", "c1", 40);
    deliver(&server, "s", "g", "c2", 43);
    server
}

/// Whether `key` has group `group` (XINFO GROUPS: a `name` line, then the
/// name).
pub fn has_group(server: &RedisServer, key: &str, group: &str) -> bool {
    let out = server.cli(&["XINFO", "GROUPS", key]);
    let lines: Vec<&str> = out.lines().collect();
    lines.windows(2).any(|w| w == ["name", group])
}

/// The number of pending entries of a group (first line of XPENDING's summary).
pub fn pending(server: &RedisServer, stream: &str, group: &str) -> u64 {
    let out = server.cli(&["XPENDING", stream, group]);
    out.lines().next().unwrap().trim().parse().unwrap()
}

/// One entry of the extended form of XPENDING.
#[derive(Debug)]
pub struct PendingEntry {
    pub id: String,
    pub consumer: String,
    pub deliveries: u64,
}

/// The pending entries of a group (of one consumer, if given), up to 1000:
/// `XPENDING key group - + 1000 [consumer]`.
pub fn pending_entries(
    server: &RedisServer,
    stream: &str,
    group: &str,
    consumer: Option<&str>,
) -> Vec<PendingEntry> {
    let mut args = vec!["XPENDING", stream, group, "-", "+", "1000"];
    args.extend(consumer);
    let out = server.cli(&args);
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len() % 4, 0, "XPENDING: {out}");
    // Four lines per entry: id, consumer, idle, deliveries.
    lines
        .chunks(4)
        .map(|c| PendingEntry {
            id: c[0].to_owned(),
            consumer: c[1].to_owned(),
            deliveries: c[3].parse().unwrap_or_else(|e| panic!("{e}: {out}")),
        })
        .collect()
}

/// `XINFO CONSUMERS` as (name, pending, idle ms).
pub fn consumers(server: &RedisServer, stream: &str, group: &str) -> Vec<(String, u64, u64)> {
    let out = server.cli(&["XINFO", "CONSUMERS", stream, group]);
    let mut found: Vec<(String, u64, u64)> = Vec::new();
    let mut lines = out.lines();
    while let (Some(k), Some(v)) = (lines.next(), lines.next()) {
        match k {
            "name" => found.push((v.to_owned(), 0, 0)),
            "pending" => found.last_mut().unwrap().1 = v.parse().unwrap(),
            "idle" => found.last_mut().unwrap().2 = v.parse().unwrap(),
            _ => {}
        }
    }
    found
}

/// How long `consumer` has been idle, in ms.
pub fn idle_ms(server: &RedisServer, stream: &str, group: &str, consumer: &str) -> u64 {
    consumers(server, stream, group)
        .into_iter()
        .find(|c| c.0 == consumer)
        .unwrap_or_else(|| panic!("no consumer {consumer}"))
        .2
}
