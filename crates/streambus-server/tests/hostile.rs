//! Hostile entries through the relay and the API: huge fields, binary values,
//! thousands of fields, invalid JSON, missing envelope fields. None crashes the
//! relay; what follows them keeps flowing to every client.

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use streambus_testkit::RedisServer;
use tokio_tungstenite::tungstenite::Message;

use common::{config, producer, publish_n, server, stream};

#[tokio::test]
async fn the_relay_survives_hostile_entries() {
    let redis = RedisServer::start();
    let s = stream("hostile");
    let srv = server(&redis, config(&[&s])).await;
    let req = srv.ws_request(&format!("streams={s}"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();

    let client = streambus::Client::open(&redis.url()).unwrap();
    let mut conn = client.connect().await.unwrap();
    let mut pipe = redis::pipe();
    pipe.cmd("XADD")
        .arg(&s)
        .arg("*")
        .arg("blob")
        .arg(vec![b'x'; 2 * 1024 * 1024]);
    pipe.cmd("XADD")
        .arg(&s)
        .arg("*")
        .arg(&b"\xff\xfe"[..])
        .arg(&b"\x00\x9f\x92"[..]);
    let mut wide = redis::cmd("XADD");
    wide.arg(&s).arg("*");
    for i in 0..5000 {
        wide.arg(format!("f{i}")).arg(i);
    }
    pipe.add_command(wide);
    pipe.cmd("XADD")
        .arg(&s)
        .arg("*")
        .arg("id")
        .arg("x")
        .arg("data")
        .arg("{not json");
    pipe.cmd("XADD")
        .arg(&s)
        .arg("*")
        .arg("data")
        .arg("<script>alert(1)</script>");
    let _: Vec<String> = pipe.query_async(&mut conn).await.unwrap();
    let after = publish_n(&producer(&redis).await, &s, 5, 0).await;

    // Every entry arrives (the huge one may be refused by a size limit, but then
    // the client is told and the others still come); the normal ones after the
    // hostile ones arrive in order.
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < after.len() {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("entries after the hostile ones arrive")
            .expect("the socket stays open")
            .unwrap();
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(&t).expect("valid JSON on the wire");
            if let Some(id) = v["entry_id"].as_str() {
                let id: streambus::EntryId = id.parse().unwrap();
                if after.contains(&id) {
                    got.push(id);
                }
            }
        }
    }
    assert_eq!(got, after);

    // The API copes too.
    let resp = srv.raw_get(&format!("/api/streams/{s}/dlq")).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}
