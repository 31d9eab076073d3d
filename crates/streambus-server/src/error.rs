//! [`ApiError`]: every failure of a route as a JSON `{"error": "..."}` response.
//!
//! Client mistakes (4xx) say what was wrong. Server-side failures (5xx) never
//! show internals (key names, Redis replies, addresses): the detail is logged
//! once, here, with a short error id, and the response carries only a generic
//! message and that id, so an operator can find the log line.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use streambus::ErrorKind;

/// An error a route returns.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    /// What the client sees (for 5xx: a generic sentence).
    message: String,
    /// For 5xx: the detail to log (never sent).
    detail: Option<String>,
}

impl ApiError {
    /// A client error with a message the client may see.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            detail: None,
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
        }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<streambus::Error> for ApiError {
    /// Maps the library's error kinds: names that do not exist are 404, bad
    /// input 400, an oversized payload 413, Redis trouble 503, the rest 500.
    fn from(e: streambus::Error) -> Self {
        match e.kind() {
            ErrorKind::NoStream | ErrorKind::NoGroup => ApiError::not_found(e.message()),
            ErrorKind::InvalidInput | ErrorKind::Decode => ApiError::bad_request(e.message()),
            ErrorKind::WrongType => ApiError::not_found(e.message()),
            ErrorKind::TooLarge => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.message()),
            ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::Busy => {
                ApiError::internal(StatusCode::SERVICE_UNAVAILABLE, error_chain(&e))
            }
            _ => ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, error_chain(&e)),
        }
    }
}

/// The error with all its sources, for the log.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.detail {
            Some(detail) => {
                // Short and unguessable enough to find one log line; not a secret.
                let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
                tracing::error!(error_id = %id, status = self.status.as_u16(), "{detail}");
                serde_json::json!({ "error": self.message, "error_id": id })
            }
            None => serde_json::json!({ "error": self.message }),
        };
        (self.status, Json(body)).into_response()
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
}
