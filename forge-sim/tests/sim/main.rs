//! Integration tests: the simulator over real sockets, one Forge behavior
//! (FORGE.md) per test. Durations are scaled down so the suite stays fast.

mod generation;
mod http;
mod options;
mod testbed;

use forge_sim::{start, SimConfig, SimServer};
use reqwest::StatusCode;
use serde_json::Value;

/// A simulator whose simulated seconds take microseconds.
pub fn fast() -> SimConfig {
    SimConfig {
        time_scale: 0.0005,
        image_bytes: 20_000,
        ..SimConfig::default()
    }
}

pub async fn sim(config: SimConfig) -> SimServer {
    start(config).await.expect("simulator starts")
}

pub async fn get(server: &SimServer, path: &str) -> (StatusCode, Value) {
    let response = reqwest::get(format!("{}{path}", server.url()))
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.expect("json body"))
}

pub async fn post(server: &SimServer, path: &str, body: Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", server.url()))
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.expect("json body"))
}

/// Journal entries of one kind.
pub fn entries(server: &SimServer, kind: &str) -> Vec<Value> {
    server
        .state()
        .journal()
        .into_iter()
        .filter(|entry| entry["kind"] == kind)
        .collect()
}

/// A quick SD 1.5 generation.
pub fn small_txt2img() -> Value {
    serde_json::json!({"prompt": "a cat", "steps": 4, "width": 512, "height": 512})
}

/// JSON values equal with numbers compared as numbers (`1024 == 1024.0`).
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}
