//! The HTTP routes: thin adapters from axum to the state and the engines.
//! [`app`](crate::app) puts them together.

pub(crate) mod api;
pub(crate) mod dashboard;
pub(crate) mod metrics;
pub(crate) mod responses;
pub(crate) mod ws;

use crate::error::ApiError;
use crate::state::AppState;

/// Checks a stream name from a request: 400 when it is not a valid name, 404
/// when the service is limited to configured streams and this is not one.
pub(crate) fn check_stream(state: &AppState, stream: &str) -> Result<(), ApiError> {
    streambus::keys::validate_name("stream", stream)
        .map_err(|e| ApiError::bad_request(e.message()))?;
    let configured = &state.config().streams;
    if !configured.is_empty() && !configured.iter().any(|s| s == stream) {
        return Err(ApiError::not_found(format!(
            "stream {stream:?} is not served by this service"
        )));
    }
    Ok(())
}
