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

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// The most bytes one read takes from a socket; each read is one chunk.
const CHUNK_SIZE: usize = 16 * 1024;
/// Chunks queued per direction between reading and writing them. The queue
/// is what holds chunks during a latency; its bound (at most 1 MiB per
/// direction) makes a slow reader push back on the sender, as a real
/// network's buffers do.
const QUEUE_CHUNKS: usize = 64;
/// How often the proxy tries to listen again when its port cannot be bound.
const REBIND_RETRY: Duration = Duration::from_millis(50);
/// Pause after a failed `accept` (e.g. out of file descriptors), so that a
/// persistent error does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

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

/// What the proxy's handle and its tasks share.
struct Shared {
    /// Where the proxy listens; fixed for its whole life, so that a client
    /// reconnects to the same address after `refuse`.
    addr: SocketAddr,
    /// Where every connection is forwarded.
    upstream: SocketAddr,
    /// Mode, listener and open connections, changed together under one lock
    /// so that a connection accepted while `black_hole` runs is either
    /// marked by it or sees the mode when it registers.
    state: Mutex<State>,
}

/// The proxy's mutable state.
struct State {
    /// How new chunks are forwarded.
    forward: Forward,
    /// Set by `refuse`: nothing listens, and no rebind is attempted.
    refusing: bool,
    /// The listening socket, if any.
    listener: Listener,
    /// The accept task's waker, woken when the listener changes: a task
    /// waiting on a closed listener would otherwise never be woken.
    accept_waker: Option<Waker>,
    /// Every open connection, by id; a connection removes itself when its
    /// task ends (see [`Registered`]).
    conns: HashMap<u64, Arc<ConnControl>>,
    /// Connections that `refuse` took from the listener's backlog (their
    /// clients' `connect` had already succeeded, so they count as open),
    /// registered and waiting for the accept task to forward them.
    adopted: VecDeque<(std::net::TcpStream, u64, Arc<ConnControl>)>,
    /// The id of the next accepted connection.
    next_id: u64,
    /// Connections accepted so far (for [`FaultProxy::connections_accepted`]).
    accepted: u64,
}

impl State {
    /// Count and register a connection just accepted. It starts
    /// black-holed during a black hole.
    fn register(&mut self) -> (u64, Arc<ConnControl>) {
        let control = Arc::new(ConnControl {
            black_holed: AtomicBool::new(self.forward == Forward::BlackHole),
            reset: Notify::new(),
        });
        let id = self.next_id;
        self.next_id += 1;
        self.accepted += 1;
        self.conns.insert(id, Arc::clone(&control));
        (id, control)
    }

    /// Close the listening socket, keeping the connections in its backlog:
    /// their clients have seen `connect` succeed, so they must keep working
    /// like every other open connection.
    fn close_listener(&mut self) {
        let listener = match std::mem::replace(&mut self.listener, Listener::Closed) {
            Listener::Live(listener) => listener.into_std().ok(),
            Listener::Bound(listener) => Some(listener),
            Listener::Closed => None,
        };
        let Some(listener) = listener else { return };
        // Non-blocking (tokio's and ours are): stops at an empty backlog, or
        // at an error, after which the rest of the backlog is reset.
        while let Ok((stream, _peer)) = listener.accept() {
            // An accepted socket does not inherit O_NONBLOCK; one that cannot
            // be made non-blocking is closed rather than block the runtime.
            if stream.set_nonblocking(true).is_ok() {
                let (id, control) = self.register();
                self.adopted.push_back((stream, id, control));
            }
        }
        if let Some(waker) = self.accept_waker.take() {
            waker.wake();
        }
    }
}

/// How chunks read from now on are forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Forward {
    /// At once.
    Pass,
    /// After this delay.
    Latency(Duration),
    /// Not at all; new connections are black-holed when accepted.
    BlackHole,
}

/// The listening socket.
enum Listener {
    /// Not listening: after `refuse`, or while a rebind keeps failing.
    Closed,
    /// Listening (connections queue in the backlog), bound by a `&self`
    /// method that may run outside the runtime; the accept task registers it
    /// with its reactor.
    Bound(std::net::TcpListener),
    /// Listening and registered with the runtime.
    Live(TcpListener),
}

/// What the handle can tell one open connection.
struct ConnControl {
    /// Set by `black_hole` (or at accept time during one), cleared only by
    /// `heal_all`: the connection swallows everything while it is set.
    black_holed: AtomicBool,
    /// Notified by `reset_all`. `notify_one` keeps a permit, so a reset sent
    /// before the task waits is not lost.
    reset: Notify,
}

impl ConnControl {
    fn is_black_holed(&self) -> bool {
        self.black_holed.load(Ordering::Acquire)
    }
}

/// What the accept task has to do next.
enum Accept {
    /// Forward this new (already registered) connection.
    Conn(TcpStream, u64, Arc<ConnControl>),
    /// `accept` failed.
    Failed(io::Error),
    /// The proxy should listen but does not: bind the port again.
    Rebind,
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

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code holding this lock panics, and the state stays consistent
        // at every step, so a poisoned lock is still good to use.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The delay for a chunk read now.
    fn latency(&self) -> Duration {
        match self.lock().forward {
            Forward::Latency(d) => d,
            Forward::Pass | Forward::BlackHole => Duration::ZERO,
        }
    }

    /// Listen again if `refuse` stopped it. Binds right here, so that a
    /// connect right after `heal` succeeds; if that fails, the accept task
    /// retries.
    fn listen(&self, st: &mut State) {
        st.refusing = false;
        if matches!(st.listener, Listener::Closed) {
            // std's `bind` sets SO_REUSEADDR on Unix, so connections of the
            // old listener in TIME_WAIT do not block it.
            let bound = std::net::TcpListener::bind(self.addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l));
            if let Ok(listener) = bound {
                st.listener = Listener::Bound(listener);
            }
            // On error the accept task gets `Accept::Rebind`, retries and
            // reports the error.
        }
        if let Some(waker) = st.accept_waker.take() {
            waker.wake();
        }
    }

    /// Accept the next connection and register it, or say that the port
    /// must be bound again.
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<Accept> {
        let mut st = self.lock();
        st.accept_waker = Some(cx.waker().clone());
        if let Some((stream, id, control)) = st.adopted.pop_front() {
            return match TcpStream::from_std(stream) {
                Ok(stream) => Poll::Ready(Accept::Conn(stream, id, control)),
                Err(e) => {
                    st.conns.remove(&id);
                    Poll::Ready(Accept::Failed(e))
                }
            };
        }
        // Taken out and put back below, so that every state is handled here.
        let listener = match std::mem::replace(&mut st.listener, Listener::Closed) {
            Listener::Live(listener) => listener,
            Listener::Bound(listener) => match TcpListener::from_std(listener) {
                Ok(listener) => listener,
                // Left `Closed`: the next poll asks for a rebind.
                Err(e) => return Poll::Ready(Accept::Failed(e)),
            },
            Listener::Closed if st.refusing => return Poll::Pending,
            Listener::Closed => return Poll::Ready(Accept::Rebind),
        };
        let polled = listener.poll_accept(cx);
        st.listener = Listener::Live(listener);
        match polled {
            Poll::Ready(Ok((stream, _peer))) => {
                let (id, control) = st.register();
                Poll::Ready(Accept::Conn(stream, id, control))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Accept::Failed(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Bind the port again unless `refuse` came first.
    async fn rebind(&self) -> io::Result<()> {
        let listener = TcpListener::bind(self.addr).await?;
        let mut st = self.lock();
        if !st.refusing && matches!(st.listener, Listener::Closed) {
            st.listener = Listener::Live(listener);
        }
        Ok(())
    }
}

/// The accept task: accepts connections, spawns and reaps their tasks, and
/// binds the port again when it must.
async fn supervise(shared: Arc<Shared>) {
    // Owns every connection task: dropping it (when this task is aborted)
    // aborts them all, which closes their sockets.
    let mut conns = JoinSet::new();
    // Whether the last rebind failed, so that an outage is reported once.
    let mut rebind_failing = false;
    loop {
        tokio::select! {
            next = poll_fn(|cx| shared.poll_accept(cx)) => match next {
                Accept::Conn(stream, id, control) => {
                    conns.spawn(serve(Arc::clone(&shared), id, control, stream));
                }
                Accept::Failed(e) => {
                    eprintln!("FaultProxy {}: accept failed: {e}", shared.addr);
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
                Accept::Rebind => match shared.rebind().await {
                    Ok(()) => {
                        if rebind_failing {
                            eprintln!("FaultProxy {}: listening again", shared.addr);
                        }
                        rebind_failing = false;
                    }
                    Err(e) => {
                        if !rebind_failing {
                            eprintln!(
                                "FaultProxy {}: cannot listen on its port again ({e}); \
                                 retrying every {REBIND_RETRY:?}",
                                shared.addr
                            );
                        }
                        rebind_failing = true;
                        tokio::time::sleep(REBIND_RETRY).await;
                    }
                },
            },
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                // Connection tasks handle their I/O errors; only a panic (a
                // bug) is worth a word.
                if let Err(e) = done {
                    if e.is_panic() {
                        eprintln!("FaultProxy {}: a connection task panicked: {e}", shared.addr);
                    }
                }
            }
        }
    }
}

/// Removes a connection from [`State::conns`] when its task ends, aborted
/// or not.
struct Registered<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.shared.lock().conns.remove(&self.id);
    }
}

/// Forward one client connection to the upstream address until either side
/// closes or fails, or `reset_all` resets it.
async fn serve(shared: Arc<Shared>, id: u64, control: Arc<ConnControl>, mut client: TcpStream) {
    let _registered = Registered {
        shared: &shared,
        id,
    };
    let mut upstream = tokio::select! {
        connected = TcpStream::connect(shared.upstream) => match connected {
            Ok(upstream) => upstream,
            Err(e) => {
                eprintln!(
                    "FaultProxy {}: cannot connect to {}: {e}; closing the client connection",
                    shared.addr, shared.upstream
                );
                return;
            }
        },
        () = control.reset.notified() => {
            abortive_close(client);
            return;
        }
    };
    // Small requests and replies go out at once; failing to set it only
    // adds delay, which a test of faults can live with.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let reset = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        tokio::select! {
            // Ends when both directions have ended, or one has failed: then
            // the other is dropped and both sockets are closed. I/O errors
            // are the peers' business (a reset, a closed socket): nothing to
            // report.
            _ = async {
                tokio::try_join!(
                    pump(&shared, &control, client_read, upstream_write),
                    pump(&shared, &control, upstream_read, client_write),
                )
            } => false,
            () = control.reset.notified() => true,
        }
    };
    if reset {
        abortive_close(client);
        abortive_close(upstream);
    }
}

/// Close `stream` with a TCP RST instead of a FIN.
fn abortive_close(stream: TcpStream) {
    // `set_linger` is deprecated because a non-zero linger blocks the thread
    // on close; a zero linger does not block. (`set_zero_linger` needs Tokio
    // 1.50; the workspace asks for 1.48.) If it fails, the close is an
    // ordinary one: still a close, so no harm.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Copy `from` to `to`, one chunk at a time, through a queue that applies the
/// latency, swallowing everything while the connection is black-holed. Ends
/// at end of stream (passing it on, unless swallowed) or on the first error.
async fn pump(
    shared: &Shared,
    control: &ConnControl,
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
) -> io::Result<()> {
    // `(due, None)` is the end of the stream.
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(QUEUE_CHUNKS);
    let read = async move {
        let mut buf = vec![0u8; CHUNK_SIZE];
        loop {
            let n = from.read(&mut buf).await?;
            if control.is_black_holed() {
                // Keep reading (so the sender never blocks), forward nothing,
                // not even the end of the stream. (A reader already waiting
                // in `send` below, because the destination stopped reading
                // and the queue is full, resumes once the writer drains it.)
                if n == 0 {
                    return Ok(());
                }
                continue;
            }
            let due = Instant::now() + shared.latency();
            let chunk = (n > 0).then(|| buf[..n].to_vec());
            if tx.send((due, chunk)).await.is_err() {
                // The writer has failed; `try_join!` reports its error.
                return Ok(());
            }
            if n == 0 {
                return Ok(());
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            // Black-holed while it waited: swallowed too.
            if control.is_black_holed() {
                continue;
            }
            match chunk {
                Some(bytes) => to.write_all(&bytes).await?,
                None => to.shutdown().await?,
            }
        }
        io::Result::Ok(())
    };
    tokio::try_join!(read, write).map(|((), ())| ())
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
