//! The relay engine: reads streams and fans their entries out to subscribers
//! through channels. No HTTP or WebSocket types: the `/ws` route
//! (`routes::ws`) adapts it to axum, and the engine is generic over the text
//! type it fans out ([`Text`]), built once per entry.
//!
//! Every subscriber sees every new entry of the streams it subscribed to, as
//! the JSON objects `streambus tail` prints ([`streambus::Entry::to_json`]).
//!
//! # Design
//!
//! - **Plain `XREAD`, no consumer group.** Several service instances each see
//!   all entries (the reference relay read through a group, so two instances
//!   each showed half of them).
//! - **One reader per stream per process** ([`reader`]), on a blocking
//!   connection of its own, fanned out through a `tokio::sync::broadcast`
//!   channel. Each entry is turned into JSON text once, whatever the number of
//!   subscribers. A reader starts for every configured stream at startup, or on
//!   the first subscriber, and a reader started on demand stops when its last
//!   subscriber leaves.
//! - **Resume**: a subscriber may replay the entries after an id
//!   ([`Relay::replay_page`], `XRANGE`), then continue live. It subscribes to
//!   the broadcast *before* the replay, and live entries at or below the last id
//!   it was given are skipped ([`Subscription::admit`]): no gap, no duplicate.
//! - **Slow subscribers lag.** The broadcast channel's capacity
//!   ([`ServerConfig::ws_client_queue`]) is how far one subscriber may fall
//!   behind; past it, [`Subscription::recv`] says [`Recv::Lagged`] and the
//!   subscriber should resync from [`Subscription::last_sent`]. It never slows
//!   other subscribers, and memory stays bounded by the channel capacity.
//! - **Faults.** A reader whose read fails (a timeout, a reset, Redis
//!   restarting) retries with backoff ([`READ_BACKOFF`]: 50 ms doubling to 2 s,
//!   with jitter) on the same [`Connection`], which dials a new socket after a
//!   failed one, and reads again after the last id it relayed: subscribers see
//!   no gap and no duplicate. With the default timeouts a reader reads again at
//!   most about 8 s after the network heals (a read or dial in flight on a dead
//!   path fails after at most 6 s, then one backoff of at most 2 s). If, after
//!   a failure, the stream's newest id is below the last one relayed (Redis
//!   restarted without persistence, or from an older copy, or a replica that
//!   was behind took over), the reader logs a warning, sends each subscriber
//!   `{"type":"reset","stream":S,"after":ID,"reason":...}` and continues after
//!   `ID`: the newest entry it remembers relaying (of its last 256), so that
//!   only entries it never sent follow; `0-0` when it relayed none of them
//!   (Redis restarted empty), so that entries written since are relayed, not
//!   skipped. A replay page that fails is retried the same way.
//! - **Partitioned streams** ([`ServerConfig::partitions`]): one reader per
//!   partition (a read cannot span slots on a cluster), each with its own
//!   feed; entries carry `"stream"` set to the logical stream and a
//!   `"partition"` index ([`Label`]).

mod reader;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use streambus::partition::Partitions;
use streambus::{Backoff, Client, Connection, EntryId};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::chain::error_chain;
use crate::config::ServerConfig;

/// Entries per `XREAD` of a reader. At most a quarter of the broadcast
/// capacity, so that one read cannot by itself push a keeping-up subscriber
/// past its queue.
const MAX_READ_COUNT: usize = 256;

/// Entries per `XRANGE` page of a replay: one page is in memory at a time.
pub(crate) const REPLAY_PAGE: usize = 256;

/// Delay before a reader (or a replay) tries again after a failure: short at
/// first, so that a reset costs next to nothing, capped low, so that the
/// relay is back soon after Redis is.
pub(crate) const READ_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(50),
    factor: 2.0,
    max: Duration::from_secs(2),
};

/// What the relay fans out: JSON text, built once per entry and cloned for
/// each subscriber (so it should be cheap to clone, e.g. `Bytes`-backed).
pub(crate) trait Text: Clone + Send + Sync + From<String> + 'static {}

impl<T: Clone + Send + Sync + From<String> + 'static> Text for T {}

/// A partition's logical stream and index.
pub(crate) type Label = (Arc<str>, usize);

/// One event as relayed: an entry, or a `reset` notice.
#[derive(Clone, Debug)]
pub(crate) struct Event<T> {
    /// The entry's id; for a reset, where the stream continues after.
    pub id: EntryId,
    /// The JSON text.
    pub text: T,
    /// A `reset` notice, not an entry: the stream's ids went backwards, and
    /// the subscriber continues after `id` (see the module docs).
    pub reset: bool,
}

/// The `reset` notice (see the module docs).
#[derive(Serialize)]
struct ResetNotice<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    stream: &'a str,
    after: String,
    reason: &'a str,
    /// For a partition: its index (`stream` is then the logical stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<usize>,
}

impl<T: Text> Event<T> {
    /// `label`: for a partition, its logical stream and index.
    pub(crate) fn of(entry: &streambus::Entry, label: Option<&Label>) -> Self {
        // The library's JSON of an entry, labelled for a partition.
        let mut v = entry.to_json();
        if let Some((stream, index)) = label {
            v["stream"] = (&**stream).into();
            v["partition"] = (*index).into();
        }
        Event {
            id: entry.id,
            text: T::from(v.to_string()),
            reset: false,
        }
    }

    /// The notice that the reader of a stream continues after `after`, below
    /// what it relayed before.
    fn reset(stream: &str, label: Option<&Label>, after: EntryId, reason: &str) -> Self {
        let notice = ResetNotice {
            kind: "reset",
            stream: label.map_or(stream, |(logical, _)| logical),
            after: after.to_string(),
            reason,
            partition: label.map(|(_, index)| *index),
        };
        Event {
            id: after,
            text: T::from(to_json(&notice)),
            reset: true,
        }
    }
}

/// `value` as JSON text. The relay's notices are plain structs of strings and
/// numbers, which always serialize.
pub(crate) fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Why a subscription was refused.
#[derive(Debug)]
pub(crate) enum SubscribeError {
    /// A new reader would exceed [`ServerConfig::max_streams`].
    Full { max_streams: usize },
    /// The stream's start position could not be read.
    Redis(streambus::Error),
}

impl From<streambus::Error> for SubscribeError {
    fn from(e: streambus::Error) -> Self {
        SubscribeError::Redis(e)
    }
}

/// The feeds, by stream key. The readers hold it weakly, to remove their own
/// feed when the last subscriber left.
type Feeds<T> = Arc<Mutex<HashMap<Arc<str>, Feed<T>>>>;

fn lock<T>(
    feeds: &Mutex<HashMap<Arc<str>, Feed<T>>>,
) -> MutexGuard<'_, HashMap<Arc<str>, Feed<T>>> {
    feeds
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The relay: one feed (reader task + broadcast channel) per stream read.
pub(crate) struct Relay<T> {
    feeds: Feeds<T>,
    client: Client,
    /// For replays and the readers' start positions (non-blocking commands).
    conn: Connection,
    capacity: usize,
    block: Duration,
    max_streams: usize,
    /// Cancelled when the service shuts down: readers and replays stop.
    shutdown: CancellationToken,
}

struct Feed<T> {
    tx: broadcast::Sender<Event<T>>,
    /// The id of the last entry the reader broadcast (or its start position):
    /// a new subscriber receives exactly the entries after it.
    position: Arc<Mutex<EntryId>>,
    /// The reader; aborted when the feed is dropped.
    _reader: AbortOnDropHandle<()>,
}

/// A subscription to one stream (or one partition).
pub(crate) struct Subscription<T> {
    /// The key read.
    pub stream: Arc<str>,
    /// For a partition: its logical stream and index.
    pub label: Option<Label>,
    rx: broadcast::Receiver<Event<T>>,
    /// The last id given to the subscriber (or the resume point): later
    /// entries only.
    last_sent: EntryId,
}

/// What [`Subscription::recv`] got.
pub(crate) enum Recv<T> {
    Event(Event<T>),
    /// The subscriber fell behind by more than the channel's capacity.
    Lagged,
    /// The reader is gone (the service shuts down).
    Closed,
}

impl<T: Text> Subscription<T> {
    /// The last id given to the subscriber: where to resync from.
    pub(crate) fn last_sent(&self) -> EntryId {
        self.last_sent
    }

    /// Resumes after `id`: replay from there ([`Relay::replay_page`]), and
    /// live entries up to it are skipped.
    pub(crate) fn resume_after(&mut self, id: EntryId) {
        self.last_sent = id;
    }

    /// Whether `ev` should go to the subscriber: a reset always (later
    /// entries then come after its id, below what was sent), an entry only
    /// after the last id sent. Moves the last id sent.
    pub(crate) fn admit(&mut self, ev: &Event<T>) -> bool {
        if !ev.reset && ev.id <= self.last_sent {
            return false;
        }
        self.last_sent = ev.id;
        true
    }

    /// The next event. Cancel safe: nothing is lost when another branch of a
    /// `select!` wins.
    pub(crate) async fn recv(&mut self) -> Recv<T> {
        match self.rx.recv().await {
            Ok(ev) => Recv::Event(ev),
            Err(RecvError::Lagged(_)) => Recv::Lagged,
            Err(RecvError::Closed) => Recv::Closed,
        }
    }

    /// The next event if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<Recv<T>> {
        match self.rx.try_recv() {
            Ok(ev) => Some(Recv::Event(ev)),
            Err(TryRecvError::Lagged(_)) => Some(Recv::Lagged),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Closed) => Some(Recv::Closed),
        }
    }
}

/// One page of a replay.
pub(crate) enum Page<T> {
    /// Events after the subscription's last id; `more` when the page was full.
    Events { events: Vec<Event<T>>, more: bool },
    /// The service shuts down.
    Shutdown,
    /// A failure that retrying cannot fix (logged).
    Failed,
}

impl<T: Text> Relay<T> {
    pub(crate) fn new(
        config: &ServerConfig,
        client: Client,
        conn: Connection,
        shutdown: CancellationToken,
    ) -> Self {
        Relay {
            feeds: Arc::new(Mutex::new(HashMap::new())),
            client,
            conn,
            capacity: config.ws_client_queue,
            block: config.relay_block,
            max_streams: config.max_streams,
            shutdown,
        }
    }

    /// Starts the reader of a configured stream; it runs until shutdown.
    pub(crate) async fn start_pinned(&self, stream: &str) -> streambus::Result<()> {
        self.feed(stream, None, true).await.map(|_| ())
    }

    /// Starts the readers of every partition of a configured stream.
    pub(crate) async fn start_pinned_partitions(&self, p: &Partitions) -> streambus::Result<()> {
        let stream: Arc<str> = p.stream().into();
        for (i, key) in p.keys().iter().enumerate() {
            self.feed(key, Some((stream.clone(), i)), true).await?;
        }
        Ok(())
    }

    /// Subscribes to every partition of a logical stream.
    pub(crate) async fn subscribe_partitions(
        &self,
        p: &Partitions,
    ) -> Result<Vec<Subscription<T>>, SubscribeError> {
        let stream: Arc<str> = p.stream().into();
        let mut subs = Vec::with_capacity(p.len());
        for (i, key) in p.keys().iter().enumerate() {
            subs.push(self.subscribe_key(key, Some((stream.clone(), i))).await?);
        }
        Ok(subs)
    }

    /// Subscribes to `stream`, starting its reader if needed. Live entries after
    /// the moment of this call are delivered to the returned subscription.
    pub(crate) async fn subscribe(&self, stream: &str) -> Result<Subscription<T>, SubscribeError> {
        self.subscribe_key(stream, None).await
    }

    async fn subscribe_key(
        &self,
        stream: &str,
        label: Option<Label>,
    ) -> Result<Subscription<T>, SubscribeError> {
        let Some((rx, position)) = self.feed(stream, label.clone(), false).await? else {
            return Err(SubscribeError::Full {
                max_streams: self.max_streams,
            });
        };
        Ok(Subscription {
            stream: stream.into(),
            label,
            rx,
            last_sent: position,
        })
    }

    /// Subscribes to the feed of `stream`, creating it if needed; `None` when
    /// a new feed would exceed [`ServerConfig::max_streams`] (configured streams
    /// do not count against it).
    async fn feed(
        &self,
        stream: &str,
        label: Option<Label>,
        pinned: bool,
    ) -> streambus::Result<Option<(broadcast::Receiver<Event<T>>, EntryId)>> {
        if let Some(sub) = self.existing(stream) {
            return Ok(Some(sub));
        }
        // The start position is read before the feed exists, so that no entry
        // added after this call can be missed by the reader.
        let start = streambus::read::last_id(&mut self.conn.clone(), stream)
            .await?
            .unwrap_or(EntryId::ZERO);
        let mut feeds = lock(&self.feeds);
        if let Some(f) = feeds.get(stream) {
            // Another subscriber created it meanwhile.
            return Ok(Some((f.tx.subscribe(), current(&f.position))));
        }
        if !pinned && feeds.len() >= self.max_streams {
            return Ok(None);
        }
        let (tx, rx) = broadcast::channel(self.capacity);
        let position = Arc::new(Mutex::new(start));
        let name: Arc<str> = stream.into();
        let reader = reader::Reader {
            stream: name.clone(),
            label,
            client: self.client.clone(),
            tx: tx.clone(),
            position: position.clone(),
            block: self.block,
            count: (self.capacity / 4).clamp(1, MAX_READ_COUNT),
            pinned,
            feeds: Arc::downgrade(&self.feeds),
            shutdown: self.shutdown.clone(),
        };
        let handle = AbortOnDropHandle::new(tokio::spawn(reader.run()));
        feeds.insert(
            name,
            Feed {
                tx,
                position,
                _reader: handle,
            },
        );
        Ok(Some((rx, start)))
    }

    fn existing(&self, stream: &str) -> Option<(broadcast::Receiver<Event<T>>, EntryId)> {
        let feeds = lock(&self.feeds);
        let f = feeds.get(stream)?;
        Some((f.tx.subscribe(), current(&f.position)))
    }

    /// Streams with a running reader (for tests and diagnostics).
    pub(crate) fn streams(&self) -> usize {
        lock(&self.feeds).len()
    }

    /// The next page of entries after `sub`'s last id (`XRANGE`), retried
    /// with [`READ_BACKOFF`] while Redis is unreachable. The caller sends
    /// them through [`Subscription::admit`].
    pub(crate) async fn replay_page(&self, sub: &Subscription<T>) -> Page<T> {
        let mut conn = self.conn.clone();
        let mut jitter = streambus::Jitter::new();
        let mut failures = 0u32;
        loop {
            if self.shutdown.is_cancelled() {
                return Page::Shutdown;
            }
            let after = sub.last_sent;
            let read =
                streambus::read::range_after(&mut conn, &sub.stream, Some(after), REPLAY_PAGE);
            let page = tokio::select! {
                r = read => r,
                _ = self.shutdown.cancelled() => return Page::Shutdown,
            };
            match page {
                Ok(page) => {
                    let label = sub.label.as_ref();
                    return Page::Events {
                        more: page.len() >= REPLAY_PAGE,
                        events: page.iter().map(|e| Event::of(e, label)).collect(),
                    };
                }
                Err(e) if e.is_retryable() => {
                    if failures == 0 {
                        tracing::warn!(stream = %sub.stream, %after, error = %error_chain(&e), "replay failed; retrying");
                    }
                    failures = failures.saturating_add(1);
                    let delay = READ_BACKOFF.delay_with_jitter(failures, jitter.next_unit());
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.cancelled() => return Page::Shutdown,
                    }
                }
                Err(e) => {
                    tracing::warn!(stream = %sub.stream, error = %error_chain(&e), "replay failed; giving up");
                    return Page::Failed;
                }
            }
        }
    }
}

fn current(position: &Mutex<EntryId>) -> EntryId {
    *position
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> EntryId {
        EntryId { ms, seq: 0 }
    }

    #[test]
    fn admit_skips_what_was_sent_but_never_a_reset() {
        let (_tx, rx) = broadcast::channel::<Event<String>>(4);
        let mut sub = Subscription {
            stream: "s".into(),
            label: None,
            rx,
            last_sent: id(5),
        };
        let entry = |ms| Event {
            id: id(ms),
            text: String::new(),
            reset: false,
        };
        assert!(!sub.admit(&entry(4)));
        assert!(!sub.admit(&entry(5)));
        assert!(sub.admit(&entry(6)));
        assert_eq!(sub.last_sent(), id(6));
        let reset = Event::<String>::reset("s", None, id(2), "stream_went_backwards");
        assert!(sub.admit(&reset));
        assert_eq!(sub.last_sent(), id(2));
        assert!(sub.admit(&entry(3)));
    }

    #[test]
    fn reset_notice_names_the_logical_stream_of_a_partition() {
        let plain = Event::<String>::reset("s", None, id(2), "stream_emptied");
        let v: serde_json::Value = serde_json::from_str(&plain.text).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "reset", "stream": "s", "after": "2-0", "reason": "stream_emptied"})
        );
        let label: Label = ("orders".into(), 3);
        let part = Event::<String>::reset("{orders}:p3", Some(&label), id(2), "stream_emptied");
        let v: serde_json::Value = serde_json::from_str(&part.text).unwrap();
        assert_eq!(v["stream"], "orders");
        assert_eq!(v["partition"], 3);
    }
}
