//! Reading through a consumer group.
//!
//! A [`Consumer`] is one named member of a group. On start it first re-reads its
//! own pending entries (those delivered to this name before and never
//! acknowledged: `XREADGROUP ... 0`), so a consumer restarted under the same name
//! resumes its work; then it reads new entries (`>`).
//!
//! Two ways to read:
//! - [`Consumer::next_batch`]: the reference package's semantics: returns when
//!   `batch_size` entries are collected or `max_wait` has passed, whichever is first.
//! - [`Consumer::read`]: returns as soon as anything is available (what a
//!   low-latency worker wants).
//!
//! The blocking reads use a connection of their own, so they never delay the
//! acknowledgements sent on the shared connection.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use tokio::time::Instant;

use crate::admin::group;
use crate::connection::{Client, Connection};
use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::id::{EntryId, StartId};
use crate::keys;
use crate::reply;

/// Settings of a [`Consumer`].
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    /// Most entries one read returns.
    pub batch_size: usize,
    /// How long [`Consumer::next_batch`] waits to fill a batch, and the
    /// longest `block` of [`Consumer::read`]: the blocking connection is made
    /// for BLOCKs up to this long (its response timeout is this plus
    /// [`ConnectOptions::response_timeout`](crate::ConnectOptions::response_timeout)).
    pub max_wait: Duration,
    /// Where the group starts when this consumer creates it.
    pub start: StartId,
    /// Create the group (and stream) if missing. When false, a missing group is
    /// a `NoGroup` error.
    pub create_group: bool,
    /// The consumer's name in the group; `None` for [`default_consumer_name`].
    /// A consumer that comes back under the same name reads its own pending
    /// entries first.
    pub consumer_name: Option<String>,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            batch_size: 10,
            max_wait: Duration::from_secs(2),
            start: StartId::Beginning,
            create_group: true,
            consumer_name: None,
        }
    }
}

/// One named member of a consumer group.
pub struct Consumer {
    /// For XACK and friends; shared with whoever else uses the client's connection.
    shared: Connection,
    /// For blocking reads only (see the module docs).
    blocking: Connection,
    stream: Arc<str>,
    group: Arc<str>,
    name: Arc<str>,
    options: ConsumerOptions,
    /// While `Some`, the consumer is still re-reading its own pending entries,
    /// from after this id.
    pending_cursor: Option<EntryId>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("name", &self.name)
            .finish()
    }
}

impl Consumer {
    /// Joins `group` on `stream` (as [`ConsumerOptions::consumer_name`]),
    /// creating the group if allowed, with a shared connection and a blocking
    /// one of its own.
    pub async fn new(
        client: &Client,
        stream: &str,
        group: &str,
        options: ConsumerOptions,
    ) -> Result<Consumer> {
        let shared = client.connect().await?;
        Self::with_shared(client, shared, stream, group, options).await
    }

    /// Like [`Consumer::new`], reusing an existing shared connection.
    pub(crate) async fn with_shared(
        client: &Client,
        mut shared: Connection,
        stream: &str,
        group: &str,
        options: ConsumerOptions,
    ) -> Result<Consumer> {
        let name = match &options.consumer_name {
            Some(name) => name.clone(),
            None => default_consumer_name(),
        };
        keys::validate_name("stream", stream)?;
        keys::validate_name("group", group)?;
        keys::validate_name("consumer", &name)?;
        if options.batch_size == 0 {
            return Err(Error::new(
                crate::ErrorKind::InvalidInput,
                "batch size must be at least 1",
            ));
        }
        if options.create_group {
            group::create_group(&mut shared, stream, group, options.start).await?;
        }
        let blocking = client.connect_blocking(options.max_wait).await?;
        Ok(Consumer {
            shared,
            blocking,
            stream: stream.into(),
            group: group.into(),
            name: name.into(),
            options,
            pending_cursor: Some(EntryId::ZERO),
        })
    }

    /// The stream read from.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// This consumer's name in the group.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The options in use.
    pub fn options(&self) -> &ConsumerOptions {
        &self.options
    }

    /// Skips the re-reading of this consumer's own pending entries, for callers
    /// that take them back another way (the worker's reclaim loop does, with
    /// their delivery counts).
    pub fn skip_own_pending(&mut self) {
        self.pending_cursor = None;
    }

    /// Whether the consumer is still re-reading entries delivered to its name
    /// before (and not yet acknowledged).
    pub fn is_recovering(&self) -> bool {
        self.pending_cursor.is_some()
    }

    /// Returns up to `batch_size` entries: when that many are collected, or when
    /// `max_wait` has passed (possibly with none). Own pending entries come first
    /// and are returned without waiting.
    pub async fn next_batch(&mut self) -> Result<Vec<Entry>> {
        let batch = self.options.batch_size;
        if self.pending_cursor.is_some() {
            let own = self.read_own_pending(batch).await?;
            if !own.is_empty() {
                return Ok(own);
            }
        }
        let deadline = Instant::now() + self.options.max_wait;
        let mut out = Vec::with_capacity(batch);
        while out.len() < batch {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = if left < Duration::from_millis(1) {
                // One last non-blocking look, so a full backlog is never missed.
                self.read_new(batch - out.len(), None).await?
            } else {
                self.read_new(batch - out.len(), Some(left)).await?
            };
            let empty = got.is_empty();
            out.extend(got);
            if left < Duration::from_millis(1) || (empty && Instant::now() >= deadline) {
                break;
            }
        }
        Ok(out)
    }

    /// Returns up to `count` entries as soon as any are available, waiting up to
    /// `block` (no waiting with `None`). Own pending entries come first.
    ///
    /// `block` is cut to [`ConsumerOptions::max_wait`] (logged at debug
    /// level), the longest BLOCK the blocking connection was made for: a
    /// longer one would outlast the connection's response timeout, fail with a
    /// `Timeout` on the client and cost the connection. So a read may return
    /// empty before `block` has passed; call it again to wait longer.
    pub async fn read(&mut self, count: usize, block: Option<Duration>) -> Result<Vec<Entry>> {
        if self.pending_cursor.is_some() {
            let own = self.read_own_pending(count).await?;
            if !own.is_empty() {
                return Ok(own);
            }
        }
        let block = block.map(|b| self.clamp_block(b));
        self.read_new(count, block).await
    }

    /// `block`, at most `max_wait` (see [`Consumer::read`]).
    fn clamp_block(&self, block: Duration) -> Duration {
        let max = self.options.max_wait;
        if block <= max {
            return block;
        }
        tracing::debug!(
            stream = &*self.stream,
            group = &*self.group,
            consumer = &*self.name,
            asked_ms = block.as_millis() as u64,
            max_wait_ms = max.as_millis() as u64,
            "read's block is longer than the consumer's max_wait: blocking for max_wait"
        );
        max
    }

    /// Re-reads entries already delivered to this consumer and not acknowledged.
    /// Entries deleted from the stream meanwhile come back with no fields.
    async fn read_own_pending(&mut self, count: usize) -> Result<Vec<Entry>> {
        let Some(cursor) = self.pending_cursor else {
            return Ok(Vec::new());
        };
        let cmd = xreadgroup(&self.group, &self.name, count, None, &self.stream, cursor);
        let v: Value = cmd
            .query_async(&mut self.shared)
            .await
            .map_err(|e| self.read_error(e))?;
        let entries = reply::read_one(&self.stream, v)?;
        match entries.last() {
            Some(last) => self.pending_cursor = Some(last.id),
            None => self.pending_cursor = None,
        }
        Ok(entries)
    }

    async fn read_new(&mut self, count: usize, block: Option<Duration>) -> Result<Vec<Entry>> {
        let cmd = xreadgroup(&self.group, &self.name, count, block, &self.stream, ">");
        let conn = if block.is_some() {
            &mut self.blocking
        } else {
            &mut self.shared
        };
        let v: Value = cmd
            .query_async(conn)
            .await
            .map_err(|e| self.read_error(e))?;
        reply::read_one(&self.stream, v)
    }

    /// `XACK <ack ids>` and a non-blocking `XREADGROUP COUNT <count> ... >` in one
    /// pipeline: one round trip for the acknowledgements of the last batch and the
    /// next batch (what the plain read-ack loop of the engineering notes does).
    /// Returns the new entries. On an error the acknowledgements may or may not
    /// have been applied (XACK is idempotent: the caller sends them again).
    pub(crate) async fn ack_then_read(
        &mut self,
        ack_ids: &[EntryId],
        count: usize,
    ) -> Result<Vec<Entry>> {
        if ack_ids.is_empty() {
            return self.read_new(count, None).await;
        }
        self.reader(false).ack_then_read(ack_ids, count).await
    }

    /// Acknowledges `ack_ids` and returns up to `count` entries that are
    /// there now, without waiting, in one round trip (`XACK` and
    /// `XREADGROUP` pipelined): for a loop that handles a batch, then
    /// acknowledges it and reads the next. While own pending entries are
    /// re-read first ([`Consumer::is_recovering`]), it acknowledges, then
    /// reads, in two. On an error the acknowledgements may or may not have
    /// been applied: send them again (XACK is idempotent).
    pub async fn ack_and_read(&mut self, ack_ids: &[EntryId], count: usize) -> Result<Vec<Entry>> {
        if self.is_recovering() {
            self.ack(ack_ids).await?;
            return self.read(count, None).await;
        }
        self.ack_then_read(ack_ids, count).await
    }

    /// [`Consumer::ack_and_read`] as a future that borrows nothing, for a loop
    /// that reads the next batch while it handles this one: spawn it, handle
    /// the batch in hand, then take its entries. It reads new entries only and
    /// never blocks; while [`Consumer::is_recovering`], read with
    /// [`Consumer::read`] instead (own pending entries come first, in order).
    ///
    /// The entries it takes are delivered to this consumer once Redis has
    /// run it, whether or not its result is awaited: a caller that drops it
    /// leaves them pending under this name (re-read first by the next
    /// consumer of the same name). On an error the acknowledgements may or may
    /// not have been applied: send them again.
    pub fn read_ahead(
        &self,
        ack_ids: Vec<EntryId>,
        count: usize,
    ) -> impl std::future::Future<Output = Result<Vec<Entry>>> + Send + 'static {
        self.read_ahead_on(false, ack_ids, count)
    }

    /// [`Consumer::read_ahead`] on the consumer's other connection (the shared
    /// one, not the one for blocking reads). Each connection's replies are
    /// parsed by one task, so two reads under way on the two connections are
    /// parsed on two threads at once. Redis may serve them in either order;
    /// each takes a contiguous run of the new entries, so ordering the two
    /// batches by their first id gives stream order.
    pub fn read_ahead_shared(
        &self,
        ack_ids: Vec<EntryId>,
        count: usize,
    ) -> impl std::future::Future<Output = Result<Vec<Entry>>> + Send + 'static {
        self.read_ahead_on(true, ack_ids, count)
    }

    fn read_ahead_on(
        &self,
        shared: bool,
        ack_ids: Vec<EntryId>,
        count: usize,
    ) -> impl std::future::Future<Output = Result<Vec<Entry>>> + Send + 'static {
        let reader = self.reader(shared);
        async move { reader.ack_then_read(&ack_ids, count).await }
    }

    /// A handle that sends non-blocking reads of new entries (with
    /// acknowledgements) on this consumer's read connection without borrowing
    /// the consumer, so that a worker can have a second read under way while it
    /// takes the reply of the first.
    pub(crate) fn reader(&self, shared: bool) -> Reader {
        Reader {
            conn: if shared {
                self.shared.clone()
            } else {
                self.blocking.clone()
            },
            stream: self.stream.clone(),
            group: self.group.clone(),
            name: self.name.clone(),
        }
    }

    fn read_error(&self, e: redis::RedisError) -> Error {
        read_error(&self.stream, &self.group, &self.name, e)
    }

    /// Acknowledges entries: they leave the group's pending list. One XACK for all
    /// ids. Returns how many were pending.
    pub async fn ack(&self, ids: &[EntryId]) -> Result<u64> {
        ack(&mut self.shared.clone(), &self.stream, &self.group, ids).await
    }

    /// Acknowledges entries and deletes them from the stream, atomically
    /// (MULTI/EXEC). Only for streams that have this one group: other groups
    /// would lose entries they have not read yet.
    pub async fn ack_and_delete(&self, ids: &[EntryId]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("XACK")
            .arg(&*self.stream)
            .arg(&*self.group)
            .arg(ids);
        pipe.cmd("XDEL").arg(&*self.stream).arg(ids);
        let (acked, _deleted): (u64, u64) = pipe
            .query_async(&mut self.shared.clone())
            .await
            .map_err(|e| {
                Error::redis(
                    format!("cannot ack and delete entries of {:?}", self.stream),
                    e,
                )
            })?;
        Ok(acked)
    }
}

/// `XREADGROUP GROUP group name COUNT count [BLOCK ms] STREAMS stream from`.
fn xreadgroup(
    group: &str,
    name: &str,
    count: usize,
    block: Option<Duration>,
    stream: &str,
    from: impl redis::ToRedisArgs,
) -> redis::Cmd {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(group)
        .arg(name)
        .arg("COUNT")
        .arg(count.max(1));
    if let Some(block) = block {
        // BLOCK 0 would mean "forever": never send less than 1 ms.
        cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
    }
    cmd.arg("STREAMS").arg(stream).arg(from);
    cmd
}

fn read_error(stream: &str, group: &str, name: &str, e: redis::RedisError) -> Error {
    Error::redis(
        format!("cannot read stream {stream:?} as consumer {name:?} of group {group:?}"),
        e,
    )
}

/// See [`Consumer::reader`]. Reads of new entries only (`>`): the consumer's own
/// pending entries are not re-read through it.
#[derive(Clone)]
pub(crate) struct Reader {
    conn: Connection,
    stream: Arc<str>,
    group: Arc<str>,
    name: Arc<str>,
}

impl Reader {
    /// `[XACK ack_ids…, XREADGROUP COUNT count STREAMS stream >]` in one round
    /// trip, never blocking (no XACK when `ack_ids` is empty).
    pub(crate) async fn ack_then_read(
        mut self,
        ack_ids: &[EntryId],
        count: usize,
    ) -> Result<Vec<Entry>> {
        let mut pipe = redis::Pipeline::with_capacity(2);
        if !ack_ids.is_empty() {
            pipe.cmd("XACK")
                .arg(&*self.stream)
                .arg(&*self.group)
                .arg(ack_ids)
                .ignore();
        }
        pipe.add_command(xreadgroup(
            &self.group,
            &self.name,
            count,
            None,
            &self.stream,
            ">",
        ));
        let (v,): (Value,) = pipe.query_async(&mut self.conn).await.map_err(|e| {
            if ack_ids.is_empty() {
                read_error(&self.stream, &self.group, &self.name, e)
            } else {
                Error::redis(
                    format!(
                        "cannot acknowledge {} entries of stream {:?} (group {:?}) and read the next",
                        ack_ids.len(),
                        &*self.stream,
                        &*self.group
                    ),
                    e,
                )
            }
        })?;
        reply::read_one(&self.stream, v)
    }
}

/// `XACK stream group id...`; returns how many of the ids were pending.
pub async fn ack(conn: &mut Connection, stream: &str, group: &str, ids: &[EntryId]) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    redis::cmd("XACK")
        .arg(stream)
        .arg(group)
        .arg(ids)
        .query_async(conn)
        .await
        .map_err(|e| {
            Error::redis(
                format!("cannot acknowledge entries of {stream:?} for group {group:?}"),
                e,
            )
        })
}

/// A consumer name that is unique per process: `<hostname>-<pid>`.
///
/// A consumer that restarts under the same name takes back its own pending
/// entries at once; a new name leaves them to the reclaim of idle entries.
pub fn default_consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "consumer".to_owned());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConnectOptions;
    use streambus_testkit::RedisServer;

    /// A block longer than the blocking connection allows waits `max_wait`
    /// and returns what there is, instead of timing out on the client.
    #[tokio::test]
    async fn a_block_longer_than_the_connection_allows_is_cut_to_max_wait() {
        let redis = RedisServer::start();
        let client = Client::open_with(
            &redis.url(),
            ConnectOptions {
                response_timeout: Duration::from_millis(300),
                ..Default::default()
            },
        )
        .unwrap();
        let stream = format!("{}s", streambus_testkit::unique_prefix("clamp"));
        let max_wait = Duration::from_millis(100);
        let mut consumer = Consumer::new(
            &client,
            &stream,
            "g",
            ConsumerOptions {
                max_wait,
                consumer_name: Some("c".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        // Past its own pending entries (none), so that the reads below block.
        assert!(consumer.read(10, None).await.unwrap().is_empty());
        let started = Instant::now();
        let got = consumer.read(10, Some(Duration::from_secs(5))).await;
        let waited = started.elapsed();
        assert!(got.unwrap().is_empty());
        assert!(waited >= max_wait, "{waited:?}");
        // And the connection still serves a read that finds an entry.
        let mut conn = client.connect().await.unwrap();
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("a")
            .arg("1")
            .query_async(&mut conn)
            .await
            .unwrap();
        let got = consumer
            .read(10, Some(Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
    }
}
