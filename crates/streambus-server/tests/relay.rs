//! The WebSocket relay against a real server on a free port and a real Redis.

mod common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use streambus::EntryId;
use streambus_server::ServerConfig;
use streambus_testkit::wait::wait_for;
use streambus_testkit::RedisServer;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use common::{config, producer, publish_n, server, state, stream, RunningServer, TOKEN};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest wait for any one thing in these tests.
const LIMIT: Duration = Duration::from_secs(20);

async fn connect(srv: &RunningServer, query: &str) -> Ws {
    let (ws, resp) = tokio_tungstenite::connect_async(srv.ws_request(query))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

/// What a client saw: entry ids in order, control messages, and how it ended.
#[derive(Debug, Default)]
struct Seen {
    ids: Vec<EntryId>,
    control: Vec<Value>,
    close: Option<(u16, String)>,
}

/// The `entry_id` of an entry message, found without parsing the whole payload
/// (unoptimized test builds parse JSON slowly, and the reader must keep up).
fn entry_id(text: &str) -> Option<EntryId> {
    const KEY: &str = "\"entry_id\":\"";
    let start = text.find(KEY)? + KEY.len();
    let len = text[start..].find('"')?;
    Some(text[start..start + len].parse().unwrap())
}

/// Reads until `n` entries arrived, or the socket closed.
async fn read(ws: &mut Ws, n: usize) -> Seen {
    let mut seen = Seen::default();
    let work = async {
        while seen.ids.len() < n {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => match entry_id(&t) {
                    Some(id) => seen.ids.push(id),
                    None => seen.control.push(serde_json::from_str(&t).unwrap()),
                },
                Some(Ok(Message::Close(frame))) => {
                    seen.close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    };
    tokio::time::timeout(LIMIT, work)
        .await
        .expect("the relay delivers in time");
    seen
}

#[tokio::test]
async fn two_clients_get_every_entry_in_order() {
    let redis = RedisServer::start();
    let s = stream("fanout");
    let srv = server(&redis, config(&[&s])).await;
    let mut a = connect(&srv, &format!("streams={s}")).await;
    let mut b = connect(&srv, &format!("streams={s}")).await;
    let p = producer(&redis).await;
    let ids = publish_n(&p, &s, 1000, 20).await;
    let (sa, sb) = tokio::join!(read(&mut a, 1000), read(&mut b, 1000));
    assert_eq!(sa.ids, ids);
    assert_eq!(sb.ids, ids);

    // The message is the JSON line of `streambus tail`.
    publish_n(&p, &s, 1, 0).await;
    let Some(Ok(Message::Text(t))) = a.next().await else {
        panic!("a text message")
    };
    let v: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(v["stream"], s.as_str());
    assert_eq!(v["data"]["n"], 0);
    assert!(v["fields"]["data"].is_string() && v["id"].is_string());
}

#[tokio::test]
async fn resume_replays_exactly_the_entries_after_the_id_then_goes_live() {
    let redis = RedisServer::start();
    let s = stream("resume");
    let other = stream("resume-other");
    let srv = server(&redis, config(&[&s, &other])).await;
    let p = producer(&redis).await;
    let before = publish_n(&p, &s, 10, 0).await;
    let mut ws = connect(&srv, &format!("streams={s}&from={}", before[4])).await;
    let replayed = read(&mut ws, 5).await;
    assert_eq!(replayed.ids, before[5..]);
    let after = publish_n(&p, &s, 5, 0).await;
    let live = read(&mut ws, 5).await;
    assert_eq!(live.ids, after);

    // The Last-Event-ID header works too, and a client can follow two streams.
    let mut req = srv.ws_request(&format!("streams={s},{other}"));
    req.headers_mut()
        .insert("last-event-id", before[8].to_string().parse().unwrap());
    let (mut ws2, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let seen = read(&mut ws2, 6).await;
    assert_eq!(seen.ids[..1], before[9..]);
    assert_eq!(seen.ids[1..], after);
    let o = publish_n(&p, &other, 1, 0).await;
    assert_eq!(read(&mut ws2, 1).await.ids, o);
}

#[tokio::test]
async fn bad_requests_are_refused_with_json() {
    let redis = RedisServer::start();
    let s = stream("bad");
    let srv = server(
        &redis,
        ServerConfig {
            max_ws_clients: 1,
            ..config(&[&s])
        },
    )
    .await;
    let status = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{e}"),
        Ok(_) => 101,
    };
    let try_q = |q: String| {
        let req = srv.ws_request(&q);
        async move { status(tokio_tungstenite::connect_async(req).await.map(|_| ())) }
    };
    assert_eq!(try_q(format!("streams={s}&from=nope")).await, 400);
    assert_eq!(try_q("streams=".into()).await, 400);
    assert_eq!(try_q("streams=elsewhere".into()).await, 404);
    // A page on another origin may not open it.
    let mut req = srv.ws_request(&format!("streams={s}"));
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    assert_eq!(
        status(tokio_tungstenite::connect_async(req).await.map(|_| ())),
        403
    );
    // Token as a subprotocol (browsers), echoed back.
    let mut req = format!("ws://{}/ws?streams={s}", srv.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("bearer.{TOKEN}").parse().unwrap(),
    );
    req.headers_mut()
        .insert("origin", format!("http://{}", srv.addr).parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        format!("bearer.{TOKEN}").as_str()
    );
    // The one client slot is taken: the next gets 503.
    assert_eq!(try_q(format!("streams={s}")).await, 503);
    drop(ws);
    wait_for(LIMIT, "the slot to free up", || async {
        try_q(format!("streams={s}")).await == 101
    })
    .await;
}

fn vm_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_cut_off_and_others_keep_up() {
    const N: usize = 6000;
    let redis = RedisServer::start();
    let s = stream("stall");
    let srv = server(
        &redis,
        ServerConfig {
            ws_client_queue: 1024,
            // Long enough that the cut-off is the lag rule, not the timeout.
            ws_send_timeout: Duration::from_secs(60),
            ..config(&[&s])
        },
    )
    .await;
    let mut normal = connect(&srv, &format!("streams={s}")).await;
    // The stalled client: a tiny receive buffer, and it does not read.
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(srv.addr).await.unwrap();
    let (mut stalled, _) = tokio_tungstenite::client_async(
        srv.ws_request(&format!("streams={s}")),
        MaybeTlsStream::Plain(tcp),
    )
    .await
    .unwrap();

    let rss_before = vm_rss_kb();
    let reader = tokio::spawn(async move { read(&mut normal, N).await });
    let p = producer(&redis).await;
    // ~12 MB: more than the kernel's socket buffers can hide.
    let ids = publish_n(&p, &s, N, 2000).await;
    let seen = reader.await.unwrap();
    assert_eq!(seen.ids.len(), N, "the normal client got everything");
    assert_eq!(seen.ids, ids);
    let rss_after = vm_rss_kb();
    let growth_mb = rss_after.saturating_sub(rss_before) / 1024;
    assert!(
        growth_mb < 50,
        "memory grew by {growth_mb} MB ({rss_before} kB -> {rss_after} kB)"
    );

    // Now the stalled client reads: what was buffered, then the cut-off.
    let cut = read(&mut stalled, N).await;
    assert!(cut.ids.len() < N, "the stalled client was not cut off");
    let lagged = cut
        .control
        .iter()
        .find(|v| v["type"] == "lagged")
        .unwrap_or_else(|| panic!("no lagged message: {:?}", cut.control));
    let resync: EntryId = lagged["resync_from"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        Some(&resync),
        cut.ids.last(),
        "resync from the last id sent"
    );
    let (code, reason) = cut.close.expect("a close frame");
    assert_eq!(code, 1008);
    assert_eq!(reason, format!("lagged: resync from {resync}"));
    // In order, with no gap, up to the cut.
    assert_eq!(cut.ids, ids[..cut.ids.len()]);
}

#[tokio::test]
async fn shutdown_closes_sockets_with_a_close_frame() {
    let redis = RedisServer::start();
    let s = stream("shutdown");
    let st = state(&redis, config(&[&s])).await;
    let mut srv = RunningServer::start(st.clone()).await;
    let mut a = connect(&srv, &format!("streams={s}")).await;
    // A second client, which answers the close frame as a browser does.
    let mut b = connect(&srv, &format!("streams={s}")).await;
    let p = producer(&redis).await;
    publish_n(&p, &s, 3, 0).await;
    assert_eq!(read(&mut a, 3).await.ids.len(), 3);
    let closing = tokio::spawn(async move {
        let seen = read(&mut b, usize::MAX).await;
        // Answer the close, as a well-behaved client does.
        let _ = b.close(None).await;
        seen
    });
    srv.shutdown().await;
    let seen_a = read(&mut a, usize::MAX).await;
    let (code, reason) = seen_a.close.expect("close frame for a");
    assert_eq!(CloseCode::from(code), CloseCode::Away);
    assert_eq!(reason, "server shutting down");
    let seen_b = closing.await.unwrap();
    assert_eq!(
        seen_b.close.expect("close frame for b").1,
        "server shutting down"
    );
    let _ = a.send(Message::Close(None)).await;
}

#[tokio::test]
async fn on_demand_readers_stop_when_their_last_client_leaves() {
    let redis = RedisServer::start();
    let s = stream("ondemand");
    // No configured streams: any stream may be asked for.
    let st = state(
        &redis,
        ServerConfig {
            relay_block: Duration::from_millis(50),
            ..config(&[])
        },
    )
    .await;
    let srv = RunningServer::start(st.clone()).await;
    assert_eq!(st.relay_streams(), 0);
    let mut ws = connect(&srv, &format!("streams={s}")).await;
    assert_eq!(st.relay_streams(), 1);
    let p = producer(&redis).await;
    let ids = publish_n(&p, &s, 3, 0).await;
    assert_eq!(read(&mut ws, 3).await.ids, ids);
    ws.close(None).await.unwrap();
    drop(ws);
    wait_for(LIMIT, "the reader to stop", || async {
        st.relay_streams() == 0
    })
    .await;
}
