//! [`ApiError`]: every failure of a route as a JSON `{"error": "..."}` response.
//!
//! Client mistakes (4xx) say what was wrong. Server-side failures (5xx) never
//! show internals (key names, Redis replies, addresses): the detail is logged
//! once, here, with a short error id, and the response carries only a generic
//! message and that id, so an operator can find the log line.
//!
//! **While Redis is unreachable** (the library's `Connection`, `Timeout`,
//! `Busy`, `Unavailable` and `Unconfirmed` kinds) a route answers 503 with a
//! `Retry-After` header and a machine-readable `reason`:
//!
//! | reason | when | what the client should do |
//! |---|---|---|
//! | `redis_unreachable` | no connection, or no reply in time; nothing was done | retry after `Retry-After` |
//! | `redis_busy` | Redis is loading its data or busy | retry after `Retry-After` |
//! | `publish_unconfirmed` | a publish was sent but not confirmed: it may or may not be in the stream | look for its envelope `id` before publishing again |
//!
//! ```json
//! {"error": "Redis is unreachable; try again later", "reason": "redis_unreachable", "error_id": "..."}
//! ```

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use streambus::ErrorKind;

use crate::chain::error_chain;
use crate::health::{is_unreachable, RETRY_AFTER_SECS};

/// An error a route returns.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    /// What the client sees (for 5xx: a generic sentence).
    message: String,
    /// For 5xx: the detail to log (never sent).
    detail: Option<String>,
    /// Why Redis could not serve the request (`redis_unreachable`, ...), sent
    /// as `reason` with a `Retry-After` header.
    unavailable: Option<&'static str>,
    /// The envelope id of a publish that failed, so that the client can tell
    /// whether an unconfirmed one was written.
    envelope_id: Option<String>,
}

impl ApiError {
    /// A client error with a message the client may see.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            detail: None,
            unavailable: None,
            envelope_id: None,
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send Authorization: Bearer <token>",
        )
    }

    /// A server-side failure: `detail` is logged, never sent.
    pub fn internal(status: StatusCode, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            message: match status {
                StatusCode::SERVICE_UNAVAILABLE => "Redis is unavailable; try again later".into(),
                _ => "internal error".into(),
            },
            detail: Some(detail.into()),
            unavailable: None,
            envelope_id: None,
        }
    }

    /// 503 because Redis is unreachable (or did not confirm a publish), with
    /// `reason` and `Retry-After`; `detail` is logged, never sent.
    fn redis_unavailable(e: &streambus::Error) -> Self {
        let (reason, message) = match e.kind() {
            ErrorKind::Busy => ("redis_busy", "Redis is busy (loading its data?); try again later"),
            ErrorKind::Unconfirmed => (
                "publish_unconfirmed",
                "the message was sent but Redis did not confirm it: it may or may not be in the stream; look for its id before publishing it again",
            ),
            _ => ("redis_unreachable", "Redis is unreachable; try again later"),
        };
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            detail: Some(error_chain(e)),
            unavailable: Some(reason),
            envelope_id: e
                .unpublished()
                .and_then(|m| m.envelope_id())
                .map(str::to_owned),
        }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<streambus::Error> for ApiError {
    /// Maps the library's error kinds: names that do not exist are 404, bad
    /// input 400, an oversized payload 413, Redis unreachable 503 (with
    /// `reason` and `Retry-After`), the rest 500.
    fn from(e: streambus::Error) -> Self {
        match e.kind() {
            ErrorKind::NoStream | ErrorKind::NoGroup => ApiError::not_found(e.message()),
            ErrorKind::InvalidInput | ErrorKind::Decode => ApiError::bad_request(e.message()),
            ErrorKind::WrongType => ApiError::not_found(e.message()),
            ErrorKind::TooLarge => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.message()),
            kind if is_unreachable(kind) => ApiError::redis_unavailable(&e),
            _ => ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, error_chain(&e)),
        }
    }
}

/// The body of an error response.
#[derive(Serialize)]
struct ErrorBody<'a> {
    /// What went wrong, for people.
    error: &'a str,
    /// For 5xx: the id of the log line with the detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    error_id: Option<&'a str>,
    /// Why Redis could not serve the request (see the module docs).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    /// The envelope id of a publish that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error_id = self.detail.as_ref().map(|detail| {
            // Short and unguessable enough to find one log line; not a secret.
            let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
            if self.unavailable.is_some() {
                // Expected while Redis is away; the health watcher logs
                // the outage itself once, at warn.
                tracing::debug!(error_id = %id, status = self.status.as_u16(), "{detail}");
            } else {
                tracing::error!(error_id = %id, status = self.status.as_u16(), "{detail}");
            }
            id
        });
        let body = ErrorBody {
            error: &self.message,
            error_id: error_id.as_deref(),
            reason: self.unavailable,
            id: self.envelope_id.as_deref(),
        };
        let mut resp = (self.status, Json(body)).into_response();
        if self.unavailable.is_some() {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_hide_detail() {
        let e = ApiError::from(streambus::Error::new(
            ErrorKind::Redis,
            "ERR secret key layout {aurora}",
        ));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.message, "internal error");
        let e = ApiError::from(streambus::Error::new(ErrorKind::NoGroup, "no group g"));
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn unreachable_redis_is_503_with_a_reason_and_retry_after() {
        for (kind, reason) in [
            (ErrorKind::Connection, "redis_unreachable"),
            (ErrorKind::Timeout, "redis_unreachable"),
            (ErrorKind::Unavailable, "redis_unreachable"),
            (ErrorKind::Busy, "redis_busy"),
            (ErrorKind::Unconfirmed, "publish_unconfirmed"),
        ] {
            let e = ApiError::from(streambus::Error::new(kind, "at 10.1.2.3:6379"));
            assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE, "{kind:?}");
            assert_eq!(e.unavailable, Some(reason), "{kind:?}");
            assert!(!e.message.contains("10.1.2.3"), "{}", e.message);
            let resp = e.into_response();
            assert_eq!(resp.headers()[RETRY_AFTER], "2");
        }
        let e = ApiError::from(streambus::Error::new(ErrorKind::Auth, "WRONGPASS"));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(e.into_response().headers().get(RETRY_AFTER).is_none());
    }
}
