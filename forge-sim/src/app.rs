//! The whole HTTP surface as a `Router`: Forge's API, the simulator's own
//! `/sim/` endpoints, and the traits of a uvicorn/FastAPI/Starlette server
//! every answer carries (`server: uvicorn`, FastAPI's 404 / 405 /
//! trailing-slash redirect, Starlette's gzip). Every request is logged.

use std::io::Write;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use flate2::{Compression, GzBuilder};
use serde_json::json;

use crate::api;
use crate::error::{ApiError, CloseConnection};
use crate::state::SimState;
use crate::testbed;

/// The simulator's router, ready to serve (tests can also `oneshot` it).
pub fn app(state: SimState) -> Router {
    let routes = Router::new()
        .merge(api::router(state.clone()))
        .merge(testbed::router())
        .fallback(not_found)
        .with_state(state.clone());
    // The layers wrap the routed whole: `Router::layer` on `routes` would
    // wrap each method's handler, after the method was dispatched.
    Router::new()
        .fallback_service(routes)
        .layer(middleware::from_fn(fastapi_head))
        .layer(middleware::from_fn(fastapi_method_not_allowed))
        .layer(middleware::from_fn(gzip))
        .layer(middleware::map_response(uvicorn_headers))
        .layer(middleware::from_fn_with_state(state.clone(), log_request))
        .layer(middleware::from_fn(starlette_path))
}

/// Starlette routes on the percent-decoded path (uvicorn puts `unquote(raw_path)` in the
/// ASGI scope): `/sdapi/v1/%74xt2img` is txt2img, `/sdapi/v1%2Ftxt2img` too. The path is
/// decoded here before any routing; a decoded path that a URI cannot carry as a path (it
/// would hold `?`, `#`, a space or a non-ASCII character) matches none of Forge's routes
/// either, and is left as sent.
async fn starlette_path(mut request: Request, next: Next) -> Response {
    if let Some(uri) = decoded_path_uri(request.uri()) {
        *request.uri_mut() = uri;
    }
    next.run(request).await
}

fn decoded_path_uri(uri: &Uri) -> Option<Uri> {
    let path = uri.path();
    if !path.contains('%') {
        return None;
    }
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()?;
    let carried = decoded
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#' && b != b'%');
    if !carried {
        return None;
    }
    let path_and_query = match uri.query() {
        Some(query) => format!("{decoded}?{query}"),
        None => decoded.into_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// FastAPI's answer for an unknown path, after its trailing-slash redirect:
/// `/sdapi/v1/options/` is a 307 to `/sdapi/v1/options`.
async fn not_found(uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path();
    let other = match path.strip_suffix('/') {
        Some(stripped) => stripped.to_owned(),
        None => format!("{path}/"),
    };
    if path != "/" && api::is_route(&other) {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        let location = format!("http://{host}{other}{query}");
        if let Ok(location) = HeaderValue::from_str(&location) {
            let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
            response.headers_mut().insert(header::LOCATION, location);
            return response;
        }
    }
    ApiError::NotFound.into_response()
}

/// A method no route has: routing it gives FastAPI's 405 for a known path
/// and the 404 for an unknown one.
const UNROUTED_HEAD: &[u8] = b"HEAD-NOT-ROUTED";

/// FastAPI's `APIRoute`s answer only the methods they list, so `HEAD` on a
/// GET route is a 405 with `allow: GET`; only Starlette's own routes
/// (`/docs`, `/openapi.json`, added with `add_route`) also take `HEAD`
/// (starlette/routing.py `Route.__init__`: `if "GET" in self.methods:
/// self.methods.add("HEAD")`). The `/sim/` endpoints keep axum's `HEAD`.
/// hyper still sends no body to a `HEAD`, only its headers, as uvicorn does.
async fn fastapi_head(mut request: Request, next: Next) -> Response {
    if request.method() == Method::HEAD && !api::takes_head(request.uri().path()) {
        if let Ok(method) = Method::from_bytes(UNROUTED_HEAD) {
            *request.method_mut() = method;
        }
    }
    next.run(request).await
}

/// A known path with another method: FastAPI's JSON 405. `allow` lists the
/// methods of the first route registered for the path, as Starlette's router
/// answers with the first route that matched the path only: `GET` for
/// `/sdapi/v1/options`, whose `POST` is a route of its own. FastAPI routes do
/// not add HEAD.
async fn fastapi_method_not_allowed(request: Request, next: Next) -> Response {
    let first_method = api::first_route_method(request.uri().path());
    let response = next.run(request).await;
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let allow = match first_method {
        Some(method) => Some(method.to_ascii_uppercase()),
        None => response
            .headers()
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .map(|methods| {
                methods
                    .split(',')
                    .map(str::trim)
                    .filter(|m| *m != "HEAD")
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
    };
    let mut answer = (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({ "detail": "Method Not Allowed" })),
    )
        .into_response();
    if let Some(allow) = allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
        answer.headers_mut().insert(header::ALLOW, allow);
    }
    answer
}

/// Starlette's `GZipMiddleware` drops answers shorter than this uncompressed.
const GZIP_MINIMUM_SIZE: usize = 1000;

/// Bodies larger than this are compressed off the async threads.
const GZIP_INLINE_MAX: usize = 64 * 1024;

/// Forge puts Starlette's `GZipMiddleware(minimum_size=1000)` on its whole
/// app (modules/initialize_util.py `setup_middleware`, called by webui.py for
/// `--nowebui` too), and this is what starlette 0.27's `GZipResponder` does:
///
/// - only when the request's `Accept-Encoding` contains `gzip` as a plain,
///   case-sensitive substring (`gzip;q=0` and `x-gzip` count, `GZIP` does not);
/// - never on an answer that already has a `Content-Encoding`;
/// - an answer sent in one piece (every `/sdapi` answer is) under 1000 bytes is
///   left alone; from 1000 bytes on it is compressed at level 9, with
///   `Content-Encoding: gzip`, `Content-Length` set to the compressed size and
///   `Vary: Accept-Encoding` added; any content type (JSON, HTML).
///
/// Forge's unhandled-exception answers (the `{"error": ..., "message": ...}`
/// 500s, marked [`CloseConnection`] here) come from the handler webui.py
/// passes as `exception_handlers={Exception: ...}`, which Starlette runs in
/// `ServerErrorMiddleware`, outside every user middleware: those are never
/// compressed (checked on a running Forge with a 2 KB message). `HTTPException`s (`{"detail":
/// ...}`) and 422s go through it like any answer.
///
/// Not for `/sim/`: Starlette would also compress a streamed answer, without
/// flushing (an event stream would arrive in bursts of deflate blocks) and
/// without `Content-Length`, which would defeat `/sim/sse` and `/sim/bytes`.
///
/// Not tower-http's `CompressionLayer`: it adds `vary` also to the answers it
/// does not compress, streams the compressed body without `Content-Length`, and
/// honours `q=0`, where Forge does none of these. The gzip header's mtime is 0
/// (Python writes the current time) so that the same answer always compresses
/// to the same bytes.
async fn gzip(request: Request, next: Next) -> Response {
    let wants_gzip = !request.uri().path().starts_with("/sim/")
        && request
            .headers()
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("gzip"));
    let response = next.run(request).await;
    if !wants_gzip || response.headers().contains_key(header::CONTENT_ENCODING) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::error!("reading an answer to compress it: {error}");
            return ApiError::runtime("the answer could not be read").into_response();
        }
    };
    let unhandled_exception = parts.extensions.get::<CloseConnection>().is_some();
    if bytes.len() < GZIP_MINIMUM_SIZE || unhandled_exception {
        return Response::from_parts(parts, Body::from(bytes));
    }
    let compressed = if bytes.len() <= GZIP_INLINE_MAX {
        gzip_bytes(&bytes)
    } else {
        match tokio::task::spawn_blocking(move || gzip_bytes(&bytes)).await {
            Ok(compressed) => compressed,
            Err(error) => {
                tracing::error!("compressing an answer: {error}");
                return ApiError::runtime("the answer could not be compressed").into_response();
            }
        }
    };
    let headers = &mut parts.headers;
    headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(compressed.len()));
    // Starlette's `add_vary_header`: appended to an existing `Vary`.
    let vary = match headers.get(header::VARY).and_then(|v| v.to_str().ok()) {
        Some(existing) => HeaderValue::from_str(&format!("{existing}, Accept-Encoding")).ok(),
        None => Some(HeaderValue::from_static("Accept-Encoding")),
    };
    if let Some(vary) = vary {
        headers.insert(header::VARY, vary);
    }
    Response::from_parts(parts, Body::from(compressed))
}

/// `gzip.GzipFile(mode="wb", compresslevel=9)` over the whole body.
fn gzip_bytes(bytes: &[u8]) -> Bytes {
    let mut encoder = GzBuilder::new().mtime(0).write(
        Vec::with_capacity(bytes.len() / 2 + 64),
        Compression::best(),
    );
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    Bytes::from(encoder.finish().unwrap_or_default())
}

/// uvicorn's `server` header (hyper adds `date` and `content-length`).
async fn uvicorn_headers(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::SERVER, HeaderValue::from_static("uvicorn"));
    response
}

/// One log line per request, like uvicorn's access log, with the time taken.
async fn log_request(State(state): State<SimState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    if !request.uri().path().starts_with("/sim/") {
        state.record_request(
            request.method().as_str(),
            request.uri().path(),
            request.headers(),
        );
    }
    let line = format!(
        "\"{} {} {:?}\"",
        request.method(),
        request.uri().path_and_query().map_or("/", |p| p.as_str()),
        request.version()
    );
    let response = next.run(request).await;
    tracing::info!(
        "{line} {} ({:.1} ms)",
        response.status(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn gzip_is_deterministic_and_decodes() {
        let text = "x".repeat(5000);
        let first = gzip_bytes(text.as_bytes());
        assert_eq!(first, gzip_bytes(text.as_bytes()));
        assert_eq!(&first[..4], b"\x1f\x8b\x08\x00");
        assert_eq!(
            first[8], 2,
            "XFL says maximum compression, as Python writes it"
        );
        let mut decoded = String::new();
        flate2::read::GzDecoder::new(&first[..])
            .read_to_string(&mut decoded)
            .unwrap();
        assert_eq!(decoded, text);
    }
}
