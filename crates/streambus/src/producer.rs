//! Publishing: one XADD per message, trimming included, pipelined.
//!
//! [`Producer::publish`] may be called from many tasks at once: calls are queued
//! to one sender task that writes whatever has gathered as one explicit pipeline
//! (measured here: many concurrent XADD futures on one connection reach about a
//! third of what explicit pipelines do). [`Producer::publish_batch`] pipelines a
//! batch the caller already has.
//!
//! A publish that fails with a retryable error may or may not have been written:
//! retrying it can write it twice. Every envelope carries a unique `id` so that
//! consumers can drop such duplicates (see the idempotency guard of the worker).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;

use crate::connection::Connection;
use crate::envelope::Message;
use crate::error::{Error, ErrorKind, Result};
use crate::id::EntryId;
use crate::keys;

/// How much of a stream to keep. Trimming is part of each XADD, never a second
/// command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Retention {
    /// Never trim.
    #[default]
    Unbounded,
    /// Keep about `len` entries (`MAXLEN ~ len`; exact with `exact: true`, which
    /// costs more: Redis then trims entry by entry instead of whole nodes).
    MaxLen {
        /// Entries to keep.
        len: u64,
        /// Trim to exactly `len` instead of approximately.
        exact: bool,
    },
    /// Keep about this much time (`MINID ~ <now - age>`).
    MaxAge(Duration),
}

impl Retention {
    /// `MAXLEN ~ len`: approximate trimming to about `len` entries.
    pub fn max_len(len: u64) -> Self {
        Retention::MaxLen { len, exact: false }
    }

    fn write_args(&self, cmd: &mut redis::Cmd, now: SystemTime) {
        match *self {
            Retention::Unbounded => {}
            Retention::MaxLen { len, exact } => {
                cmd.arg("MAXLEN")
                    .arg(if exact { "=" } else { "~" })
                    .arg(len);
            }
            Retention::MaxAge(age) => {
                let cutoff = now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
                cmd.arg("MINID").arg("~").arg(EntryId::at_time(cutoff));
            }
        }
    }
}

/// Settings of a [`Producer`].
#[derive(Clone, Debug)]
pub struct ProducerOptions {
    /// Trimming done by every XADD.
    pub retention: Retention,
    /// Largest message (bytes of field names and values) accepted; larger ones are
    /// refused before anything is sent. Default 1 MiB.
    pub max_message_bytes: usize,
    /// Most messages the sender task writes in one pipeline (one write to
    /// Redis) from concurrent `publish` calls.
    pub max_pipeline: usize,
    /// Messages per pipeline of `publish_batch`.
    pub batch_pipeline: usize,
    /// Pipelines under way at once on the connection (pipelining depth).
    /// Several small pipelines in flight keep Redis busy while this process
    /// answers the callers of the last one and encodes the next; one large
    /// pipeline makes the two take turns. See the README's tuning section.
    pub pipelines_in_flight: usize,
    /// Publish calls that may wait for the sender task before `publish` itself
    /// waits (back-pressure instead of unbounded memory).
    pub queue_capacity: usize,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            retention: Retention::Unbounded,
            max_message_bytes: 1024 * 1024,
            max_pipeline: 32,
            batch_pipeline: 128,
            pipelines_in_flight: 8,
            queue_capacity: 8192,
        }
    }
}

struct Job {
    stream: Arc<str>,
    /// The XADD, built by the caller: encoding then runs on the callers'
    /// threads, in parallel, not in the one sender task.
    xadd: redis::Cmd,
    reply: oneshot::Sender<Result<EntryId>>,
}

/// Publishes messages to streams. Cheap to clone; clones share the sender task.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Connection,
    options: ProducerOptions,
    /// The stream of the last `publish`, so that publishing to the same stream
    /// again does not allocate its name.
    last_stream: std::sync::Mutex<Option<Arc<str>>>,
    queue: mpsc::Sender<Job>,
    /// The sender task ends with the last clone of the producer.
    _sender: AbortOnDropHandle<()>,
}

impl Producer {
    /// A producer on the shared connection (from [`crate::Client::connect`]).
    pub fn new(conn: Connection, options: ProducerOptions) -> Self {
        let (queue, rx) = mpsc::channel(options.queue_capacity.max(1));
        let sender = tokio::spawn(sender_task(
            conn.clone(),
            options.max_pipeline.max(1),
            options.pipelines_in_flight.max(1),
            rx,
        ));
        Producer {
            inner: Arc::new(Inner {
                conn,
                options,
                last_stream: std::sync::Mutex::new(None),
                queue,
                _sender: AbortOnDropHandle::new(sender),
            }),
        }
    }

    /// The options in use.
    pub fn options(&self) -> &ProducerOptions {
        &self.inner.options
    }

    /// Appends one message to `stream` and returns its entry id.
    ///
    /// Concurrent calls are written together as one pipeline. Fails with
    /// `TooLarge` (nothing written) when the message exceeds the size limit.
    pub async fn publish(&self, stream: &str, message: Message) -> Result<EntryId> {
        self.check(stream, &message)?;
        let (reply, rx) = oneshot::channel();
        let job = Job {
            stream: self.stream_name(stream),
            xadd: xadd(
                stream,
                &message,
                self.inner.options.retention,
                clock(self.inner.options.retention),
            ),
            reply,
        };
        drop(message);
        self.inner.queue.send(job).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Appends many messages to `stream` in pipelines and returns their entry ids
    /// in order. Every message is checked first: if one is too large, none is sent.
    ///
    /// The messages go out as pipelines of `batch_pipeline`, up to
    /// `pipelines_in_flight` at once, in order on one connection: they are
    /// appended in the order given. If Redis refuses one (e.g. `WRONGTYPE`),
    /// the first such error is returned; messages before it are written, and
    /// so may be some after it, from pipelines already under way.
    pub async fn publish_batch(
        &self,
        stream: &str,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<Vec<EntryId>> {
        let messages: Vec<Message> = messages.into_iter().collect();
        for m in &messages {
            self.check(stream, m)?;
        }
        let o = &self.inner.options;
        let now = clock(o.retention);
        // Larger than the sender task's pipelines: one caller, so no convoy of
        // callers to break up, and fewer writes. Measured (1000 per call, 8 in
        // flight, median of 4 alternating runs, msg/s): 32: 269k, 64: 268k,
        // 128: 323k, 256 (2 in flight): 314k, 512 (1 in flight): 266k.
        let mut chunks = messages.chunks(o.batch_pipeline.max(1));
        let mut in_flight = futures_util::stream::FuturesOrdered::new();
        let mut ids = Vec::with_capacity(messages.len());
        let mut failed = None;
        loop {
            // FuturesOrdered polls new futures in the order they were pushed,
            // so the pipelines are written in order.
            while failed.is_none() && in_flight.len() < o.pipelines_in_flight.max(1) {
                let Some(chunk) = chunks.next() else { break };
                let mut pipe = redis::Pipeline::with_capacity(chunk.len());
                // Per-reply errors, so that WRONGTYPE & co. are classified like
                // a single publish's.
                pipe.ignore_errors();
                for m in chunk {
                    pipe.add_command(xadd(stream, m, o.retention, now));
                }
                let mut conn = self.inner.conn.clone();
                in_flight.push_back(async move { pipe.query_async::<Vec<Value>>(&mut conn).await });
            }
            let Some(replies) = in_flight.next().await else {
                break;
            };
            let replies = replies.map_err(|e| Error::redis(format!("XADD to {stream} failed"), e));
            let before = ids.len();
            match replies {
                Ok(replies) => {
                    for r in replies {
                        match entry_id(stream, r) {
                            Ok(id) => ids.push(id),
                            Err(e) => {
                                failed.get_or_insert(e);
                            }
                        }
                    }
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
            count_published(stream, (ids.len() - before) as u64);
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(ids),
        }
    }

    /// `stream` as a shared name, reusing the last one when it is the same.
    fn stream_name(&self, stream: &str) -> Arc<str> {
        let mut last = self
            .inner
            .last_stream
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some(name) if **name == *stream => name.clone(),
            _ => {
                let name: Arc<str> = stream.into();
                *last = Some(name.clone());
                name
            }
        }
    }

    fn check(&self, stream: &str, message: &Message) -> Result<()> {
        keys::validate_name("stream", stream)?;
        if message.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "a message needs at least one field",
            ));
        }
        let size = message.byte_len();
        let limit = self.inner.options.max_message_bytes;
        if size > limit {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("message of {size} bytes exceeds the limit of {limit} bytes; nothing was written (raise max_message_bytes, or store large payloads elsewhere and publish a reference)"),
            ));
        }
        Ok(())
    }
}

/// Counts written entries (one label allocation per pipeline, not per entry).
fn count_published(stream: &str, n: u64) {
    if n > 0 {
        metrics::counter!(crate::metrics::PUBLISHED, "stream" => stream.to_owned()).increment(n);
    }
}

fn stopped() -> Error {
    Error::new(
        ErrorKind::Connection,
        "the producer's sender task has stopped",
    )
}

/// The clock for `MINID` trimming; not read when the retention does not need it.
fn clock(retention: Retention) -> SystemTime {
    match retention {
        Retention::MaxAge(_) => SystemTime::now(),
        _ => SystemTime::UNIX_EPOCH,
    }
}

fn xadd(stream: &str, message: &Message, retention: Retention, now: SystemTime) -> redis::Cmd {
    // Sized up front: growing the argument buffer field by field cost more
    // reallocations (realloc ≈ 3% of the publishing CPU in a profile) than any
    // other part of building the command. 48 bytes cover "XADD", the trimming
    // arguments and "*".
    let (args, bytes) = message.arg_size();
    let mut cmd = redis::Cmd::with_capacity(args + 6, bytes + stream.len() + 48);
    cmd.arg("XADD");
    cmd.arg(stream);
    retention.write_args(&mut cmd, now);
    cmd.arg("*");
    message.write_args(&mut cmd);
    cmd
}

fn entry_id(stream: &str, v: Value) -> Result<EntryId> {
    match v {
        Value::BulkString(b) => EntryId::from_bytes(&b),
        Value::SimpleString(s) => s.parse(),
        Value::ServerError(e) => Err(Error::redis(
            format!("XADD to {stream} failed"),
            redis::RedisError::from(e),
        )),
        other => Err(Error::new(
            ErrorKind::Redis,
            format!("unexpected XADD reply: {other:?}"),
        )),
    }
}

/// Drains the queue into pipelines: waits for one job, takes whatever else has
/// queued meanwhile (up to `max_pipeline`), writes them in one round trip, with
/// up to `in_flight_max` round trips under way.
///
/// With one pipeline in flight, the task and Redis take turns: the task builds
/// the next pipeline only after Redis answered the last, so each side idles
/// half the time. With few large pipelines they still take turns, in convoys:
/// every caller waits in the same pipeline, all are answered at once, and all
/// queue again while Redis has nothing to do. Small pipelines, many in flight
/// (32 × 8 by default) keep Redis working on some while the callers of others
/// are answered. Measured, 256 callers, 2 cores (median of 4–6 alternating
/// runs, msg/s): 512 × 4 158k, 64 × 4 190k, 64 × 8 205k, 32 × 8 257k–303k,
/// 16 × 16 285k. They are written on one connection, in the order they were
/// queued (`FuturesUnordered` polls new futures first-in first-out), so Redis
/// executes them in that order.
async fn sender_task(
    conn: Connection,
    max_pipeline: usize,
    in_flight_max: usize,
    mut rx: mpsc::Receiver<Job>,
) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        let room = in_flight.len() < in_flight_max;
        tokio::select! {
            // Finished pipelines first: they make room and answer callers.
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            jobs = recv_jobs(&mut rx, max_pipeline), if room => match jobs {
                Some(jobs) => {
                    for jobs in by_stream(jobs) {
                        in_flight.push(send_pipeline(conn.clone(), jobs));
                    }
                }
                None => break,
            },
        }
    }
    // The queue is closed (the producer was dropped): finish what was sent.
    while in_flight.next().await.is_some() {}
}

async fn recv_jobs(rx: &mut mpsc::Receiver<Job>, max_pipeline: usize) -> Option<Vec<Job>> {
    let mut jobs = Vec::with_capacity(max_pipeline.min(64));
    (rx.recv_many(&mut jobs, max_pipeline).await > 0).then_some(jobs)
}

/// Splits jobs into one group per stream, each in queue order: on Redis Cluster
/// a pipeline must stay within one slot (CROSSSLOT otherwise). The common case,
/// one stream, costs one comparison per job and no copy.
fn by_stream(jobs: Vec<Job>) -> Vec<Vec<Job>> {
    if jobs.iter().all(|j| j.stream == jobs[0].stream) {
        return vec![jobs];
    }
    let mut groups: Vec<Vec<Job>> = Vec::new();
    for job in jobs {
        match groups.iter_mut().find(|g| g[0].stream == job.stream) {
            Some(g) => g.push(job),
            None => groups.push(vec![job]),
        }
    }
    groups
}

/// Writes one pipeline and answers its callers.
async fn send_pipeline(mut conn: Connection, mut jobs: Vec<Job>) {
    let mut pipe = redis::Pipeline::with_capacity(jobs.len());
    pipe.ignore_errors();
    for job in &mut jobs {
        pipe.add_command(std::mem::take(&mut job.xadd));
    }
    match pipe.query_async::<Vec<Value>>(&mut conn).await {
        Ok(replies) => {
            let mut written = 0;
            let stream = jobs.first().map(|j| j.stream.clone());
            for (job, r) in jobs.into_iter().zip(replies) {
                let id = entry_id(&job.stream, r);
                written += u64::from(id.is_ok());
                // The caller may have stopped waiting; its result is then unwanted.
                let _ = job.reply.send(id);
            }
            if let Some(stream) = stream {
                count_published(&stream, written);
            }
        }
        Err(e) => {
            for job in jobs {
                let err = Error::redis(format!("XADD to {} failed", job.stream), e.clone());
                let _ = job.reply.send(Err(err));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &redis::Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                redis::Arg::Cursor => "<cursor>".into(),
                _ => "<other>".into(),
            })
            .collect()
    }

    #[test]
    fn xadd_trims_in_the_same_command() {
        let m = Message::raw([("a", "1")]);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        assert_eq!(
            args(&xadd("s", &m, Retention::max_len(10), now)),
            ["XADD", "s", "MAXLEN", "~", "10", "*", "a", "1"]
        );
        assert_eq!(
            args(&xadd(
                "s",
                &m,
                Retention::MaxLen {
                    len: 5,
                    exact: true
                },
                now
            )),
            ["XADD", "s", "MAXLEN", "=", "5", "*", "a", "1"]
        );
        assert_eq!(
            args(&xadd(
                "s",
                &m,
                Retention::MaxAge(Duration::from_secs(40)),
                now
            )),
            ["XADD", "s", "MINID", "~", "60000-0", "*", "a", "1"]
        );
        assert_eq!(
            args(&xadd("s", &m, Retention::Unbounded, now)),
            ["XADD", "s", "*", "a", "1"]
        );
    }
}
