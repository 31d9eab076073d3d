//! One proxied connection: its task forwards both directions through a
//! queue that applies the latency, swallows bytes while black-holed, and
//! resets both sockets on `reset_all`.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::state::Shared;

/// The most bytes one read takes from a socket; each read is one chunk.
const CHUNK_SIZE: usize = 16 * 1024;
/// Chunks queued per direction between reading and writing them. The queue
/// is what holds chunks during a latency; its bound (at most 1 MiB per
/// direction) makes a slow reader push back on the sender, as a real
/// network's buffers do.
const QUEUE_CHUNKS: usize = 64;

/// What the handle can tell one open connection.
pub(super) struct ConnControl {
    /// Set by `black_hole` (or at accept time during one), cleared only by
    /// `heal_all`: the connection swallows everything while it is set.
    pub(super) black_holed: AtomicBool,
    /// Notified by `reset_all`. `notify_one` keeps a permit, so a reset sent
    /// before the task waits is not lost.
    pub(super) reset: Notify,
}

impl ConnControl {
    fn is_black_holed(&self) -> bool {
        self.black_holed.load(Ordering::Acquire)
    }
}

/// Removes a connection from [`State::conns`](super::state::State::conns)
/// when its task ends, aborted or not.
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
pub(super) async fn serve(
    shared: Arc<Shared>,
    id: u64,
    control: Arc<ConnControl>,
    mut client: TcpStream,
) {
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
