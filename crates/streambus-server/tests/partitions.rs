//! A partitioned stream served from a real local Redis Cluster (3 masters, one
//! cluster for the file): `/api/streams` shows it as one stream with a
//! per-partition breakdown, and the WebSocket relay delivers the entries of
//! every partition, labelled with the logical stream and the partition.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use streambus::admin::group::create_group;
use streambus::partition::{PartitionedProducer, Partitions};
use streambus::{Client, Message, ProducerOptions, StartId};
use streambus_server::ServerConfig;
use streambus_testkit::RedisCluster;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use common::{state_with, RunningServer};

const PARTITIONS: u32 = 4;
const LIMIT: Duration = Duration::from_secs(20);

/// The status and JSON body of an authorized GET of `path` over a socket.
async fn get_json(srv: &RunningServer, path: &str) -> (u16, Value) {
    let resp = srv.raw_get(path).await;
    let code: u16 = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // The body may be chunked: take the JSON document inside.
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map_or(body.len(), |e| e + 1);
    let v = serde_json::from_str(&body[start..end]).unwrap_or(Value::Null);
    (code, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_stream_is_shown_and_relayed_as_one() {
    let cluster = RedisCluster::start(3, 0);
    let client = Client::open(&cluster.url()).unwrap();
    let stream = format!("{}orders", streambus_testkit::unique_prefix("part"));
    let partitions = Partitions::new(&stream, PARTITIONS).unwrap();
    let config = ServerConfig {
        partitions: [(stream.clone(), PARTITIONS)].into(),
        ..common::config(&[&stream])
    };
    let state = state_with(client.clone(), config).await;
    // One pinned reader per partition.
    assert_eq!(state.relay_streams(), PARTITIONS as usize);
    let srv = RunningServer::start(state).await;

    // A WebSocket client of the logical stream, before anything is published.
    let req = srv.ws_request(&format!("streams={stream}"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();

    // Resuming is refused for a partitioned stream, with a reason.
    let bad = srv.ws_request(&format!("streams={stream}&from=0-1"));
    match tokio_tungstenite::connect_async(bad).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 400);
        }
        other => panic!("expected 400, got {:?}", other.map(|(_, r)| r.status())),
    }

    // 40 entries with 10 keys, over every partition; a group on each.
    let mut conn = client.connect().await.unwrap();
    for key in partitions.keys() {
        create_group(&mut conn, key, "billing", StartId::Beginning)
            .await
            .unwrap();
    }
    let producer =
        PartitionedProducer::new(&client, partitions.clone(), ProducerOptions::default())
            .await
            .unwrap();
    let sent = producer
        .publish_batch((0..40).map(|n| {
            Message::json(&serde_json::json!({ "n": n }))
                .unwrap()
                .with_key(format!("k{}", n % 10))
        }))
        .await
        .unwrap();
    let used: HashSet<&str> = sent.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(used.len(), PARTITIONS as usize, "keys over every partition");

    // The relay delivers all 40, labelled with the logical stream and partition.
    let mut seen = HashSet::new();
    let read = async {
        while seen.len() < sent.len() {
            let Some(Ok(WsMessage::Text(t))) = ws.next().await else {
                panic!("the socket ended");
            };
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["stream"], stream.as_str(), "{v}");
            let p = v["partition"].as_u64().unwrap() as usize;
            let id = v["entry_id"].as_str().unwrap().to_owned();
            let key = partitions.keys()[p].clone();
            assert!(sent.contains(&(key.clone(), id.parse().unwrap())), "{v}");
            assert!(seen.insert((key, id)), "duplicate {v}");
        }
    };
    tokio::time::timeout(LIMIT, read)
        .await
        .expect("every entry relayed");

    // /api/streams: one logical stream, totals = sums over the breakdown.
    let (code, body) = get_json(&srv, "/api/streams").await;
    assert_eq!(code, 200, "{body}");
    let list = body["streams"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{body}");
    let s = &list[0];
    assert_eq!(s["stream"], stream.as_str());
    assert_eq!(s["exists"], true);
    assert_eq!(s["length"], 40);
    assert_eq!(s["partition_count"], PARTITIONS);
    let parts = s["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), PARTITIONS as usize);
    let sum: u64 = parts.iter().map(|p| p["length"].as_u64().unwrap()).sum();
    assert_eq!(sum, 40);
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p["partition"], i);
        assert_eq!(p["key"], partitions.keys()[i].as_str());
    }
    let g = &s["groups"][0];
    assert_eq!(g["name"], "billing");
    assert_eq!(g["partitions"], PARTITIONS);
    assert_eq!(g["pending"], 0);
    assert_eq!(g["lag"], 40);

    // Per-group routes are per partition: a clear 400.
    let (code, body) = get_json(&srv, &format!("/api/streams/{stream}/groups/billing")).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("per partition"),
        "{body}"
    );
    drop(ws);
}
