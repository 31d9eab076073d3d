//! Standard input, read ahead by a thread of its own.
//!
//! `tokio::io::stdin` reads only when asked, and from a pipe one read returns
//! at most the pipe's 64 KiB: a chunk of lines was whatever one read had
//! brought, about 300 lines of 200 bytes, and the publisher waited for each
//! chunk's replies before sending the next (measured: chunks of 299–304 lines
//! from `cat file |`). Here a thread keeps reading into a bounded queue of
//! blocks while the lines before are published, so that a chunk can take
//! every line already read, and a line typed by hand still goes out at once.
//!
//! Memory stays bounded: at most [`BLOCKS`] blocks of [`BLOCK`] bytes wait;
//! then the thread stops reading and the program feeding stdin waits.

use std::io::{self, Read};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};
use tokio::sync::mpsc;

/// Bytes asked for per read (a pipe returns at most what it holds).
const BLOCK: usize = 64 * 1024;
/// Blocks read ahead at most.
const BLOCKS: usize = 32;

/// The bytes of a reader, read ahead on a thread.
pub(super) struct ReadAhead {
    blocks: mpsc::Receiver<io::Result<Vec<u8>>>,
    block: Vec<u8>,
    at: usize,
    /// Set by [`ReadAhead::stop`]: the blocks read so far are the end.
    stopped: bool,
}

impl ReadAhead {
    /// Reads standard input.
    pub fn stdin() -> ReadAhead {
        ReadAhead::of(io::stdin())
    }

    /// Reads `input` on a thread until its end, an error, or until this is dropped.
    pub fn of(mut input: impl Read + Send + 'static) -> ReadAhead {
        let (tx, blocks) = mpsc::channel(BLOCKS);
        // A plain thread, not tokio's blocking pool: a read that never returns
        // (stdin left open after publishing gave up) must not hold up the
        // runtime's shutdown.
        let spawned = std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || loop {
                let mut block = vec![0; BLOCK];
                let read = match input.read(&mut block) {
                    Ok(0) => return,
                    Ok(n) => {
                        block.truncate(n);
                        Ok(block)
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
                let failed = read.is_err();
                if tx.blocking_send(read).is_err() || failed {
                    return;
                }
            });
        let blocks = match spawned {
            Ok(_) => blocks,
            Err(e) => {
                // No thread: its error is the first read's.
                let (tx, rx) = mpsc::channel(1);
                let _ = tx.try_send(Err(e));
                rx
            }
        };
        ReadAhead {
            blocks,
            block: Vec::new(),
            at: 0,
            stopped: false,
        }
    }

    /// Reads no further: what was read before is still given, then the end
    /// of input. (A read the thread is in the middle of is lost; the caller
    /// says where the input it published ends.)
    pub fn stop(&mut self) {
        self.blocks.close();
        self.stopped = true;
    }

    /// Whether [`ReadAhead::stop`] was called: an end of input is then the
    /// stop, and a last line without its newline was cut by it.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Whether more bytes can be had without waiting: what is left of the
    /// current block, or a block already read.
    pub fn has_ready(&self) -> bool {
        self.at < self.block.len() || !self.blocks.is_empty()
    }

    /// The bytes of the current block not yet consumed.
    pub fn buffer(&self) -> &[u8] {
        &self.block[self.at..]
    }
}

impl AsyncRead for ReadAhead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let available = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncBufRead for ReadAhead {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.at == this.block.len() {
            match ready!(this.blocks.poll_recv(cx)) {
                Some(Ok(block)) => {
                    this.block = block;
                    this.at = 0;
                }
                Some(Err(e)) => return Poll::Ready(Err(e)),
                // The end of input.
                None => return Poll::Ready(Ok(&[])),
            }
        }
        Poll::Ready(Ok(&this.block[this.at..]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.at = (this.at + amt).min(this.block.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    #[tokio::test]
    async fn gives_every_byte_in_order_across_blocks() {
        // Larger than one block, with lines that cross block boundaries.
        let text: String = (0..60_000).map(|i| format!("line {i}\n")).collect();
        let mut input = ReadAhead::of(io::Cursor::new(text.clone().into_bytes()));
        let mut got = String::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            if input.read_until(b'\n', &mut line).await.unwrap() == 0 {
                break;
            }
            got.push_str(std::str::from_utf8(&line).unwrap());
        }
        assert_eq!(got.len(), text.len());
        assert!(got == text);
    }

    #[tokio::test]
    async fn after_a_stop_what_was_read_is_given_then_the_end() {
        let (mut writer, reader) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut input = ReadAhead::of(reader);
        std::io::Write::write_all(&mut writer, b"one\ntw").unwrap();
        let mut line = Vec::new();
        input.read_until(b'\n', &mut line).await.unwrap();
        assert_eq!(line, b"one\n");
        // What was read before the stop ("tw") is still there, then the end,
        // though the writer is still open.
        let read = async {
            while !input.has_ready() {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("the reading thread never passed on \"tw\"");
        input.stop();
        assert!(input.is_stopped());
        line.clear();
        input.read_until(b'\n', &mut line).await.unwrap();
        assert_eq!(line, b"tw");
        line.clear();
        assert_eq!(input.read_until(b'\n', &mut line).await.unwrap(), 0);
        drop(writer);
    }

    #[tokio::test]
    async fn a_read_error_is_returned() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let mut input = ReadAhead::of(Broken);
        let mut line = Vec::new();
        let e = input.read_until(b'\n', &mut line).await.unwrap_err();
        assert_eq!(e.to_string(), "disk on fire");
    }
}
