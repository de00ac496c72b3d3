//! `GET /proxy/ui`: the dashboard, one page built into the binary (HTML, CSS and script in
//! one file; nothing is fetched from elsewhere). It reads `/proxy/status` and
//! `/proxy/history`, follows `/proxy/events`, and posts the admin actions.

use axum::response::{IntoResponse, Response};
use http::header;

/// The page, as written in `index.html`.
const PAGE: &str = include_str!("index.html");

pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
        .into_response()
}
