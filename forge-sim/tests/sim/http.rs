//! What every answer looks like on the wire: uvicorn's headers, FastAPI's
//! 404 / 405 / redirect, `--api-auth`, and the listing endpoints.

use base64::Engine;
use serde_json::{json, Value};

use crate::{fast, get, sim, small_txt2img};
use forge_sim::SimConfig;

#[tokio::test]
async fn answers_carry_uvicorns_headers() {
    let server = sim(fast()).await;
    let response = reqwest::get(format!("{}/sdapi/v1/options", server.url()))
        .await
        .unwrap();
    let headers = response.headers().clone();
    assert_eq!(headers["server"], "uvicorn");
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.contains_key("date"));
    let length: usize = headers["content-length"].to_str().unwrap().parse().unwrap();
    assert_eq!(response.bytes().await.unwrap().len(), length);
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405() {
    let server = sim(fast()).await;
    let (status, body) = get(&server, "/sdapi/v1/nope").await;
    assert_eq!(
        (status.as_u16(), body),
        (404, json!({"detail": "Not Found"}))
    );

    let response = reqwest::Client::new()
        .delete(format!("{}/sdapi/v1/txt2img", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    assert_eq!(response.headers()["server"], "uvicorn");
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"detail": "Method Not Allowed"})
    );
}

#[tokio::test]
async fn trailing_slash_redirects_like_fastapi() {
    let server = sim(fast()).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client
        .get(format!("{}/sdapi/v1/options/", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 307);
    assert_eq!(
        response.headers()["location"],
        format!("http://{}/sdapi/v1/options", server.addr).as_str()
    );
}

fn basic(user_pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    )
}

#[tokio::test]
async fn api_auth_guards_sdapi_progress_included() {
    let server = sim(SimConfig {
        api_auth: Some("user:secret".into()),
        ..fast()
    })
    .await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.url());

    let missing = client.get(url("/sdapi/v1/options")).send().await.unwrap();
    assert_eq!(missing.status().as_u16(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Basic");
    assert_eq!(
        missing.json::<Value>().await.unwrap(),
        json!({"detail": "Not authenticated"})
    );

    let wrong = client
        .post(url("/sdapi/v1/txt2img"))
        .header("authorization", basic("user:nope"))
        .json(&small_txt2img())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    assert_eq!(wrong.headers()["www-authenticate"], "Basic");
    assert_eq!(
        wrong.json::<Value>().await.unwrap(),
        json!({"detail": "Incorrect username or password"})
    );

    let right = client
        .post(url("/sdapi/v1/txt2img"))
        .header("authorization", basic("user:secret"))
        .json(&small_txt2img())
        .send()
        .await
        .unwrap();
    assert_eq!(right.status().as_u16(), 200);

    // Forge's /progress is behind --api-auth too.
    let progress = client.get(url("/sdapi/v1/progress")).send().await.unwrap();
    assert_eq!(progress.status().as_u16(), 401);
    assert_eq!(progress.headers()["www-authenticate"], "Basic");
    let journal = client.get(url("/sim/journal")).send().await.unwrap();
    assert_eq!(journal.status().as_u16(), 200);
    // Routing comes before auth: unknown paths stay 404.
    let unknown = client.get(url("/sdapi/v1/nope")).send().await.unwrap();
    assert_eq!(unknown.status().as_u16(), 404);
}

#[tokio::test]
async fn listings_have_forges_shapes() {
    let server = sim(fast()).await;
    let (_, models) = get(&server, "/sdapi/v1/sd-models").await;
    let first = &models[0];
    for key in [
        "title",
        "model_name",
        "hash",
        "sha256",
        "filename",
        "config",
    ] {
        assert!(first.get(key).is_some(), "sd-models {key}");
    }
    assert_eq!(models.as_array().unwrap().len(), 3);
    let (_, modules) = get(&server, "/sdapi/v1/sd-modules").await;
    assert!(modules
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["model_name"] == "ae.safetensors"));
    let (_, samplers) = get(&server, "/sdapi/v1/samplers").await;
    assert!(samplers
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "Euler a"));
    let (_, schedulers) = get(&server, "/sdapi/v1/schedulers").await;
    assert!(schedulers
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "karras"));
    let (_, scripts) = get(&server, "/sdapi/v1/scripts").await;
    assert!(scripts["txt2img"].is_array() && scripts["img2img"].is_array());
    let (_, flags) = get(&server, "/sdapi/v1/cmd-flags").await;
    assert_eq!(flags["api_auth"], Value::Null);
    assert_eq!(flags["port"], server.config_port());
    let (_, loras) = get(&server, "/sdapi/v1/loras").await;
    assert_eq!(loras, json!([]));
    let (_, embeddings) = get(&server, "/sdapi/v1/embeddings").await;
    assert_eq!(embeddings, json!({"loaded": {}, "skipped": {}}));
    let (_, upscalers) = get(&server, "/sdapi/v1/upscalers").await;
    assert_eq!(upscalers[0]["name"], "None");
}

/// The port cmd-flags reports: the configured `--listen` (7860), which
/// `start` ignores for binding.
trait ConfigPort {
    fn config_port(&self) -> u16;
}

impl ConfigPort for forge_sim::SimServer {
    fn config_port(&self) -> u16 {
        self.state().config().listen.port()
    }
}
