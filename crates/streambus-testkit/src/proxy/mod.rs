//! A fault-injecting TCP proxy, for tests that put a real server behind a
//! bad network (a small cousin of [toxiproxy]).
//!
//! [`FaultProxy::start`] listens on a free port of `127.0.0.1` and forwards
//! every connection to an upstream address (typically a [`RedisServer`]).
//! Point the code under test at [`FaultProxy::url`] instead of the server's
//! URL, then switch faults on and off from the test:
//!
//! | call | open connections | new connections |
//! |---|---|---|
//! | [`pass_through`](FaultProxy::pass_through) / [`heal`](FaultProxy::heal) (the start state) | forward, unless black-holed before | accepted, forwarded |
//! | [`latency(d)`](FaultProxy::latency) | every chunk, both ways, delayed by `d`, order kept | the same |
//! | [`black_hole`](FaultProxy::black_hole) | every byte swallowed, nothing closed (no FIN, no RST) | accepted, then black-holed |
//! | [`heal_all`](FaultProxy::heal_all) | forward again, black-holed ones too (swallowed bytes are lost) | accepted, forwarded |
//! | [`reset_all`](FaultProxy::reset_all) | closed with a TCP RST on both sides | accepted as before |
//! | [`refuse`](FaultProxy::refuse) | keep working | refused (`ECONNREFUSED`: nothing listens) |
//!
//! A black hole is what a client sees when a NAT entry or a firewall state
//! expires, or a cable is pulled: its requests leave, no reply comes back and
//! nothing tells it so. A black-holed connection therefore stays black-holed
//! after [`heal`](FaultProxy::heal) (the network is back, the connection's
//! path is not): the client has to notice the silence — a response timeout,
//! a missed heartbeat — and dial again. [`heal_all`](FaultProxy::heal_all)
//! is the kinder variant, for a network that merely paused.
//!
//! `latency`, `black_hole` and `heal*` set how bytes are forwarded;
//! `refuse` only closes the listening socket, so it combines with them
//! (`refuse` during `latency` keeps delaying the open connections), and
//! `pass_through`, `heal` and `heal_all` open it again on the same port.
//! `reset_all` is an event, not a mode. Every call takes effect before it
//! returns, for chunks read afterwards: bytes the proxy already forwarded, or
//! queued under an earlier latency, are not recalled.
//!
//! # Example
//!
//! ```no_run
//! use std::net::{Ipv4Addr, SocketAddr};
//! use std::time::Duration;
//!
//! use streambus_testkit::{FaultProxy, RedisServer};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tokio::net::TcpStream;
//!
//! # async fn doc() -> std::io::Result<()> {
//! let server = RedisServer::start();
//! let proxy = FaultProxy::start(SocketAddr::from((Ipv4Addr::LOCALHOST, server.port()))).await?;
//! // Hand this URL to your Redis client or to streambus' configuration.
//! let url = proxy.url(); // redis://127.0.0.1:PORT (the proxy's port)
//! # let _ = url;
//!
//! let mut conn = TcpStream::connect(proxy.addr()).await?;
//! let mut reply = [0u8; 7];
//!
//! // The network goes silent: the request leaves, no reply comes back,
//! // and the socket is not closed.
//! proxy.black_hole();
//! conn.write_all(b"PING\r\n").await?;
//! let silent = tokio::time::timeout(Duration::from_millis(300), conn.read_exact(&mut reply)).await;
//! assert!(silent.is_err(), "a black hole answers nothing");
//!
//! // The network is back, but not this connection's path: a client must
//! // give up on it and dial again.
//! proxy.heal();
//! let mut fresh = TcpStream::connect(proxy.addr()).await?;
//! fresh.write_all(b"PING\r\n").await?;
//! fresh.read_exact(&mut reply).await?;
//! assert_eq!(&reply, b"+PONG\r\n");
//! # Ok(())
//! # }
//! ```
//!
//! # Lifetime
//!
//! The proxy runs on the Tokio runtime that called [`FaultProxy::start`]
//! until its [`FaultProxy`] is dropped: the drop closes the listening socket
//! at once and aborts the tasks, which closes every proxied socket.
//!
//! [toxiproxy]: https://github.com/Shopify/toxiproxy
//! [`RedisServer`]: crate::RedisServer

// The handle lives here; the rest, one concept per file:
// - `state`: what the handle and the tasks share (mode, listener, open
//   connections);
// - `accept`: the accept task, which spawns and owns the connection tasks;
// - `conn`: one proxied connection (forwarding, latency, black hole, reset).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

mod accept;
mod conn;
mod state;

use accept::supervise;
use state::{Forward, Listener, Shared, State};

/// A fault-injecting TCP proxy in front of one upstream address.
///
/// See the [module docs](self) for the modes and an example. All methods
/// take `&self` and act before they return; the proxy is `Send + Sync`.
/// Dropping it stops it: the listening socket is closed at once, its tasks
/// are aborted and every proxied connection is closed.
pub struct FaultProxy {
    /// State shared with the accept task and the connection tasks.
    shared: Arc<Shared>,
    /// The accept task. It owns the connection tasks (in a `JoinSet`), so
    /// aborting it on drop aborts them too.
    supervisor: JoinHandle<()>,
}

impl FaultProxy {
    /// Start a proxy to `upstream`, listening on a free port of `127.0.0.1`,
    /// in pass-through mode.
    ///
    /// It runs on the current Tokio runtime (so this must be called inside
    /// one) until dropped. Connecting to `upstream` happens per accepted
    /// connection: if it fails, that client connection is closed.
    ///
    /// # Errors
    ///
    /// If no port of `127.0.0.1` can be bound.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            addr,
            upstream,
            state: Mutex::new(State {
                forward: Forward::Pass,
                refusing: false,
                listener: Listener::Live(listener),
                accept_waker: None,
                conns: HashMap::new(),
                adopted: VecDeque::new(),
                next_id: 0,
                accepted: 0,
            }),
        });
        let supervisor = tokio::spawn(supervise(Arc::clone(&shared)));
        Ok(FaultProxy { shared, supervisor })
    }

    /// The address the proxy listens on (`127.0.0.1:PORT`), also while it
    /// [refuses](FaultProxy::refuse) connections.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.shared.addr.port()
    }

    /// `redis://127.0.0.1:PORT`: the proxy's address as a Redis URL, for the
    /// client under test. It carries no credentials; add them yourself if
    /// the upstream server needs them.
    pub fn url(&self) -> String {
        format!("redis://{}", self.shared.addr)
    }

    /// Forward normally, the start state: the same as
    /// [`heal`](FaultProxy::heal). Connections black-holed earlier stay
    /// black-holed; use [`heal_all`](FaultProxy::heal_all) to revive them.
    pub fn pass_through(&self) {
        self.heal();
    }

    /// Delay every chunk by `d`, in both directions, on open and new
    /// connections; chunks keep their order. A request/reply round trip
    /// thus takes at least `2 * d`.
    ///
    /// The delay applies to chunks read from now on, and replaces a black
    /// hole for new connections (black-holed ones stay black-holed). It does
    /// not change whether the proxy [refuses](FaultProxy::refuse) new
    /// connections. [`heal`](FaultProxy::heal) ends it.
    pub fn latency(&self, d: Duration) {
        self.shared.lock().forward = Forward::Latency(d);
    }

    /// Swallow every byte on every open connection, and on every connection
    /// accepted from now on, in both directions. Nothing is closed: no FIN
    /// and no RST reach either side, and a FIN read from one side is
    /// swallowed too. The proxy keeps reading, so the senders' writes do not
    /// block: bytes leave, nothing comes back.
    ///
    /// The connections stay black-holed after [`heal`](FaultProxy::heal);
    /// only [`heal_all`](FaultProxy::heal_all) revives them.
    pub fn black_hole(&self) {
        let mut st = self.shared.lock();
        st.forward = Forward::BlackHole;
        for conn in st.conns.values() {
            conn.black_holed.store(true, Ordering::Release);
        }
    }

    /// Forward new connections normally again: ends [`latency`](FaultProxy::latency),
    /// [`black_hole`](FaultProxy::black_hole) and [`refuse`](FaultProxy::refuse)
    /// (listening again on the same port).
    ///
    /// Connections that were black-holed stay black-holed for good, like a
    /// connection whose NAT entry expired: the client must notice and
    /// reconnect. Chunks already queued under a latency keep their delay.
    ///
    /// If the port cannot be bound again at once (another process took it),
    /// the proxy keeps retrying in the background and says so on stderr.
    pub fn heal(&self) {
        let mut st = self.shared.lock();
        st.forward = Forward::Pass;
        self.shared.listen(&mut st);
    }

    /// Like [`heal`](FaultProxy::heal), and black-holed connections forward
    /// again too. What they swallowed meanwhile (bytes, and a FIN) is lost.
    pub fn heal_all(&self) {
        let mut st = self.shared.lock();
        st.forward = Forward::Pass;
        for conn in st.conns.values() {
            conn.black_holed.store(false, Ordering::Release);
        }
        self.shared.listen(&mut st);
    }

    /// Close every open connection with a TCP RST (`SO_LINGER` 0) on both
    /// sides: the client and the upstream server each see "connection
    /// reset". New connections are accepted as before.
    ///
    /// The reset is sent by the connections' tasks, within a moment of this
    /// call; [`open_connections`](FaultProxy::open_connections) counts a
    /// connection until it is closed.
    pub fn reset_all(&self) {
        let st = self.shared.lock();
        for conn in st.conns.values() {
            conn.reset.notify_one();
        }
    }

    /// Refuse new connections: the listening socket is closed, so a connect
    /// fails with `ECONNREFUSED`. Open connections keep working, in the
    /// current mode; so do those whose `connect` succeeded but which the
    /// proxy had not accepted yet.
    ///
    /// [`heal`](FaultProxy::heal), [`heal_all`](FaultProxy::heal_all) and
    /// [`pass_through`](FaultProxy::pass_through) listen again on the same
    /// port.
    pub fn refuse(&self) {
        let mut st = self.shared.lock();
        st.refusing = true;
        st.close_listener();
    }

    /// Proxied connections open now, black-holed ones included. A connection
    /// counts from the moment it is accepted until its task has closed both
    /// of its sockets.
    pub fn open_connections(&self) -> usize {
        self.shared.lock().conns.len()
    }

    /// Connections accepted since the proxy started, whatever became of
    /// them.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.lock().accepted
    }
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("FaultProxy")
            .field("addr", &self.shared.addr)
            .field("upstream", &self.shared.upstream)
            .field("forward", &st.forward)
            .field("refusing", &st.refusing)
            .field("open_connections", &st.conns.len())
            .finish_non_exhaustive()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        {
            // Stop listening now, and keep the accept task from binding
            // again before the abort reaches it.
            let mut st = self.shared.lock();
            st.refusing = true;
            st.listener = Listener::Closed;
            st.accept_waker = None;
        }
        self.supervisor.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_is_send_and_sync() {
        fn is<T: Send + Sync>() {}
        is::<FaultProxy>();
    }
}
