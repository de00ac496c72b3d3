//! `/sim/echo[/...]` (any method): describes the request it received, so a
//! test can see exactly what a proxy forwarded.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Uri};
use axum::Json;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// Answers `{"method", "path", "query", "headers": {name: value}, "body_len"}`;
/// repeated headers are joined with `", "`. The body is counted, not kept.
pub async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Body) -> Json<Value> {
    let mut joined: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        joined
            .entry(name.as_str().to_owned())
            .and_modify(|existing| {
                existing.push_str(", ");
                existing.push_str(&value);
            })
            .or_insert(value);
    }
    let mut body_len: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body_len += chunk.len() as u64;
    }
    Json(json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "headers": joined,
        "body_len": body_len,
    }))
}
