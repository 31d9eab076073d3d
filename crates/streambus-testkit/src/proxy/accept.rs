//! The accept task: accepts connections (and those `refuse` adopted),
//! spawns and reaps their tasks, and binds the port again when it must.

use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::conn::{serve, ConnControl};
use super::state::{Listener, Shared};

/// How often the proxy tries to listen again when its port cannot be bound.
const REBIND_RETRY: Duration = Duration::from_millis(50);
/// Pause after a failed `accept` (e.g. out of file descriptors), so that a
/// persistent error does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// What the accept task has to do next.
enum Accept {
    /// Forward this new (already registered) connection.
    Conn(TcpStream, u64, Arc<ConnControl>),
    /// `accept` failed.
    Failed(io::Error),
    /// The proxy should listen but does not: bind the port again.
    Rebind,
}

impl Shared {
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
pub(super) async fn supervise(shared: Arc<Shared>) {
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
