//! Bearer-token authentication.
//!
//! With a token configured, every route but `/healthz` and the dashboard's
//! static files needs `Authorization: Bearer <token>`. Browsers cannot set
//! headers on a WebSocket, so `/ws` also accepts the token as a subprotocol
//! (`Sec-WebSocket-Protocol: bearer.<token>`, which the upgrade echoes back) or
//! as `?token=` (last resort: query strings end up in proxy logs).
//!
//! Tokens are compared in constant time and never logged.

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// The subprotocol prefix that carries a token: `bearer.<token>`.
pub const PROTOCOL_PREFIX: &str = "bearer.";

/// Compares two byte strings in time that depends only on the length of
/// `expected`, so that response timing does not reveal how much of a guessed
/// token was right. (A different length is rejected, and the loop still runs.)
pub fn constant_time_eq(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = u8::from(expected.len() != given.len());
    for (i, e) in expected.iter().enumerate() {
        // Reading past the end of `given` compares against 0; `diff` is
        // already non-zero then.
        let g = given.get(i).copied().unwrap_or(0);
        diff |= e ^ g;
    }
    std::hint::black_box(diff) == 0
}

/// The token in `Authorization: Bearer <token>`, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The tokens offered as `bearer.<token>` subprotocols, if any.
pub(crate) fn protocol_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.trim().strip_prefix(PROTOCOL_PREFIX))
}

/// The `token` query parameter, if any, decoded as a form value: `+` is a
/// space, then `%XX` escapes by the library's decoder (the one that reads Redis
/// URLs).
fn query_token(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| streambus::config::percent_decode(&v.replace('+', " ")))
}

/// Middleware: lets the request through when no token is configured or the
/// request presents the right one; 401 with `WWW-Authenticate: Bearer` otherwise.
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.config().token.as_deref() else {
        return next.run(req).await;
    };
    let expected = expected.as_bytes();
    let ok_header = bearer(req.headers()).is_some_and(|t| constant_time_eq(expected, t.as_bytes()));
    let ok = ok_header
        || (req.uri().path() == "/ws"
            && (protocol_tokens(req.headers()).any(|t| constant_time_eq(expected, t.as_bytes()))
                || query_token(req.uri().query())
                    .is_some_and(|t| constant_time_eq(expected, t.as_bytes()))));
    if ok {
        return next.run(req).await;
    }
    let mut resp = ApiError::unauthorized().into_response();
    resp.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_matches_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"abc", b""));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn finds_tokens() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer  tok"));
        assert_eq!(bearer(&h), Some("tok"));
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("streambus, bearer.xyz"),
        );
        assert_eq!(protocol_tokens(&h).collect::<Vec<_>>(), ["xyz"]);
        assert_eq!(
            query_token(Some("streams=a&token=a%2Bb%3D")).as_deref(),
            Some("a+b=")
        );
        assert_eq!(query_token(Some("streams=a")), None);
    }

    #[test]
    fn query_tokens_are_decoded_like_the_library_decodes_urls() {
        // `+` is a space (form encoding); a `%` without two hex digits after
        // it stays as it is (the old decoder read "%+1" as byte 1, since
        // `u8::from_str_radix` takes a sign).
        assert_eq!(
            query_token(Some("token=%€%+1+x%2b%2")).as_deref(),
            Some("%€% 1 x+%2")
        );
        assert_eq!(query_token(Some("token=%-1")).as_deref(), Some("%-1"));
        assert_eq!(query_token(Some("token=%E2%82%AC")).as_deref(), Some("€"));
        assert_eq!(query_token(Some("token=%")).as_deref(), Some("%"));
    }
}
