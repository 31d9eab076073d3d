//! The JSON API: streams, groups (the monitor), the scaler, dead letters,
//! publishing, and the health check.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use streambus::monitor::{self, StreamSnapshot};
use streambus::{dead_letter, scaler, ErrorKind, Message, MonitorOptions};

use crate::error::{error_chain, ApiError};
use crate::state::AppState;

/// How long `/healthz` waits for `PING`: a probe must answer quickly even when
/// Redis hangs.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Dead letters listed when `count` is not given.
const DEFAULT_DLQ_COUNT: usize = 50;
/// Most dead letters one request lists: the response is built in memory.
const MAX_DLQ_COUNT: usize = 1000;

/// The streams the service shows: the configured ones, or those found in Redis.
async fn stream_names(state: &AppState) -> Result<Vec<String>, ApiError> {
    let config = state.config();
    if !config.streams.is_empty() || state.client().is_cluster() {
        return Ok(config.streams.clone());
    }
    Ok(streambus::read::list_streams(&mut state.conn(), config.max_streams).await?)
}

/// A snapshot of every shown stream (`None` for one that does not exist yet),
/// with the monitor gauges and the scalers updated from it.
pub(crate) async fn snapshots(
    state: &AppState,
) -> Result<Vec<(String, Option<StreamSnapshot>)>, ApiError> {
    let mut out = Vec::new();
    let mut conn = state.conn();
    for name in stream_names(state).await? {
        match monitor::snapshot(&mut conn, &name, &state.config().monitor).await {
            Ok(snap) => {
                snap.record_metrics();
                for g in &snap.groups {
                    state.scale(&snap, &g.name);
                }
                out.push((name, Some(snap)));
            }
            Err(e) if e.kind() == ErrorKind::NoStream => out.push((name, None)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// `GET /api/streams`: every shown stream with its length, ids, groups (lag,
/// pending, consumers) and dead-letter count.
pub(crate) async fn streams(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut conn = state.conn();
    let mut list = Vec::new();
    for (name, snap) in snapshots(&state).await? {
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
    let entry_id = state.producer().publish(&stream, message).await?;
    metrics::counter!(streambus::metrics::PUBLISHED, "stream" => stream.clone()).increment(1);
    Ok((
        StatusCode::CREATED,
        Json(json!({ "entry_id": entry_id, "id": envelope_id })),
    )
        .into_response())
}

/// `GET /healthz`: 200 `{"redis":"ok"}` when Redis answers `PING` in time, 503
/// `{"redis":"unreachable"}` otherwise. Never needs the token, and says
/// nothing more: it is open to anyone.
pub(crate) async fn healthz(State(state): State<AppState>) -> Response {
    let mut conn = state.conn();
    let ping = tokio::time::timeout(
        HEALTH_TIMEOUT,
        redis::cmd("PING").query_async::<()>(&mut conn),
    )
    .await;
    match ping {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({ "redis": "ok" }))).into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %error_chain(&e), "health check: Redis does not answer");
            unhealthy("error")
        }
        Err(_) => {
            tracing::warn!("health check: Redis did not answer PING within {HEALTH_TIMEOUT:?}");
            unhealthy("timeout")
        }
    }
}

fn unhealthy(reason: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "redis": "unreachable", "reason": reason })),
    )
        .into_response()
}
