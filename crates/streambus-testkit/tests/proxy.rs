//! `FaultProxy` in front of a real `redis-server`, spoken to in raw RESP.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use streambus_testkit::wait::wait_for;
use streambus_testkit::{FaultProxy, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

const PONG: &[u8] = b"+PONG\r\n";
/// How long a silent connection is given to prove it is silent.
const SILENCE: Duration = Duration::from_millis(300);
/// Upper bound for things that should happen at once (a reply, a reset).
const PROMPT: Duration = Duration::from_secs(5);

/// A server and a proxy in front of it.
async fn setup() -> (RedisServer, FaultProxy) {
    let server = RedisServer::start();
    let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, server.port()));
    let proxy = FaultProxy::start(upstream).await.expect("start the proxy");
    (server, proxy)
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    TcpStream::connect(proxy.addr())
        .await
        .expect("connect to the proxy")
}

/// Send `PING` and wait (at most `wait`) for exactly `+PONG\r\n`.
async fn ping(conn: &mut TcpStream, wait: Duration) -> Result<(), String> {
    conn.write_all(b"PING\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = [0u8; PONG.len()];
    match timeout(wait, conn.read_exact(&mut reply)).await {
        Err(_) => Err(format!("no reply within {wait:?}")),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Ok(Ok(_)) if reply == PONG => Ok(()),
        Ok(Ok(_)) => Err(format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&reply)
        )),
    }
}

/// The connection is open and has nothing to read: not closed, not reset.
fn assert_open_and_silent(conn: &TcpStream) {
    let mut buf = [0u8; 64];
    match conn.try_read(&mut buf) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Ok(0) => panic!("connection was closed (EOF)"),
        Ok(n) => panic!("connection received {n} bytes"),
        Err(e) => panic!("connection failed: {e}"),
    }
}

/// `connected_clients` of the server, not counting the `redis-cli` asking.
fn upstream_clients(server: &RedisServer) -> usize {
    let info = server.cli(&["INFO", "clients"]);
    let count = info
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .unwrap_or_else(|| panic!("no connected_clients in {info}"));
    count.trim().parse::<usize>().expect("a number") - 1
}

#[tokio::test]
async fn pass_through_forwards() {
    let (server, proxy) = setup().await;
    assert_eq!(proxy.url(), format!("redis://127.0.0.1:{}", proxy.port()));
    assert_eq!(proxy.addr().port(), proxy.port());
    assert_ne!(proxy.port(), server.port());

    let mut conn = connect(&proxy).await;
    ping(&mut conn, PROMPT).await.unwrap();
    // Pipelined requests come back complete and in order.
    conn.write_all(b"PING\r\nECHO hello\r\nPING\r\n")
        .await
        .unwrap();
    let expected = b"+PONG\r\n$5\r\nhello\r\n+PONG\r\n";
    let mut reply = vec![0u8; expected.len()];
    timeout(PROMPT, conn.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, expected);
    assert_eq!(proxy.open_connections(), 1);
    assert_eq!(proxy.connections_accepted(), 1);
    assert_eq!(upstream_clients(&server), 1);

    // A client's close reaches the server, and the proxy forgets the connection.
    drop(conn);
    wait_for(PROMPT, "the proxy to close the connection", || async {
        proxy.open_connections() == 0
    })
    .await;
    assert_eq!(upstream_clients(&server), 0);
}

#[tokio::test]
async fn black_hole_then_heal_then_heal_all() {
    let (_server, proxy) = setup().await;
    let mut old = connect(&proxy).await;
    ping(&mut old, PROMPT).await.unwrap();

    proxy.black_hole();
    let err = ping(&mut old, SILENCE).await.unwrap_err();
    assert!(err.starts_with("no reply"), "{err}");
    assert_open_and_silent(&old);
    // New connections are accepted, then black-holed too.
    let mut during = connect(&proxy).await;
    let err = ping(&mut during, SILENCE).await.unwrap_err();
    assert!(err.starts_with("no reply"), "{err}");
    assert_open_and_silent(&during);
    assert_eq!(proxy.open_connections(), 2);

    // After heal, new connections pass; black-holed ones stay silent.
    proxy.heal();
    let mut fresh = connect(&proxy).await;
    ping(&mut fresh, PROMPT).await.unwrap();
    let err = ping(&mut old, SILENCE).await.unwrap_err();
    assert!(err.starts_with("no reply"), "{err}");
    assert_open_and_silent(&old);
    assert_open_and_silent(&during);

    // heal_all revives them; what they swallowed is lost (one PING, one PONG).
    proxy.heal_all();
    ping(&mut old, PROMPT).await.unwrap();
    ping(&mut during, PROMPT).await.unwrap();
    assert_open_and_silent(&old);
    ping(&mut fresh, PROMPT).await.unwrap();
    assert_eq!(proxy.open_connections(), 3);
    assert_eq!(proxy.connections_accepted(), 3);
}

#[tokio::test]
async fn reset_all_resets_both_sides() {
    let (server, proxy) = setup().await;
    let mut conn = connect(&proxy).await;
    ping(&mut conn, PROMPT).await.unwrap();
    assert_eq!(upstream_clients(&server), 1);

    proxy.reset_all();
    let mut buf = [0u8; 16];
    let read = timeout(PROMPT, conn.read(&mut buf))
        .await
        .expect("the reset arrives at once");
    match read {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("expected a reset, read {n} bytes"),
    }
    wait_for(PROMPT, "the proxy to close the connection", || async {
        proxy.open_connections() == 0
    })
    .await;
    // The server was reset too: it dropped its side of the connection.
    wait_for(PROMPT, "the server to drop the connection", || async {
        upstream_clients(&server) == 0
    })
    .await;

    // New connections are accepted as before.
    let mut fresh = connect(&proxy).await;
    ping(&mut fresh, PROMPT).await.unwrap();
}

#[tokio::test]
async fn refuse_then_heal() {
    let (_server, proxy) = setup().await;
    let mut open = connect(&proxy).await;

    proxy.refuse();
    let err = TcpStream::connect(proxy.addr()).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    // Open connections keep working.
    ping(&mut open, PROMPT).await.unwrap();

    proxy.heal();
    let mut fresh = connect(&proxy).await;
    ping(&mut fresh, PROMPT).await.unwrap();
    assert_eq!(proxy.connections_accepted(), 2);

    // And again, through pass_through.
    proxy.refuse();
    let err = TcpStream::connect(proxy.addr()).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    proxy.pass_through();
    let mut third = connect(&proxy).await;
    ping(&mut third, PROMPT).await.unwrap();
}

#[tokio::test]
async fn latency_delays_open_and_new_connections() {
    let (_server, proxy) = setup().await;
    let delay = Duration::from_millis(300);
    let mut open = connect(&proxy).await;
    ping(&mut open, PROMPT).await.unwrap();

    proxy.latency(delay);
    // Each direction is delayed: a round trip takes at least twice the delay.
    let started = Instant::now();
    ping(&mut open, PROMPT).await.unwrap();
    let round_trip = started.elapsed();
    assert!(round_trip >= 2 * delay, "round trip took {round_trip:?}");

    let mut fresh = connect(&proxy).await;
    let started = Instant::now();
    ping(&mut fresh, PROMPT).await.unwrap();
    assert!(started.elapsed() >= 2 * delay, "{:?}", started.elapsed());

    // Back to normal; the connection still works.
    proxy.heal();
    ping(&mut open, PROMPT).await.unwrap();
}

#[tokio::test]
async fn failed_upstream_connect_closes_the_client() {
    let (mut server, proxy) = setup().await;
    server.kill();
    let mut conn = connect(&proxy).await;
    let mut buf = [0u8; 16];
    let read = timeout(PROMPT, conn.read(&mut buf))
        .await
        .expect("the proxy closes the connection at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    wait_for(PROMPT, "the proxy to close the connection", || async {
        proxy.open_connections() == 0
    })
    .await;
}

#[tokio::test]
async fn drop_closes_everything() {
    let (server, proxy) = setup().await;
    let addr = proxy.addr();
    let mut conn = connect(&proxy).await;
    ping(&mut conn, PROMPT).await.unwrap();

    drop(proxy);
    let err = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    let mut buf = [0u8; 16];
    let read = timeout(PROMPT, conn.read(&mut buf))
        .await
        .expect("the proxied connection is closed at once");
    assert!(matches!(read, Ok(0)), "{read:?}");
    wait_for(PROMPT, "the server to drop the connection", || async {
        upstream_clients(&server) == 0
    })
    .await;
}
