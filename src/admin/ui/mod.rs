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
            // The page's own inline script and style, requests to this origin only, and
            // never inside another site's frame (its admin buttons must not be clicked there).
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
        .into_response()
}
