//! The WebSocket relay: `GET /ws?streams=S1,S2[&from=ID]`.
//!
//! Every client sees every new entry of the streams it asks for, as the JSON
//! objects `streambus tail` prints ([`Entry::to_json`]), one per text message.
//!
//! # Design
//!
//! - **Plain `XREAD`, no consumer group.** Several service instances each see
//!   all entries (the reference relay read through a group, so two instances
//!   each showed half of them).
//! - **One reader per stream per process**, on a blocking connection of its own,
//!   fanned out through a `tokio::sync::broadcast` channel. Each entry is turned
//!   into JSON text once, whatever the number of clients. A reader starts for
//!   every configured stream at startup, or on the first subscriber, and a
//!   reader started on demand stops when its last client leaves.
//! - **Resume**: `from=ID` (or the `Last-Event-ID` header) replays the entries
//!   after `ID` with `XRANGE`, then continues live. The client subscribes to
//!   the broadcast *before* the replay, and live entries at or below the last id
//!   sent are skipped: no gap, no duplicate.
//! - **Slow clients are cut off.** The broadcast channel's capacity
//!   ([`ServerConfig::ws_client_queue`]) is how far one client may fall behind.
//!   Past it, the client gets `{"type":"lagged","stream":S,"resync_from":ID}`
//!   and a close frame (1008, `lagged: resync from ID`), and may reconnect with
//!   `from=ID`. A write that takes longer than
//!   [`ServerConfig::ws_send_timeout`] (a client that stopped reading) drops the
//!   connection. Either way it never slows other clients, and memory stays
//!   bounded by the channel capacity.
//! - **Faults.** A reader whose read fails (a timeout, a reset, Redis
//!   restarting) retries with backoff ([`READ_BACKOFF`]: 50 ms doubling to 2 s,
//!   with jitter) on the same [`Connection`], which dials a new socket after a
//!   failed one, and reads again after the last id it relayed: clients stay
//!   connected and see no gap and no duplicate. With the default timeouts a
//!   reader reads again at most about 8 s after the network heals (a read or
//!   dial in flight on a dead path fails after at most 6 s, then one backoff of
//!   at most 2 s). If, after a failure, the stream's newest id is below the
//!   last one relayed (Redis restarted without persistence, or from an older
//!   copy, or a replica that was behind took over), the reader logs a warning,
//!   tells each client `{"type":"reset","stream":S,"after":ID,"reason":...}`
//!   and continues after `ID`: the newest entry it remembers relaying (of its
//!   last 256), so that only entries it never sent follow; `0-0` when it
//!   relayed none of them (Redis restarted empty), so that entries written
//!   since are relayed, not skipped.
//!   A replay (`from=`) that fails is retried the same way.
//! - **Shutdown** sends a close frame (1001, `server shutting down`).
//! - **Partitioned streams** ([`ServerConfig::partitions`]): one reader per
//!   partition (a read cannot span slots on a cluster), each with its own
//!   feed; a client asking for the logical stream subscribes to all of them
//!   and receives entries in order of arrival, each with `"stream"` set to the
//!   logical stream and a `"partition"` index. Resuming (`from=`) is refused
//!   (400) for them: entry ids are per partition, so one id cannot say where
//!   to resume in each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use streambus::partition::Partitions;
use streambus::{Backoff, Client, Connection, EntryId};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::auth;
use crate::config::ServerConfig;
use crate::error::{error_chain, ApiError};
use crate::metrics as server_metrics;
use crate::state::AppState;

/// Entries per `XREAD` of a reader. At most a quarter of the broadcast
/// capacity, so that one read cannot by itself push a keeping-up client past
/// its queue.
const MAX_READ_COUNT: usize = 256;

/// Entries per `XRANGE` page of a replay: one page is in memory at a time.
const REPLAY_PAGE: usize = 256;

/// Entries sent to a client before one flush: bounds the socket write buffer
/// to one batch while saving a system call per entry.
const SEND_BATCH: usize = 64;

/// Most streams one client may ask for at once.
const MAX_STREAMS_PER_CLIENT: usize = 32;

/// Time allowed for the final message and close frame to a departing client.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Delay before a reader (or a replay) tries again after a failure: short at
/// first, so that a reset costs next to nothing, capped low, so that the
/// relay is back soon after Redis is.
const READ_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(50),
    factor: 2.0,
    max: Duration::from_secs(2),
};

/// One entry as relayed: its id (to skip duplicates after a replay) and its
/// JSON text, built once and shared by every client (cheap to clone).
#[derive(Clone, Debug)]
pub(crate) struct RelayEvent {
    id: EntryId,
    text: Utf8Bytes,
    /// A `reset` notice, not an entry: the stream's ids went backwards, and
    /// the client continues after `id` (see the module docs).
    reset: bool,
}

impl RelayEvent {
    /// `label`: for a partition, its logical stream and index.
    fn of(entry: &streambus::Entry, label: Option<&Label>) -> Self {
        let mut v = entry.to_json();
        if let Some((stream, index)) = label {
            v["stream"] = (&**stream).into();
            v["partition"] = (*index).into();
        }
        RelayEvent {
            id: entry.id,
            text: v.to_string().into(),
            reset: false,
        }
    }

    /// The notice that the reader of a stream continues after `after`, below
    /// what it relayed before.
    fn reset(stream: &str, label: Option<&Label>, after: EntryId, reason: &str) -> Self {
        let mut v = serde_json::json!({
            "type": "reset",
            "stream": stream,
            "after": after.to_string(),
            "reason": reason,
        });
        if let Some((logical, index)) = label {
            v["stream"] = (&**logical).into();
            v["partition"] = (*index).into();
        }
        RelayEvent {
            id: after,
            text: v.to_string().into(),
            reset: true,
        }
    }
}

/// A partition's logical stream and index.
type Label = (Arc<str>, usize);

/// The relay: one feed (reader task + broadcast channel) per stream read.
pub(crate) struct Relay {
    feeds: Arc<Mutex<HashMap<Arc<str>, Feed>>>,
    client: Client,
    /// For replays and the readers' start positions (non-blocking commands).
    conn: Connection,
    capacity: usize,
    block: Duration,
    max_streams: usize,
    shutdown: CancellationToken,
}

struct Feed {
    tx: broadcast::Sender<RelayEvent>,
    /// The id of the last entry the reader broadcast (or its start position):
    /// a new subscriber receives exactly the entries after it.
    position: Arc<Mutex<EntryId>>,
    /// The reader; aborted when the feed is dropped.
    _reader: AbortOnDropHandle<()>,
}

/// A client's subscription to one stream.
pub(crate) struct Subscription {
    stream: Arc<str>,
    /// For a partition: its logical stream and index.
    label: Option<Label>,
    rx: broadcast::Receiver<RelayEvent>,
    /// The last id sent to the client (or the resume point): later entries only.
    last_sent: EntryId,
}

impl Relay {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Feed>> {
        self.feeds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    ) -> Result<Vec<Subscription>, ApiError> {
        let stream: Arc<str> = p.stream().into();
        let mut subs = Vec::with_capacity(p.len());
        for (i, key) in p.keys().iter().enumerate() {
            subs.push(self.subscribe_key(key, Some((stream.clone(), i))).await?);
        }
        Ok(subs)
    }

    /// Subscribes to `stream`, starting its reader if needed. Live entries after
    /// the moment of this call are delivered to the returned subscription.
    pub(crate) async fn subscribe(&self, stream: &str) -> Result<Subscription, ApiError> {
        self.subscribe_key(stream, None).await
    }

    async fn subscribe_key(
        &self,
        stream: &str,
        label: Option<Label>,
    ) -> Result<Subscription, ApiError> {
        let Some((rx, position)) = self.feed(stream, label.clone(), false).await? else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the relay already reads {} streams, its limit; try again later",
                    self.max_streams
                ),
            ));
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
    ) -> streambus::Result<Option<(broadcast::Receiver<RelayEvent>, EntryId)>> {
        if let Some(sub) = self.existing(stream) {
            return Ok(Some(sub));
        }
        // The start position is read before the feed exists, so that no entry
        // added after this call can be missed by the reader.
        let start = streambus::read::last_id(&mut self.conn.clone(), stream)
            .await?
            .unwrap_or(EntryId::ZERO);
        let mut feeds = self.lock();
        if let Some(f) = feeds.get(stream) {
            // Another client created it meanwhile.
            return Ok(Some((f.tx.subscribe(), current(&f.position))));
        }
        if !pinned && feeds.len() >= self.max_streams {
            return Ok(None);
        }
        let (tx, rx) = broadcast::channel(self.capacity);
        let position = Arc::new(Mutex::new(start));
        let name: Arc<str> = stream.into();
        let reader = Reader {
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

    fn existing(&self, stream: &str) -> Option<(broadcast::Receiver<RelayEvent>, EntryId)> {
        let feeds = self.lock();
        let f = feeds.get(stream)?;
        Some((f.tx.subscribe(), current(&f.position)))
    }

    /// Streams with a running reader (for tests and diagnostics).
    pub(crate) fn streams(&self) -> usize {
        self.lock().len()
    }
}

fn current(position: &Mutex<EntryId>) -> EntryId {
    *position
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Ids a reader remembers having relayed, to tell after Redis lost data
/// which of the stream's entries are old (relayed before) and which are new.
const RECENT_IDS: usize = 256;

/// The last [`RECENT_IDS`] ids a reader relayed, oldest first.
type RecentIds = std::collections::VecDeque<EntryId>;

/// Where to resume after the stream's ids went backwards. `tail`: the
/// stream's newest entries (at most `limit`, oldest first), all below the
/// last id relayed.
///
/// The newest of them that this reader relayed marks the end of the old data
/// (Redis came back from an older copy): resume after it. Entries after it
/// are new. If none was relayed, they are all new (Redis restarted empty and
/// they were written since): resume from `0-0`, or, when the tail is only the
/// last `limit` entries of a longer stream, from just before the tail, so
/// that at most `limit` entries of unknown age are sent.
fn resume_point(tail: &[EntryId], limit: usize, recent: &RecentIds) -> EntryId {
    if let Some(seen) = tail.iter().rev().find(|id| recent.contains(id)) {
        return *seen;
    }
    match tail.first() {
        Some(oldest) if tail.len() >= limit => just_before(*oldest),
        _ => EntryId::ZERO,
    }
}

/// The largest id below `id`.
fn just_before(id: EntryId) -> EntryId {
    match id.seq {
        0 if id.ms == 0 => EntryId::ZERO,
        0 => EntryId {
            ms: id.ms - 1,
            seq: u64::MAX,
        },
        seq => EntryId {
            ms: id.ms,
            seq: seq - 1,
        },
    }
}

/// The task that reads one stream and broadcasts its entries.
struct Reader {
    stream: Arc<str>,
    /// For a partition: its logical stream and index, put into each entry.
    label: Option<Label>,
    client: Client,
    tx: broadcast::Sender<RelayEvent>,
    position: Arc<Mutex<EntryId>>,
    block: Duration,
    count: usize,
    /// A configured stream: read until shutdown even with no clients.
    pinned: bool,
    /// To remove its own feed when the last client left (weak: the map owns
    /// the reader, not the other way round).
    feeds: Weak<Mutex<HashMap<Arc<str>, Feed>>>,
    shutdown: CancellationToken,
}

impl Reader {
    async fn run(self) {
        let mut jitter = streambus::backoff::Jitter::new();
        // Failed attempts in a row, and when the first of them failed.
        let mut failures = 0u32;
        let mut failing_since = std::time::Instant::now();
        let mut conn: Option<Connection> = None;
        let mut after = current(&self.position);
        let mut recent = RecentIds::with_capacity(RECENT_IDS);
        loop {
            if self.shutdown.is_cancelled() || self.stop_if_unused() {
                return;
            }
            let c = match &mut conn {
                Some(c) => c,
                None => match self.client.connect_blocking(self.block).await {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        self.failed(&e, after, &mut failures, &mut failing_since);
                        self.pause(READ_BACKOFF.delay_with_jitter(failures, jitter.next_unit()))
                            .await;
                        continue;
                    }
                },
            };
            // The connection replaces a failed socket by itself; after a
            // failure, first check that the stream did not go backwards.
            let read = async {
                if failures > 0 {
                    self.check_rewind(c, &mut after, &recent).await?;
                }
                streambus::read::read_after(c, &self.stream, after, self.count, Some(self.block))
                    .await
            };
            let read = tokio::select! {
                r = read => r,
                _ = self.shutdown.cancelled() => return,
            };
            match read {
                Ok(entries) => {
                    if failures > 0 {
                        tracing::info!(
                            stream = %self.stream,
                            %after,
                            failures,
                            down_for = ?failing_since.elapsed(),
                            "relay reader reads again, after the last id it relayed"
                        );
                        failures = 0;
                    }
                    for e in &entries {
                        after = e.id;
                        self.set_position(after);
                        if recent.len() == RECENT_IDS {
                            recent.pop_front();
                        }
                        recent.push_back(after);
                        // Err means no client right now: nothing to deliver.
                        let _ = self.tx.send(RelayEvent::of(e, self.label.as_ref()));
                    }
                    if !entries.is_empty() {
                        server_metrics::relayed(&self.stream, entries.len());
                    }
                }
                Err(e) => {
                    self.failed(&e, after, &mut failures, &mut failing_since);
                    self.pause(READ_BACKOFF.delay_with_jitter(failures, jitter.next_unit()))
                        .await;
                }
            }
        }
    }

    /// Counts a failed attempt; logs the first of a run at warn, the rest at
    /// debug (an outage is logged once, not every two seconds).
    fn failed(
        &self,
        e: &streambus::Error,
        after: EntryId,
        failures: &mut u32,
        since: &mut std::time::Instant,
    ) {
        if *failures == 0 {
            *since = std::time::Instant::now();
            tracing::warn!(stream = %self.stream, %after, error = %error_chain(e), "relay read failed; retrying, to resume after the last id relayed");
        } else {
            tracing::debug!(stream = %self.stream, %after, attempt = *failures + 1, error = %error_chain(e), "relay read failed again; retrying");
        }
        *failures = failures.saturating_add(1);
    }

    /// After a failure: if the stream's newest id is now below `after` (Redis
    /// lost data), moves `after` back to where the data this reader has not
    /// relayed begins (see [`resume_point`]), so that entries written since
    /// are not skipped, and tells the clients.
    async fn check_rewind(
        &self,
        c: &mut Connection,
        after: &mut EntryId,
        recent: &RecentIds,
    ) -> streambus::Result<()> {
        if *after == EntryId::ZERO {
            return Ok(());
        }
        let newest = streambus::read::last_id(c, &self.stream).await?;
        let (to, reason) = match newest {
            Some(id) if id >= *after => return Ok(()),
            None => (EntryId::ZERO, "stream_emptied"),
            Some(_) => {
                let tail: Vec<EntryId> = streambus::read::last(c, &self.stream, RECENT_IDS)
                    .await?
                    .iter()
                    .map(|e| e.id)
                    .collect();
                (
                    resume_point(&tail, RECENT_IDS, recent),
                    "stream_went_backwards",
                )
            }
        };
        tracing::warn!(
            stream = %self.stream,
            relayed_up_to = %after,
            newest = %newest.map_or_else(|| "none (empty or missing)".to_owned(), |id| id.to_string()),
            resume_after = %to,
            "the stream's newest entry id is below the last one relayed: Redis lost data (restarted without persistence or from an older copy, or a replica that was behind took over); relaying the entries after {to}, and telling clients so"
        );
        *after = to;
        self.set_position(to);
        // Err means no client right now: nobody to tell.
        let _ = self.tx.send(RelayEvent::reset(
            &self.stream,
            self.label.as_ref(),
            to,
            reason,
        ));
        Ok(())
    }

    fn set_position(&self, id: EntryId) {
        *self
            .position
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = id;
    }

    async fn pause(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }

    /// Removes the feed when no client listens (not for configured streams).
    /// Subscriptions are made under the same lock, so none can slip in between.
    fn stop_if_unused(&self) -> bool {
        if self.pinned || self.tx.receiver_count() > 0 {
            return false;
        }
        let Some(feeds) = self.feeds.upgrade() else {
            return true;
        };
        let mut feeds = feeds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.tx.receiver_count() > 0 {
            return false;
        }
        tracing::debug!(stream = %self.stream, "relay reader stops: no clients");
        // Dropping the feed aborts this task at its next await; it returns first.
        let removed = feeds.remove(&self.stream);
        drop(feeds);
        drop(removed);
        true
    }
}

/// Query parameters of `/ws`.
#[derive(Debug, Deserialize)]
pub(crate) struct WsQuery {
    /// Comma-separated stream names; the configured streams when absent.
    streams: Option<String>,
    /// Replay entries after this id, then go live.
    from: Option<String>,
    /// Checked by the auth middleware; listed so it is not an unknown field.
    #[allow(dead_code)]
    token: Option<String>,
}

/// `GET /ws`: checks the origin, the streams and the resume id, takes a client
/// slot, subscribes, then upgrades.
pub(crate) async fn ws_handler(
    State(state): State<AppState>,
    Query(q): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    check_origin(&headers, &state.config().allowed_origins)?;
    let streams: Vec<String> = match q.streams.as_deref() {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        None => state.config().streams.clone(),
    };
    if streams.is_empty() {
        return Err(ApiError::bad_request("no streams: use /ws?streams=S1,S2"));
    }
    if streams.len() > MAX_STREAMS_PER_CLIENT {
        return Err(ApiError::bad_request(format!(
            "too many streams ({}); at most {MAX_STREAMS_PER_CLIENT} per connection",
            streams.len()
        )));
    }
    for s in &streams {
        state.check_stream(s)?;
    }
    let partitioned = streams.iter().find_map(|s| state.partitions(s));
    let from = q.from.or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let from: Option<EntryId> = match from.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(id) => Some(
            id.parse()
                .map_err(|e: streambus::Error| ApiError::bad_request(e.message()))?,
        ),
    };
    if let (Some(_), Some(p)) = (from, partitioned) {
        return Err(ApiError::bad_request(format!(
            "cannot resume (from= or Last-Event-ID) on {:?}: it has {} partitions, each with its own entry ids; connect without from= to receive live entries",
            p.stream(),
            p.len()
        )));
    }
    let Ok(permit) = state.ws_slots().clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many WebSocket clients (at most {}); try again later",
                state.config().max_ws_clients
            ),
        ));
    };
    let mut subs = Vec::with_capacity(streams.len());
    for s in &streams {
        let seen =
            |x: &Subscription| &*x.stream == s || x.label.as_ref().is_some_and(|(l, _)| &**l == s);
        if subs.iter().any(seen) {
            continue;
        }
        match state.partitions(s) {
            Some(p) => subs.extend(state.relay().subscribe_partitions(p).await?),
            None => subs.push(state.relay().subscribe(s).await?),
        }
    }
    // Echo the accepted `bearer.<token>` subprotocol: browsers close a socket
    // whose requested subprotocol is not confirmed.
    let ws = match (
        &state.config().token,
        auth::protocol_tokens(&headers).next(),
    ) {
        (Some(_), Some(t)) => ws.protocols([format!("{}{t}", auth::PROTOCOL_PREFIX)]),
        _ => ws,
    };
    let max = state.config().max_ws_message_bytes;
    let token = state.clients().token();
    Ok(ws
        .max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| async move {
            // Owned by the service's tracker: shutdown waits for this task.
            let _token = token;
            run_client(socket, subs, from, state, permit).await;
        })
        .into_response())
}

/// A browser page may open the socket only from the service's own origin or an
/// allowed one; a request without `Origin` is not from a browser page.
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), ApiError> {
    let Some(origin) = headers.get(ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let same = !host.is_empty()
        && (origin == format!("http://{host}") || origin == format!("https://{host}"));
    if same || allowed.iter().any(|a| a == origin) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this origin may not open the WebSocket (add it to the allowed origins)",
        ))
    }
}

type Sink = SplitSink<WebSocket, Message>;

/// Why a client's loop ended.
enum End {
    /// The client closed or the connection broke: nothing more to send.
    Gone,
    /// The service is shutting down.
    Shutdown,
    /// The client fell behind on `stream`; resume after `resync_from`.
    Lagged {
        stream: Arc<str>,
        label: Option<Label>,
        resync_from: EntryId,
    },
    /// A write did not finish in time: the client stopped reading.
    Stalled,
}

/// Serves one connected client until it leaves, lags, stalls or the service
/// stops, then closes the socket as the protocol asks.
async fn run_client(
    socket: WebSocket,
    mut subs: Vec<Subscription>,
    from: Option<EntryId>,
    state: AppState,
    _permit: OwnedSemaphorePermit,
) {
    let _gauge = server_metrics::ClientGauge::new();
    let shutdown = state.shutdown_token().clone();
    let send_timeout = state.config().ws_send_timeout;
    let (mut sink, mut incoming) = socket.split();
    let end = async {
        if let Some(from) = from {
            for sub in &mut subs {
                sub.last_sent = from;
                if let Some(end) = replay(&state, &mut sink, sub, send_timeout, &shutdown).await {
                    return end;
                }
            }
        }
        live(&mut sink, &mut incoming, &mut subs, send_timeout, &shutdown).await
    }
    .await;
    let (code, reason) = match end {
        End::Gone => return,
        End::Stalled => {
            tracing::info!("WebSocket client stopped reading; disconnected");
            server_metrics::cut_off("stalled");
            return;
        }
        End::Shutdown => (1001, "server shutting down".to_owned()),
        End::Lagged {
            stream,
            label,
            resync_from,
        } => {
            tracing::info!(%stream, %resync_from, "WebSocket client fell behind; cut off");
            server_metrics::cut_off("lagged");
            let mut msg = serde_json::json!({
                "type": "lagged",
                "stream": &*stream,
                "resync_from": resync_from.to_string(),
            });
            if let Some((logical, index)) = label {
                // No resume for partitioned streams: reconnect without from=.
                msg = serde_json::json!({
                    "type": "lagged",
                    "stream": &*logical,
                    "partition": index,
                });
            }
            // Best effort: the client is slow, it may not take even this.
            let _ = tokio::time::timeout(
                CLOSE_TIMEOUT,
                sink.send(Message::Text(msg.to_string().into())),
            )
            .await;
            (1008, format!("lagged: resync from {resync_from}"))
        }
    };
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    // Best effort: a client that is gone or stuck cannot take a close frame.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
    // Wait briefly for the client's closing frame, as the protocol asks.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(m)) = incoming.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Sends the entries of `sub.stream` after `sub.last_sent`, page by page.
async fn replay(
    state: &AppState,
    sink: &mut Sink,
    sub: &mut Subscription,
    send_timeout: Duration,
    shutdown: &CancellationToken,
) -> Option<End> {
    let mut conn = state.conn();
    let mut jitter = streambus::backoff::Jitter::new();
    let mut failures = 0u32;
    loop {
        if shutdown.is_cancelled() {
            return Some(End::Shutdown);
        }
        let page = match streambus::read::range_after(
            &mut conn,
            &sub.stream,
            Some(sub.last_sent),
            REPLAY_PAGE,
        )
        .await
        {
            Ok(p) => p,
            Err(e) if e.is_retryable() => {
                if failures == 0 {
                    tracing::warn!(stream = %sub.stream, after = %sub.last_sent, error = %error_chain(&e), "replay failed; retrying");
                }
                failures = failures.saturating_add(1);
                let delay = READ_BACKOFF.delay_with_jitter(failures, jitter.next_unit());
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Some(End::Shutdown),
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(stream = %sub.stream, error = %error_chain(&e), "replay failed; closing the client");
                return Some(End::Gone);
            }
        };
        failures = 0;
        let n = page.len();
        let label = sub.label.as_ref();
        let batch: Vec<RelayEvent> = page.iter().map(|e| RelayEvent::of(e, label)).collect();
        if let Some(end) = send_batch(sink, sub, batch, send_timeout, shutdown).await {
            return Some(end);
        }
        if n < REPLAY_PAGE {
            return None;
        }
    }
}

/// Writes `events` (those after `sub.last_sent`) and flushes, within
/// `send_timeout`.
async fn send_batch(
    sink: &mut Sink,
    sub: &mut Subscription,
    events: Vec<RelayEvent>,
    send_timeout: Duration,
    shutdown: &CancellationToken,
) -> Option<End> {
    let mut last = sub.last_sent;
    let write = async {
        for ev in events {
            if ev.reset {
                // The stream's ids went backwards: later entries are after
                // `ev.id`, below what this client was sent.
                sink.feed(Message::Text(ev.text)).await?;
                last = ev.id;
                continue;
            }
            if ev.id <= last {
                continue;
            }
            sink.feed(Message::Text(ev.text)).await?;
            last = ev.id;
        }
        sink.flush().await
    };
    let result = tokio::select! {
        r = tokio::time::timeout(send_timeout, write) => r,
        _ = shutdown.cancelled() => return Some(End::Shutdown),
    };
    sub.last_sent = last;
    match result {
        Ok(Ok(())) => None,
        Ok(Err(_)) => Some(End::Gone),
        Err(_) => Some(End::Stalled),
    }
}

/// Forwards live entries until the client leaves, lags, stalls or the service
/// stops.
async fn live(
    sink: &mut Sink,
    incoming: &mut futures_util::stream::SplitStream<WebSocket>,
    subs: &mut [Subscription],
    send_timeout: Duration,
    shutdown: &CancellationToken,
) -> End {
    loop {
        let (first, index) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return End::Shutdown,
            msg = incoming.next() => match msg {
                // Clients have nothing to say; pings are answered by the
                // library, and text is ignored.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return End::Gone,
                Some(Ok(_)) => continue,
            },
            r = next_event(subs) => r,
        };
        let sub = &mut subs[index];
        let mut batch = Vec::with_capacity(SEND_BATCH);
        let mut lagged = false;
        match first {
            Ok(ev) => batch.push(ev),
            Err(RecvError::Lagged(_)) => lagged = true,
            Err(RecvError::Closed) => return End::Shutdown,
        }
        while !lagged && batch.len() < SEND_BATCH {
            match sub.rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(broadcast::error::TryRecvError::Lagged(_)) => lagged = true,
                Err(_) => break,
            }
        }
        if let Some(end) = send_batch(sink, sub, batch, send_timeout, shutdown).await {
            return end;
        }
        if lagged {
            return End::Lagged {
                stream: sub.stream.clone(),
                label: sub.label.clone(),
                resync_from: sub.last_sent,
            };
        }
    }
}

/// The next event of any subscription, with its index. `recv` is cancel safe,
/// so the losers of the race lose nothing.
async fn next_event(subs: &mut [Subscription]) -> (Result<RelayEvent, RecvError>, usize) {
    if let [one] = subs {
        return (one.rx.recv().await, 0);
    }
    let futs = subs.iter_mut().map(|s| Box::pin(s.rx.recv()));
    let (r, index, _) = futures_util::future::select_all(futs).await;
    (r, index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn id(ms: u64) -> EntryId {
        EntryId { ms, seq: 0 }
    }

    #[test]
    fn resume_point_after_redis_lost_data() {
        let recent: RecentIds = [id(5), id(6), id(7), id(8)].into();
        // An older copy: 5 and 6 were relayed, 20 and 21 are new. (7 and 8
        // were lost with the data.)
        assert_eq!(resume_point(&[id(4), id(5), id(6)], 10, &recent), id(6));
        // Restarted empty, then written: all new.
        assert_eq!(resume_point(&[id(1), id(2)], 10, &recent), EntryId::ZERO);
        // A long stream of unknown entries: at most the tail is sent.
        assert_eq!(
            resume_point(&[id(1), id(2)], 2, &recent),
            EntryId {
                ms: 0,
                seq: u64::MAX
            }
        );
        assert_eq!(
            just_before(EntryId { ms: 3, seq: 2 }),
            EntryId { ms: 3, seq: 1 }
        );
        assert_eq!(just_before(EntryId::ZERO), EntryId::ZERO);
    }

    #[test]
    fn origin_rules() {
        let mut h = HeaderMap::new();
        check_origin(&h, &[]).unwrap();
        h.insert(HOST, HeaderValue::from_static("127.0.0.1:8080"));
        h.insert(ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        check_origin(&h, &[]).unwrap();
        h.insert(ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert_eq!(
            check_origin(&h, &[]).unwrap_err().status(),
            StatusCode::FORBIDDEN
        );
        check_origin(&h, &["https://evil.example".into()]).unwrap();
    }
}
