//! The JSON API: streams, groups (the monitor), the scaler, dead letters,
//! publishing, and the health check.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use streambus::monitor::{self, StreamSnapshot};
use streambus::partition::{self, Partitions};
use streambus::{dead_letter, scaler, ErrorKind, Message, MonitorOptions};

use crate::error::ApiError;
use crate::health::RETRY_AFTER_SECS;
use crate::state::AppState;

/// Dead letters listed when `count` is not given.
const DEFAULT_DLQ_COUNT: usize = 50;
/// Most dead letters one request lists: the response is built in memory.
const MAX_DLQ_COUNT: usize = 1000;

/// The streams the service shows: the configured ones, or those found in Redis
/// (the partitions of a partitioned stream shown as that one stream).
async fn stream_names(state: &AppState) -> Result<Vec<String>, ApiError> {
    let config = state.config();
    if !config.streams.is_empty() || state.client().is_cluster() {
        return Ok(config.streams.clone());
    }
    let found = streambus::read::list_streams(&mut state.conn(), config.max_streams).await?;
    let mut names: Vec<String> = Vec::with_capacity(found.len());
    for key in found {
        let name = state.logical_stream_of(&key).map_or(key, str::to_owned);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// What one shown stream looks like now.
pub(crate) enum Shown {
    /// A plain stream: its snapshot, `None` when it does not exist yet.
    Plain(Option<StreamSnapshot>),
    /// A partitioned stream, as `/api/streams` shows it.
    Partitioned(Value),
}

/// A snapshot of every shown stream, with the monitor gauges (of each
/// partition, for a partitioned stream) and the scalers of plain streams
/// updated from it.
pub(crate) async fn snapshots(state: &AppState) -> Result<Vec<(String, Shown)>, ApiError> {
    let mut out = Vec::new();
    let mut conn = state.conn();
    for name in stream_names(state).await? {
        if let Some(p) = state.partitions(&name) {
            let v = partitioned_stream(state, p).await?;
            out.push((name, Shown::Partitioned(v)));
            continue;
        }
        match monitor::snapshot(&mut conn, &name, &state.config().monitor).await {
            Ok(snap) => {
                snap.record_metrics();
                for g in &snap.groups {
                    state.scale(&snap, &g.name);
                }
                out.push((name, Shown::Plain(Some(snap))));
            }
            Err(e) if e.kind() == ErrorKind::NoStream => out.push((name, Shown::Plain(None))),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// `GET /api/streams`: every shown stream with its length, ids, groups (lag,
/// pending, consumers) and dead-letter count; a partitioned stream as one,
/// with a per-partition breakdown (see [`partitioned_stream`]).
pub(crate) async fn streams(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut conn = state.conn();
    let mut list = Vec::new();
    for (name, shown) in snapshots(&state).await? {
        let snap = match shown {
            Shown::Partitioned(v) => {
                list.push(v);
                continue;
            }
            Shown::Plain(snap) => snap,
        };
        let dead_letters = dead_letter::count(&mut conn, &name).await?;
        let mut v = match snap {
            Some(s) => serde_json::to_value(&s).map_err(|e| {
                ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            })?,
            None => json!({ "stream": name, "length": 0, "groups": [] }),
        };
        v["exists"] = json!(v.get("server_time_ms").is_some());
        v["dead_letters"] = json!(dead_letters);
        list.push(v);
    }
    Ok(Json(json!({ "streams": list })))
}

/// A partitioned stream as one: `stream`, `exists`, `length`,
/// `last_entry_id` (the largest over the partitions), `dead_letters`, and
/// `groups[]` with `pending` and `lag` over all partitions (`lag` null when a
/// partition cannot tell), `partitions` (how many have the group) and
/// `consumers[]` (each partition's, with a `partition` field); then
/// `partition_count` and `partitions[]`: per partition its `partition` index,
/// `key`, `exists`, `length`, `last_entry_id`, `dead_letters` and `groups[]`
/// (`name`, `pending`, `lag`).
async fn partitioned_stream(state: &AppState, p: &Partitions) -> Result<Value, ApiError> {
    let mut conn = state.conn();
    let snap = partition::snapshot(&mut conn, p, &state.config().monitor).await?;
    let mut parts = Vec::with_capacity(p.len());
    let mut dead_letters = 0;
    let mut consumers: Vec<(String, Value)> = Vec::new();
    for (i, key) in p.keys().iter().enumerate() {
        let dlq = dead_letter::count(&mut conn, key).await?;
        dead_letters += dlq;
        let Some(part) = snap.partitions.iter().find(|s| &s.stream == key) else {
            parts.push(json!({
                "partition": i, "key": key, "exists": false, "length": 0,
                "last_entry_id": null, "dead_letters": dlq, "groups": [],
            }));
            continue;
        };
        part.record_metrics();
        let groups: Vec<Value> = part
            .groups
            .iter()
            .map(|g| json!({ "name": g.name, "pending": g.pending, "lag": g.lag }))
            .collect();
        for g in &part.groups {
            for c in &g.consumers {
                let mut v = serde_json::to_value(c).map_err(|e| {
                    ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                })?;
                v["partition"] = json!(i);
                consumers.push((g.name.clone(), v));
            }
        }
        parts.push(json!({
            "partition": i, "key": key, "exists": true, "length": part.length,
            "last_entry_id": part.last_entry_id, "dead_letters": dlq, "groups": groups,
        }));
    }
    let groups: Vec<Value> = snap
        .groups
        .iter()
        .map(|g| {
            let members: Vec<&Value> = consumers
                .iter()
                .filter(|(name, _)| *name == g.name)
                .map(|(_, c)| c)
                .collect();
            json!({
                "name": g.name, "pending": g.pending, "lag": g.lag,
                "partitions": g.partitions, "consumers": members,
            })
        })
        .collect();
    Ok(json!({
        "stream": p.stream(),
        "exists": !snap.partitions.is_empty(),
        "length": snap.length,
        "last_entry_id": snap.partitions.iter().filter_map(|s| s.last_entry_id).max(),
        "dead_letters": dead_letters,
        "groups": groups,
        "partition_count": p.len(),
        "partitions": parts,
    }))
}

/// 400 for the per-group routes of a partitioned stream: their snapshots and
/// advice are per partition key.
fn refuse_partitioned(state: &AppState, stream: &str, what: &str) -> Result<(), ApiError> {
    match state.partitions(stream) {
        Some(p) => Err(ApiError::bad_request(format!(
            "{what} of {stream:?} is per partition ({} partitions); see /api/streams for its totals",
            p.len()
        ))),
        None => Ok(()),
    }
}

/// `GET /api/streams/{s}/groups/{g}`: the monitor snapshot of that group
/// (stream fields plus `groups: [the group]` with its consumers and statuses).
pub(crate) async fn group(
    State(state): State<AppState>,
    Path((stream, group)): Path<(String, String)>,
) -> Result<Json<StreamSnapshot>, ApiError> {
    Ok(Json(group_snapshot(&state, &stream, &group).await?))
}

async fn group_snapshot(
    state: &AppState,
    stream: &str,
    group: &str,
) -> Result<StreamSnapshot, ApiError> {
    state.check_stream(stream)?;
    refuse_partitioned(state, stream, "the group snapshot")?;
    streambus::keys::validate_name("group", group)
        .map_err(|e| ApiError::bad_request(e.message()))?;
    let options = MonitorOptions {
        group: Some(group.to_owned()),
        ..state.config().monitor.clone()
    };
    let snap = monitor::snapshot(&mut state.conn(), stream, &options).await?;
    snap.record_metrics();
    Ok(snap)
}

/// `GET /api/streams/{s}/groups/{g}/scale`: the reference rule (rate and
/// IN/OUT/NO_SCALE, compatible with the reference package) and the throughput
/// advisor's target with its reasons.
pub(crate) async fn scale(
    State(state): State<AppState>,
    Path((stream, group)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let snap = group_snapshot(&state, &stream, &group).await?;
    let config = state.config();
    let Some(g) = snap.group(&group) else {
        return Err(ApiError::not_found(format!("no group {group:?}")));
    };
    let consumers = g.consumers.len() as u64;
    let reference = match scaler::reference_decision(g, config.scale_out, config.scale_in) {
        Some((rate, suggestion)) => json!({
            "rate": rate,
            "suggestion": suggestion,
            "sentence": scaler::reference_sentence(
                g.lag.unwrap_or(0), g.pending, consumers, config.scale_out, config.scale_in),
        }),
        None => json!({
            "rate": null,
            "suggestion": null,
            "sentence": "Redis cannot tell the group's lag, so the reference rule cannot decide",
        }),
    };
    let view = state.scale(&snap, &group);
    let advisor = match &view.advice {
        Some(a) => serde_json::to_value(a)
            .map_err(|e| ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
        None => Value::Null,
    };
    Ok(Json(json!({
        "stream": stream,
        "group": group,
        "lag": g.lag,
        "pending": g.pending,
        "consumers": consumers,
        "scale_out": config.scale_out,
        "scale_in": config.scale_in,
        "rate": reference["rate"],
        "suggestion": reference["suggestion"],
        "sentence": reference["sentence"],
        "target": view.advice.as_ref().map(|a| a.target),
        "reasons": view.advice.as_ref().map_or_else(
            || vec!["the advisor needs two samples at least 1 s apart; ask again".to_owned()],
            |a| a.reasons.clone()),
        "advisor": advisor,
    })))
}

/// Query of `GET /api/streams/{s}/dlq`.
#[derive(Debug, Deserialize)]
pub(crate) struct DlqQuery {
    count: Option<usize>,
    after: Option<String>,
}

/// `GET /api/streams/{s}/dlq?count=N[&after=ID]`: the oldest dead letters
/// (after `after`) and the total.
pub(crate) async fn dead_letters(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    Query(q): Query<DlqQuery>,
) -> Result<Json<Value>, ApiError> {
    state.check_stream(&stream)?;
    let count = q.count.unwrap_or(DEFAULT_DLQ_COUNT);
    if count == 0 || count > MAX_DLQ_COUNT {
        return Err(ApiError::bad_request(format!(
            "count must be between 1 and {MAX_DLQ_COUNT}"
        )));
    }
    let after = match q.after.as_deref() {
        None | Some("") => None,
        Some(id) => Some(
            id.parse()
                .map_err(|e: streambus::Error| ApiError::bad_request(e.message()))?,
        ),
    };
    let mut conn = state.conn();
    if let Some(p) = state.partitions(&stream) {
        // Each partition's oldest, merged by id; `after` applies to each.
        let mut entries = Vec::new();
        let mut total = 0;
        for (i, key) in p.keys().iter().enumerate() {
            for d in dead_letter::list(&mut conn, key, after, count).await? {
                entries.push((d.id, i, d));
            }
            total += dead_letter::count(&mut conn, key).await?;
        }
        entries.sort_by_key(|(id, i, _)| (*id, *i));
        entries.truncate(count);
        let mut list = Vec::with_capacity(entries.len());
        for (_, i, d) in entries {
            let mut v = serde_json::to_value(&d).map_err(|e| {
                ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            })?;
            v["partition"] = json!(i);
            list.push(v);
        }
        return Ok(Json(json!({
            "stream": stream,
            "total": total,
            "entries": list,
        })));
    }
    let entries = dead_letter::list(&mut conn, &stream, after, count).await?;
    let total = dead_letter::count(&mut conn, &stream).await?;
    Ok(Json(json!({
        "stream": stream,
        "dead_letter_stream": streambus::keys::dead_letter(&stream),
        "total": total,
        "entries": entries,
    })))
}

/// Query of `POST /api/streams/{s}/messages`.
#[derive(Debug, Deserialize)]
pub(crate) struct PublishQuery {
    /// The envelope's `type` field.
    #[serde(rename = "type")]
    kind: Option<String>,
    /// The envelope's `key` field (ordering / partition key).
    key: Option<String>,
}

/// `POST /api/streams/{s}/messages`: publishes the JSON body as an envelope's
/// `data`. 201 `{"entry_id", "id"}`; 400 for a body that is not JSON; 413 for
/// one over the limit.
pub(crate) async fn publish(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    Query(q): Query<PublishQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    state.check_stream(&stream)?;
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is larger than the limit of {} bytes",
                    state.config().max_body_bytes
                ),
            )
        } else {
            ApiError::bad_request(format!("cannot read the body: {}", r.body_text()))
        }
    })?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("the body is not UTF-8 text"))?;
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        return Err(ApiError::bad_request(format!(
            "the body is not valid JSON: {e}"
        )));
    }
    let mut message = Message::json_text(text)?;
    if let Some(t) = q.kind {
        message = message.with_type(t);
    }
    if let Some(k) = q.key {
        message = message.with_key(k);
    }
    let envelope_id = message.envelope_id().map(str::to_owned);
    if let Some(p) = state.partitioned_producer(&stream) {
        // A batch of one: on a cluster, a pipeline must stay within one slot.
        let sent = p.publish_batch([message]).await?;
        let Some((key, entry_id)) = sent.into_iter().next() else {
            return Err(ApiError::internal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the message was not published".to_owned(),
            ));
        };
        let index = p.partitions().keys().iter().position(|k| *k == key);
        return Ok((
            StatusCode::CREATED,
            Json(json!({ "entry_id": entry_id, "id": envelope_id, "partition": index })),
        )
            .into_response());
    }
    // The producer counts it in streambus_published_total.
    let entry_id = state.producer().publish(&stream, message).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "entry_id": entry_id, "id": envelope_id })),
    )
        .into_response())
}

/// `GET /healthz`: Redis' health as the service's watcher last saw it (it
/// pings every second; see `health`), answered at once without asking Redis.
///
/// - 200 `{"status":"ok","redis":"ok"}`
/// - 503 `{"status":"redis_unreachable","redis":"unreachable","reason":"timeout"|"error",
///   "error":KIND,"since":UNIX_MS,"down_for_ms":N}` with `Retry-After`, where
///   KIND is the library's error kind (`connection`, `timeout`, `busy`, ...).
///
/// Never needs the token, and says nothing more (no addresses, no error
/// text): it is open to anyone.
pub(crate) async fn healthz(State(state): State<AppState>) -> Response {
    let Some(outage) = state.health().outage() else {
        return (
            StatusCode::OK,
            Json(json!({ "status": "ok", "redis": "ok" })),
        )
            .into_response();
    };
    let reason = if outage.kind == ErrorKind::Timeout {
        "timeout"
    } else {
        "error"
    };
    let body = json!({
        "status": "redis_unreachable",
        "redis": "unreachable",
        "reason": reason,
        "error": outage.kind.as_str(),
        "since": outage.since_ms(),
        "down_for_ms": outage.started.elapsed().as_millis() as u64,
    });
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS))],
        Json(body),
    )
        .into_response()
}
