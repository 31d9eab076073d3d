//! The JSON routes: streams, groups (the monitor), the scaler, dead letters,
//! publishing, and the health check. Their bodies are the types of
//! [`responses`](super::responses).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use streambus::admin::monitor::MonitorOptions;
use streambus::admin::monitor::{self, StreamSnapshot};
use streambus::admin::{dead_letter, scaler};
use streambus::partition::{PartitionedSnapshot, Partitions};
use streambus::{ErrorKind, Message};

use super::check_stream;
use super::responses::{
    DeadLetterList, GroupOwners, Health, MissingStream, OutageView, PartitionGroup, PartitionView,
    Partitioned, PartitionedDeadLetterList, PartitionedGroup, PartitionedStream, PlainStream,
    Published, ScaleView, StreamList, StreamView,
};
use crate::catalog::Shown;
use crate::error::ApiError;
use crate::health::RETRY_AFTER_SECS;
use crate::state::AppState;

/// Dead letters listed when `count` is not given.
const DEFAULT_DLQ_COUNT: usize = 50;
/// Most dead letters one request lists: the response is built in memory.
const MAX_DLQ_COUNT: usize = 1000;

/// `GET /api/streams`: every shown stream with its length, ids, groups (lag,
/// pending, consumers) and dead-letter count; a partitioned stream as one,
/// with a per-partition breakdown and its leased groups' partition owners
/// (see [`partitioned_stream`]).
pub(crate) async fn streams(State(state): State<AppState>) -> Result<Json<StreamList>, ApiError> {
    let mut conn = state.conn();
    let shown = state
        .catalog()
        .snapshots(&mut conn, &state.config().monitor)
        .await?;
    let mut streams = Vec::with_capacity(shown.len());
    for s in shown {
        streams.push(match s {
            Shown::Partitioned {
                partitions,
                snapshot,
            } => StreamView::Partitioned(partitioned_stream(&state, partitions, snapshot).await?),
            Shown::Plain {
                name,
                snapshot: Some(snapshot),
            } => StreamView::Plain(PlainStream {
                dead_letters: dead_letter::count(&mut conn, &name).await?,
                snapshot,
                exists: true,
            }),
            Shown::Plain {
                name,
                snapshot: None,
            } => StreamView::Missing(MissingStream {
                dead_letters: dead_letter::count(&mut conn, &name).await?,
                stream: name,
                length: 0,
                groups: Vec::new(),
                exists: false,
            }),
        });
    }
    Ok(Json(StreamList { streams }))
}

/// A partitioned stream as one: totals over the partitions, the groups with
/// each partition's consumers, per partition its key, length, last id,
/// dead letters and groups, and per leased group who owns each partition.
async fn partitioned_stream(
    state: &AppState,
    p: &Partitions,
    snap: PartitionedSnapshot,
) -> Result<PartitionedStream, ApiError> {
    let mut conn = state.conn();
    let mut parts = Vec::with_capacity(p.len());
    let mut dead_letters = 0;
    // (group, consumer) of every partition.
    let mut consumers = Vec::new();
    for (i, key) in p.keys().iter().enumerate() {
        let dlq = dead_letter::count(&mut conn, key).await?;
        dead_letters += dlq;
        let Some(part) = snap.partitions.iter().find(|s| &s.stream == key) else {
            parts.push(PartitionView {
                partition: i,
                key: key.clone(),
                exists: false,
                length: 0,
                last_entry_id: None,
                dead_letters: dlq,
                groups: Vec::new(),
            });
            continue;
        };
        let groups = part
            .groups
            .iter()
            .map(|g| PartitionGroup {
                name: g.name.clone(),
                pending: g.pending,
                lag: g.lag,
            })
            .collect();
        for g in &part.groups {
            for c in &g.consumers {
                let value = c.clone();
                consumers.push((
                    g.name.clone(),
                    Partitioned {
                        value,
                        partition: i,
                    },
                ));
            }
        }
        parts.push(PartitionView {
            partition: i,
            key: key.clone(),
            exists: true,
            length: part.length,
            last_entry_id: part.last_entry_id,
            dead_letters: dlq,
            groups,
        });
    }
    let mut groups: Vec<PartitionedGroup> = snap
        .groups
        .iter()
        .map(|g| PartitionedGroup {
            name: g.name.clone(),
            pending: g.pending,
            lag: g.lag,
            partitions: g.partitions,
            consumers: Vec::new(),
        })
        .collect();
    for (name, c) in consumers {
        if let Some(g) = groups.iter_mut().find(|g| g.name == name) {
            g.consumers.push(c);
        }
    }
    let owners = snap
        .owners
        .into_iter()
        .map(|o| GroupOwners {
            group: o.group,
            members: o.members,
            unowned: o.unowned,
            partitions: o.partitions,
        })
        .collect();
    Ok(PartitionedStream {
        stream: p.stream().to_owned(),
        exists: !snap.partitions.is_empty(),
        length: snap.length,
        last_entry_id: snap.partitions.iter().filter_map(|s| s.last_entry_id).max(),
        dead_letters,
        groups,
        partition_count: p.len(),
        partitions: parts,
        owners,
    })
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
    check_stream(state, stream)?;
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
/// IN/OUT/NO_SCALE, compatible with the reference package) on a fresh
/// snapshot, and the throughput advisor's latest advice. The advisor is fed
/// by the service's sampler on its own interval; this request only reads it
/// (and asks the sampler to include the stream, if it does not already).
pub(crate) async fn scale(
    State(state): State<AppState>,
    Path((stream, group)): Path<(String, String)>,
) -> Result<Json<ScaleView>, ApiError> {
    let snap = group_snapshot(&state, &stream, &group).await?;
    let config = state.config();
    let Some(g) = snap.group(&group) else {
        return Err(ApiError::not_found(format!("no group {group:?}")));
    };
    state.sampler().ask(&stream);
    let consumers = g.consumers.len() as u64;
    let (rate, suggestion, sentence) =
        match scaler::reference_decision(g, config.scale_out, config.scale_in) {
            Some((rate, suggestion)) => (
                Some(rate),
                Some(suggestion),
                scaler::reference_sentence(
                    g.lag.unwrap_or(0),
                    g.pending,
                    consumers,
                    config.scale_out,
                    config.scale_in,
                ),
            ),
            None => (
                None,
                None,
                "Redis cannot tell the group's lag, so the reference rule cannot decide".to_owned(),
            ),
        };
    let advice = state.advice(&stream, &group);
    let reasons = match &advice {
        Some(a) => a.reasons.clone(),
        None => vec![format!(
            "the advisor needs two samples; it samples every {:?}: ask again",
            state.scale_interval()
        )],
    };
    Ok(Json(ScaleView {
        lag: g.lag,
        pending: g.pending,
        consumers,
        stream,
        group,
        scale_out: config.scale_out,
        scale_in: config.scale_in,
        rate,
        suggestion,
        sentence,
        target: advice.as_ref().map(|a| a.target),
        reasons,
        advisor: advice,
    }))
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
) -> Result<Response, ApiError> {
    check_stream(&state, &stream)?;
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
                entries.push(Partitioned {
                    value: d,
                    partition: i,
                });
            }
            total += dead_letter::count(&mut conn, key).await?;
        }
        entries.sort_by_key(|e| (e.value.id, e.partition));
        entries.truncate(count);
        let body = PartitionedDeadLetterList {
            stream,
            total,
            entries,
        };
        return Ok(Json(body).into_response());
    }
    let entries = dead_letter::list(&mut conn, &stream, after, count).await?;
    let total = dead_letter::count(&mut conn, &stream).await?;
    Ok(Json(DeadLetterList {
        dead_letter_stream: streambus::keys::dead_letter(&stream),
        stream,
        total,
        entries,
    })
    .into_response())
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
/// `data`. 201 `{"entry_id", "id"}` (and `"partition"` for a partitioned
/// stream); 400 for a body that is not JSON; 413 for
/// one over the limit.
pub(crate) async fn publish(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    Query(q): Query<PublishQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_stream(&state, &stream)?;
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
        let body = Published {
            entry_id,
            id: envelope_id,
            partition: index,
        };
        return Ok((StatusCode::CREATED, Json(body)).into_response());
    }
    // The producer counts it in streambus_published_total.
    let entry_id = state.producer().publish(&stream, message).await?;
    let body = Published {
        entry_id,
        id: envelope_id,
        partition: None,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
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
        let body = Health {
            status: "ok",
            redis: "ok",
            outage: None,
        };
        return (StatusCode::OK, Json(body)).into_response();
    };
    let body = Health {
        status: "redis_unreachable",
        redis: "unreachable",
        outage: Some(OutageView {
            reason: if outage.kind == ErrorKind::Timeout {
                "timeout"
            } else {
                "error"
            },
            error: outage.kind.as_str(),
            since: outage.since_ms(),
            down_for_ms: outage.started.elapsed().as_millis() as u64,
        }),
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS))],
        Json(body),
    )
        .into_response()
}
