//! Publishing: one XADD per message, trimming included, pipelined.
//!
//! [`Producer::publish`] may be called from many tasks at once: calls are queued
//! to one sender task that writes whatever has gathered as one explicit pipeline
//! (measured here: many concurrent XADD futures on one connection reach about a
//! third of what explicit pipelines do). [`Producer::publish_batch`] pipelines a
//! batch the caller already has.
//!
//! **While Redis is away**, a publish waits: a pipeline that could not be sent
//! (no connection could be made), or that Redis refused for a reason that
//! passes (`LOADING` while it reads its AOF after a restart), is sent again,
//! with backoff, until
//! [`ProducerOptions::publish_timeout`] has passed since the call; then it fails
//! with [`ErrorKind::Unavailable`], and nothing was written. A publish that was
//! sent but got no reply (a timeout, or its connection failed) fails at once with
//! [`ErrorKind::Unconfirmed`]: it may or may not have been written. Both errors
//! give the message back ([`Error::take_unpublished`]), so that the caller can
//! publish it again with the same envelope id; consumers drop such duplicates with
//! the worker's idempotency guard.

mod replicas;
mod retention;
mod sender;
mod trim;

use replicas::MinReplicas;
pub use retention::Retention;
use sender::sender_task;
use trim::Trimmer;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use futures_util::stream::StreamExt;
use redis::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;

use crate::connection::{not_sent, Client, Connection};
use crate::envelope::Message;
use crate::error::{Error, ErrorKind, Result};
use crate::id::EntryId;
use crate::keys;

/// Settings of a [`Producer`].
#[derive(Clone, Debug)]
pub struct ProducerOptions {
    /// Trimming done by every XADD.
    pub retention: Retention,
    /// Trim toward `retention`, but never past the first entry that a group
    /// of the stream still needs (its oldest pending entry, or the first one
    /// it has not read): a slow or stopped group loses nothing to trimming.
    /// The XADDs then trim nothing; a task of the producer trims each stream
    /// after every tenth of its length published (100 to 10,000 entries;
    /// 1,000 with `MaxAge`), in one atomic script, and once a second while a
    /// stream is still over its length. So a stream can be over its length
    /// by up to that many entries, and by the backlog of its slowest group.
    /// Trimming is approximate (whole nodes), even with `exact: true`.
    /// Default false.
    pub keep_unacked: bool,
    /// `Some((n, timeout))`: a publish succeeds only once `n` replicas hold
    /// the entry. Every pipeline ends with `WAIT n timeout`; when fewer
    /// replicas confirm within `timeout`, each of its entries fails with
    /// [`ErrorKind::NotReplicated`] (it is on the primary, and a failover
    /// could still lose it). `timeout` must be below the connection's
    /// `response_timeout`. Not on Redis Cluster. Default `None`: a publish
    /// succeeds once the primary has it.
    pub min_replicas: Option<(u32, Duration)>,
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
    /// How long a publish waits while Redis cannot be reached (a restart, a
    /// failover, a network cut) before it fails with `Unavailable`. Covers the
    /// whole call: the wait for room in the queue, and sending again after a
    /// failed connect. Default 30 s: longer than a Redis restart with a
    /// moderate AOF, short enough that a caller learns of an outage.
    pub publish_timeout: Duration,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            retention: Retention::Unbounded,
            keep_unacked: false,
            min_replicas: None,
            max_message_bytes: 1024 * 1024,
            max_pipeline: 32,
            batch_pipeline: 128,
            pipelines_in_flight: 8,
            queue_capacity: 8192,
            publish_timeout: Duration::from_secs(30),
        }
    }
}

struct Job {
    stream: Arc<str>,
    /// The XADD, built by the caller: encoding then runs on the callers'
    /// threads, in parallel, not in the one sender task.
    xadd: redis::Cmd,
    /// Given back to the caller in the error if the publish fails.
    message: Message,
    /// The end of the caller's `publish_timeout`.
    deadline: Instant,
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
    /// With `keep_unacked`: told of every entry written.
    trimmer: Option<Arc<Trimmer>>,
    /// The sender task ends with the last clone of the producer.
    _sender: AbortOnDropHandle<()>,
    /// So does the trimming task.
    _trim: Option<AbortOnDropHandle<()>>,
}

impl Producer {
    /// A producer for `client`, on a connection of its own, checked with
    /// `PING` (so that a wrong address or password fails here).
    pub async fn new(client: &Client, options: ProducerOptions) -> Result<Self> {
        if let Some((n, timeout)) = options.min_replicas {
            let response = client.options().response_timeout;
            if client.is_cluster() {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("min_replicas ({n}) is not supported on Redis Cluster: a pipeline's WAIT would have to reach the node of each stream"),
                ));
            }
            if timeout >= response {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("min_replicas timeout {timeout:?} must be below the connection's response timeout ({response:?}): WAIT holds the reply that long"),
                ));
            }
        }
        Ok(Self::on(client.connect().await?, options))
    }

    /// A producer with other options on this one's connection: for example a
    /// shorter [`ProducerOptions::publish_timeout`] for one call. It does not
    /// dial, so it is made at once even while Redis is away.
    pub fn with_options(&self, options: ProducerOptions) -> Producer {
        Self::on(self.inner.conn.clone(), options)
    }

    fn on(conn: Connection, options: ProducerOptions) -> Producer {
        let (queue, rx) = mpsc::channel(options.queue_capacity.max(1));
        let trimmer = options
            .keep_unacked
            .then(|| Trimmer::new(conn.clone(), options.retention))
            .flatten();
        let trim = trimmer
            .clone()
            .map(|t| AbortOnDropHandle::new(tokio::spawn(t.run())));
        let sender = tokio::spawn(sender_task(
            conn.clone(),
            options.max_pipeline.max(1),
            options.pipelines_in_flight.max(1),
            options.publish_timeout,
            rx,
            trimmer.clone(),
            min_replicas(&options),
        ));
        Producer {
            inner: Arc::new(Inner {
                conn,
                options,
                last_stream: std::sync::Mutex::new(None),
                queue,
                trimmer,
                _sender: AbortOnDropHandle::new(sender),
                _trim: trim,
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
    /// `TooLarge` (nothing written) when the message exceeds the size limit;
    /// with `Unavailable` (nothing written) when Redis could not be reached
    /// within `publish_timeout`; with `Unconfirmed` when it was sent but no
    /// reply came. The last two give the message back
    /// ([`Error::take_unpublished`]).
    pub async fn publish(&self, stream: &str, message: Message) -> Result<EntryId> {
        self.check(stream, &message)?;
        let deadline = Instant::now() + self.inner.options.publish_timeout;
        let (reply, rx) = oneshot::channel();
        let job = Job {
            stream: self.stream_name(stream),
            xadd: {
                let retention = self.xadd_retention();
                xadd(stream, &message, retention, clock(retention))
            },
            message,
            deadline,
            reply,
        };
        match tokio::time::timeout_at(deadline, self.inner.queue.send(job)).await {
            Ok(Ok(())) => {}
            Ok(Err(mpsc::error::SendError(job))) => {
                return Err(stopped().with_unpublished(job.message))
            }
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "XADD to {stream} not sent: the producer's queue stayed full for the publish timeout of {:?} (is Redis reachable?)",
                        self.inner.options.publish_timeout
                    ),
                ))
            }
        }
        rx.await.map_err(|_| stopped())?
    }

    /// Appends many messages to `stream` in pipelines and returns their entry ids
    /// in order. Every message is checked first: if one is too large, none is sent.
    ///
    /// The messages go out as pipelines of `batch_pipeline`, up to
    /// `pipelines_in_flight` at once, in order on one connection: they are
    /// appended in the order given. If Redis refuses one (e.g. `WRONGTYPE`),
    /// the first such error is returned; messages before it are written, and
    /// so may be some after it, from pipelines already under way. Use
    /// [`Producer::publish_batch_each`] to learn the outcome of each message.
    pub async fn publish_batch(
        &self,
        stream: &str,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<Vec<EntryId>> {
        let outcomes = self.publish_batch_each(stream, messages).await?;
        let mut ids = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            ids.push(outcome?);
        }
        Ok(ids)
    }

    /// Like [`Producer::publish_batch`], with the outcome of each message sent, in
    /// the order given: its entry id, or the error that message met (with the
    /// message in it, [`Error::take_unpublished`]).
    ///
    /// While Redis cannot be reached, pipelines are sent again, in order, until
    /// `publish_timeout` has passed since the call. After any other failure (a
    /// refusal such as `OOM`, `NOPERM` or `LOADING`, an `Unconfirmed` pipeline,
    /// or the timeout), no further pipeline is sent: the result is then
    /// shorter than the input, and the messages past its end were not sent.
    /// Pipelines already under way when that happened still report their
    /// outcomes. Fails as a whole (nothing sent) only when a message does not
    /// pass the checks (size, empty).
    ///
    /// Order across a reconnect: a pipeline that could not be sent is sent again
    /// before any later one, once those under way have finished. Only if Redis
    /// came back in the moment between two pipelines' connects can a later one
    /// have been written first.
    pub async fn publish_batch_each(
        &self,
        stream: &str,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<Vec<Result<EntryId>>> {
        let messages: Vec<Message> = messages.into_iter().collect();
        for m in &messages {
            self.check(stream, m)?;
        }
        let o = &self.inner.options;
        let retention = self.xadd_retention();
        let now = clock(retention);
        let wait = min_replicas(o);
        let deadline = Instant::now() + o.publish_timeout;
        // Larger than the sender task's pipelines: one caller, so no convoy of
        // callers to break up, and fewer writes. Measured (1000 per call, 8 in
        // flight, median of 4 alternating runs, msg/s): 32: 269k, 64: 268k,
        // 128: 323k, 256 (2 in flight): 314k, 512 (1 in flight): 266k.
        let size = o.batch_pipeline.max(1);
        let chunks: Vec<&[Message]> = messages.chunks(size).collect();
        let mut to_send: std::collections::VecDeque<usize> = (0..chunks.len()).collect();
        let mut not_sent_yet: Vec<usize> = Vec::new();
        let mut outcomes: Vec<Option<Result<EntryId>>> = Vec::new();
        outcomes.resize_with(messages.len(), || None);
        let mut in_flight = futures_util::stream::FuturesOrdered::new();
        let mut stopped = false;
        let mut delay = RESEND_FIRST_DELAY;
        loop {
            // The pipelines must be written in order. FuturesOrdered first
            // polls new futures in the order they were pushed, but a future
            // that tokio's cooperative budget stops before it has queued its
            // pipeline (the connection's channel is a budgeted tokio
            // resource) is polled again only after the ones never polled yet:
            // under CPU load, the pipelines after it were written first, and
            // their entries landed ahead of earlier ones (seen in 1 of 25 runs
            // of 200 calls of 1000 under two busy loops). `unconstrained`
            // keeps the budget from stopping a pipeline before it is queued;
            // what still waits (a full channel) waits its turn in order.
            while !stopped
                && not_sent_yet.is_empty()
                && in_flight.len() < o.pipelines_in_flight.max(1)
            {
                let Some(c) = to_send.pop_front() else { break };
                let mut pipe = redis::Pipeline::with_capacity(chunks[c].len());
                // Per-reply errors, so that WRONGTYPE & co. are classified like
                // a single publish's.
                pipe.ignore_errors();
                for m in chunks[c] {
                    pipe.add_command(xadd(stream, m, retention, now));
                }
                if let Some(w) = &wait {
                    w.add_wait(&mut pipe);
                }
                let mut conn = self.inner.conn.clone();
                in_flight.push_back(tokio::task::unconstrained(async move {
                    (c, pipe.query_async::<Vec<Value>>(&mut conn).await)
                }));
            }
            let Some((c, replies)) = in_flight.next().await else {
                if stopped || not_sent_yet.is_empty() {
                    break;
                }
                // Everything under way has finished: send the ones that could
                // not be, first, after a pause.
                tokio::time::sleep(delay.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
                delay = (delay * 2).min(RESEND_MAX_DELAY);
                metrics::counter!(crate::metrics::PUBLISH_RESENDS)
                    .increment(not_sent_yet.len() as u64);
                not_sent_yet.sort_unstable();
                for c in not_sent_yet.drain(..).rev() {
                    to_send.push_front(c);
                }
                continue;
            };
            let first = c * size;
            let chunk = chunks[c];
            let refused_for_now = |replies: &[Value]| match &wait {
                Some(w) => all_refused_for_now(w.xadds(replies)),
                None => all_refused_for_now(replies),
            };
            match replies {
                Ok(replies) if refused_for_now(&replies) && Instant::now() < deadline => {
                    not_sent_yet.push(c)
                }
                Ok(mut replies) => {
                    delay = RESEND_FIRST_DELAY;
                    let short = wait.as_ref().and_then(|w| w.take_reply(&mut replies));
                    let mut written = 0;
                    for (i, r) in replies.into_iter().enumerate() {
                        let outcome = entry_id(stream, r);
                        written += u64::from(outcome.is_ok());
                        let outcome = match (outcome, &wait, &short) {
                            (Ok(id), Some(w), Some(why)) => Err(w.not_replicated(stream, id, why)),
                            (outcome, ..) => outcome,
                        };
                        // Any refusal stops the batch, `LOADING` included: a
                        // later pipeline written once loading ended would put
                        // messages out of order.
                        stopped |= outcome.is_err();
                        outcomes[first + i] =
                            Some(outcome.map_err(|e| e.with_unpublished(chunk[i].clone())));
                    }
                    count_published(stream, written);
                    if let Some(t) = &self.inner.trimmer {
                        t.published(&self.stream_name(stream), written);
                    }
                }
                Err(e) if not_sent(&e) && Instant::now() < deadline => not_sent_yet.push(c),
                Err(e) => {
                    stopped = true;
                    let publish_timeout = o.publish_timeout;
                    for (i, m) in chunk.iter().enumerate() {
                        outcomes[first + i] = Some(Err(
                            send_error(stream, &e, publish_timeout).with_unpublished(m.clone())
                        ));
                    }
                }
            }
        }
        if let Some(t) = &self.inner.trimmer {
            t.trim_if_due(&self.stream_name(stream)).await;
        }
        Ok(outcomes.into_iter().map_while(|o| o).collect())
    }

    /// The trimming the XADDs do: none with `keep_unacked` (the trimmer
    /// does it).
    fn xadd_retention(&self) -> Retention {
        let o = &self.inner.options;
        if o.keep_unacked {
            Retention::Unbounded
        } else {
            o.retention
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

/// The replication a publish waits for, if any.
fn min_replicas(o: &ProducerOptions) -> Option<MinReplicas> {
    o.min_replicas
        .map(|(replicas, timeout)| MinReplicas { replicas, timeout })
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

/// First pause before sending again a pipeline that could not be sent.
const RESEND_FIRST_DELAY: Duration = Duration::from_millis(50);
/// Longest pause between attempts while Redis is away: once it is back, a
/// publish waits at most this long to notice.
const RESEND_MAX_DELAY: Duration = Duration::from_secs(1);

/// Whether Redis refused every command of a pipeline for a reason that passes
/// (`LOADING` after a restart, `BUSY`, `TRYAGAIN`, `CLUSTERDOWN`,
/// `MASTERDOWN`, `READONLY` during a failover): none was carried out, so the
/// pipeline can be sent again as it is.
fn all_refused_for_now(replies: &[Value]) -> bool {
    !replies.is_empty()
        && replies.iter().all(|r| {
            matches!(r, Value::ServerError(e) if matches!(
                e.code(),
                "LOADING" | "BUSY" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "READONLY"
            ))
        })
}

/// The error of a message whose pipeline failed as a whole: `Unavailable` when
/// it was never sent, `Unconfirmed` when it was sent and no reply came.
fn send_error(stream: &str, e: &redis::RedisError, publish_timeout: Duration) -> Error {
    if not_sent(e) {
        return Error::new(
            ErrorKind::Unavailable,
            format!("XADD to {stream} not sent: Redis stayed unreachable for the publish timeout of {publish_timeout:?}; nothing was written"),
        )
        .with_source(e.clone());
    }
    let err = Error::redis(format!("XADD to {stream} failed"), e.clone());
    match err.kind() {
        ErrorKind::Timeout | ErrorKind::Connection => Error::new(
            ErrorKind::Unconfirmed,
            format!("XADD to {stream} unconfirmed: it was sent, but no reply came ({}); the entry may or may not have been written", e),
        )
        .with_source(e.clone()),
        _ => err,
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
