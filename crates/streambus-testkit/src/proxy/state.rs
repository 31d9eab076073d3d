//! What the proxy's handle and its tasks share: the forwarding mode, the
//! listening socket and the open connections, under one lock.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::conn::ConnControl;

/// What the proxy's handle and its tasks share.
pub(super) struct Shared {
    /// Where the proxy listens; fixed for its whole life, so that a client
    /// reconnects to the same address after `refuse`.
    pub(super) addr: SocketAddr,
    /// Where every connection is forwarded.
    pub(super) upstream: SocketAddr,
    /// Mode, listener and open connections, changed together under one lock
    /// so that a connection accepted while `black_hole` runs is either
    /// marked by it or sees the mode when it registers.
    pub(super) state: Mutex<State>,
}

/// The proxy's mutable state.
pub(super) struct State {
    /// How new chunks are forwarded.
    pub(super) forward: Forward,
    /// Set by `refuse`: nothing listens, and no rebind is attempted.
    pub(super) refusing: bool,
    /// The listening socket, if any.
    pub(super) listener: Listener,
    /// The accept task's waker, woken when the listener changes: a task
    /// waiting on a closed listener would otherwise never be woken.
    pub(super) accept_waker: Option<Waker>,
    /// Every open connection, by id; a connection removes itself when its
    /// task ends (see `conn::Registered`).
    pub(super) conns: HashMap<u64, Arc<ConnControl>>,
    /// Connections that `refuse` took from the listener's backlog (their
    /// clients' `connect` had already succeeded, so they count as open),
    /// registered and waiting for the accept task to forward them.
    pub(super) adopted: VecDeque<(std::net::TcpStream, u64, Arc<ConnControl>)>,
    /// The id of the next accepted connection.
    pub(super) next_id: u64,
    /// Connections accepted so far (for
    /// [`FaultProxy::connections_accepted`](super::FaultProxy::connections_accepted)).
    pub(super) accepted: u64,
}

impl State {
    /// Count and register a connection just accepted. It starts
    /// black-holed during a black hole.
    pub(super) fn register(&mut self) -> (u64, Arc<ConnControl>) {
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
    pub(super) fn close_listener(&mut self) {
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
pub(super) enum Forward {
    /// At once.
    Pass,
    /// After this delay.
    Latency(Duration),
    /// Not at all; new connections are black-holed when accepted.
    BlackHole,
}

/// The listening socket.
pub(super) enum Listener {
    /// Not listening: after `refuse`, or while a rebind keeps failing.
    Closed,
    /// Listening (connections queue in the backlog), bound by a `&self`
    /// method that may run outside the runtime; the accept task registers it
    /// with its reactor.
    Bound(std::net::TcpListener),
    /// Listening and registered with the runtime.
    Live(TcpListener),
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // No code holding this lock panics, and the state stays consistent
        // at every step, so a poisoned lock is still good to use.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The delay for a chunk read now.
    pub(super) fn latency(&self) -> Duration {
        match self.lock().forward {
            Forward::Latency(d) => d,
            Forward::Pass | Forward::BlackHole => Duration::ZERO,
        }
    }

    /// Listen again if `refuse` stopped it. Binds right here, so that a
    /// connect right after `heal` succeeds; if that fails, the accept task
    /// retries.
    pub(super) fn listen(&self, st: &mut State) {
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
}
