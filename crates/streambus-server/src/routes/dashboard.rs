//! The dashboard: one page, one script, one stylesheet, embedded in the binary
//! (no build step, no CDN: it must work on a closed network).
//!
//! The files load without the token; the page then asks for it (from the URL
//! fragment `#token=...`, which never reaches the server or its logs, or a
//! prompt), keeps it in `sessionStorage`, and sends it with every API call and
//! as the WebSocket subprotocol. Payloads are rendered only as text
//! (`textContent`), never as HTML.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const APP_CSS: &str = include_str!("../../assets/app.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            // Revalidate every time: a new binary must not run an old script.
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`.
pub(crate) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /app.js`.
pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /app.css`.
pub(crate) async fn style() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page must work under the CSP: no inline script or style, and the
    /// script must never turn text into markup or code.
    #[test]
    fn assets_respect_the_csp() {
        assert!(!INDEX_HTML.contains("<script>"), "inline script");
        assert!(!INDEX_HTML.contains("style="), "inline style attribute");
        assert!(!INDEX_HTML.contains("<style"), "inline style element");
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "eval(",
            "new Function",
            "document.write",
        ] {
            assert!(!APP_JS.contains(banned), "app.js uses {banned}");
        }
    }
}
