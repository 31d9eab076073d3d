//! `GET /ws?streams=S1,S2[&from=ID]`: the WebSocket route, which adapts the
//! relay engine ([`crate::relay`]) to axum.
//!
//! Every client sees every new entry of the streams it asks for, as the JSON
//! objects `streambus tail` prints, one per text message.
//!
//! - **Resume**: `from=ID` (or the `Last-Event-ID` header) replays the entries
//!   after `ID`, then continues live: no gap, no duplicate (see the engine).
//! - **Slow clients are cut off.** A client that falls behind by more than
//!   [`ServerConfig::ws_client_queue`](crate::ServerConfig::ws_client_queue)
//!   entries gets `{"type":"lagged","stream":S,"resync_from":ID}` and a close
//!   frame (1008, `lagged: resync from ID`), and may reconnect with `from=ID`.
//!   A write that takes longer than
//!   [`ServerConfig::ws_send_timeout`](crate::ServerConfig::ws_send_timeout)
//!   (a client that stopped reading) drops the connection. Either way it never
//!   slows other clients.
//! - **Faults**: clients stay connected while Redis is away; the readers
//!   resume, and a `{"type":"reset",...}` message says when Redis lost data.
//! - **Shutdown** sends a close frame (1001, `server shutting down`).
//! - **Partitioned streams**: a client asking for the logical stream
//!   subscribes to all its partitions and receives entries in order of
//!   arrival, each with `"stream"` set to the logical stream and a
//!   `"partition"` index. Resuming (`from=`) is refused (400) for them: entry
//!   ids are per partition, so one id cannot say where to resume in each.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use streambus::EntryId;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::check_stream;
use crate::auth;
use crate::error::ApiError;
use crate::metrics as server_metrics;
use crate::relay::{self, Event, Label, Page, Recv, SubscribeError};
use crate::state::{AppState, WsText};

/// Entries sent to a client before one flush: bounds the socket write buffer
/// to one batch while saving a system call per entry.
const SEND_BATCH: usize = 64;

/// Most streams one client may ask for at once.
const MAX_STREAMS_PER_CLIENT: usize = 32;

/// Time allowed for the final message and close frame to a departing client.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

type Subscription = relay::Subscription<WsText>;

/// The relay's refusals, as HTTP errors.
impl From<SubscribeError> for ApiError {
    fn from(e: SubscribeError) -> Self {
        match e {
            SubscribeError::Full { max_streams } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the relay already reads {max_streams} streams, its limit; try again later"
                ),
            ),
            SubscribeError::Redis(e) => e.into(),
        }
    }
}

/// The message to a client cut off for lagging.
#[derive(Serialize)]
struct LaggedNotice<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    stream: &'a str,
    /// Where to resume (`from=`); absent for a partition (no resume there:
    /// reconnect without `from=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    resync_from: Option<String>,
    /// For a partition: its index (`stream` is then the logical stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<usize>,
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
        check_stream(&state, s)?;
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
                sub.resume_after(from);
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
            let notice = match &label {
                // No resume for partitioned streams: reconnect without from=.
                Some((logical, index)) => LaggedNotice {
                    kind: "lagged",
                    stream: logical,
                    resync_from: None,
                    partition: Some(*index),
                },
                None => LaggedNotice {
                    kind: "lagged",
                    stream: &stream,
                    resync_from: Some(resync_from.to_string()),
                    partition: None,
                },
            };
            let text = WsText::from(relay::to_json(&notice));
            // Best effort: the client is slow, it may not take even this.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Text(text))).await;
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

/// Sends the entries of `sub.stream` after its last id, page by page.
async fn replay(
    state: &AppState,
    sink: &mut Sink,
    sub: &mut Subscription,
    send_timeout: Duration,
    shutdown: &CancellationToken,
) -> Option<End> {
    loop {
        let (events, more) = match state.relay().replay_page(sub).await {
            Page::Events { events, more } => (events, more),
            Page::Shutdown => return Some(End::Shutdown),
            Page::Failed => return Some(End::Gone),
        };
        if let Some(end) = send_batch(sink, sub, events, send_timeout, shutdown).await {
            return Some(end);
        }
        if !more {
            return None;
        }
    }
}

/// Writes the `events` the subscription admits (those after its last id, and
/// resets) and flushes, within `send_timeout`.
async fn send_batch(
    sink: &mut Sink,
    sub: &mut Subscription,
    events: Vec<Event<WsText>>,
    send_timeout: Duration,
    shutdown: &CancellationToken,
) -> Option<End> {
    let write = async {
        for ev in events {
            if sub.admit(&ev) {
                sink.feed(Message::Text(ev.text)).await?;
            }
        }
        sink.flush().await
    };
    let result = tokio::select! {
        r = tokio::time::timeout(send_timeout, write) => r,
        _ = shutdown.cancelled() => return Some(End::Shutdown),
    };
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
    incoming: &mut SplitStream<WebSocket>,
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
            Recv::Event(ev) => batch.push(ev),
            Recv::Lagged => lagged = true,
            Recv::Closed => return End::Shutdown,
        }
        while !lagged && batch.len() < SEND_BATCH {
            match sub.try_recv() {
                Some(Recv::Event(ev)) => batch.push(ev),
                Some(Recv::Lagged) => lagged = true,
                // Closed: the next `recv` says so.
                Some(Recv::Closed) | None => break,
            }
        }
        if let Some(end) = send_batch(sink, sub, batch, send_timeout, shutdown).await {
            return end;
        }
        if lagged {
            return End::Lagged {
                stream: sub.stream.clone(),
                label: sub.label.clone(),
                resync_from: sub.last_sent(),
            };
        }
    }
}

/// The next event of any subscription, with its index. `recv` is cancel safe,
/// so the losers of the race lose nothing.
async fn next_event(subs: &mut [Subscription]) -> (Recv<WsText>, usize) {
    if let [one] = subs {
        return (one.recv().await, 0);
    }
    let futs = subs.iter_mut().map(|s| Box::pin(s.recv()));
    let (r, index, _) = futures_util::future::select_all(futs).await;
    (r, index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

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
