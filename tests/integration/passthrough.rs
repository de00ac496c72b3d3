//! Pass-through: what reaches Forge and what comes back, proxy against direct.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{client, dead_backend, get_json, proxy_error, sim, sim_with, Proxy};

/// Headers that legitimately differ: the clock, the request id the proxy adds, and the
/// proxy's account of a generation's memory decision.
const NOT_COMPARED: [&str; 7] = [
    "date",
    "x-request-id",
    "x-forge-proxy-profile",
    "x-forge-proxy-inference-memory",
    "x-forge-proxy-gpu-weights",
    "x-forge-proxy-options-applied",
    "x-forge-proxy-vram-source",
];

struct Answer {
    status: StatusCode,
    headers: Vec<(String, String)>,
    body: bytes::Bytes,
}

async fn send(
    method: Method,
    url: String,
    body: Option<&str>,
    auth: Option<(&str, &str)>,
) -> Answer {
    let mut request = client().request(method, url);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    if let Some((user, pass)) = auth {
        request = request.basic_auth(user, Some(pass));
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(name, _)| !NOT_COMPARED.contains(&name.as_str()))
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("?").to_owned()))
        .collect();
    headers.sort();
    let body = without_clock(response.bytes().await.expect("body"));
    Answer {
        status,
        headers,
        body,
    }
}

/// Generation answers carry Forge's `job_timestamp` (the wall clock, to the second); it is
/// zeroed (same length) so that the rest can be compared byte for byte.
fn without_clock(body: bytes::Bytes) -> bytes::Bytes {
    let key = br#"job_timestamp\": \""#;
    let mut bytes = body.to_vec();
    if let Some(at) = bytes.windows(key.len()).position(|w| w == key) {
        let start = at + key.len();
        for b in bytes.iter_mut().skip(start).take(14) {
            *b = b'0';
        }
    }
    bytes.into()
}

/// The same request, straight to the simulator and through the proxy, must come back the same.
async fn assert_same(
    sim_url: &str,
    proxy: &Proxy,
    method: Method,
    path: &str,
    body: Option<&str>,
    auth: Option<(&str, &str)>,
) -> StatusCode {
    let direct = send(method.clone(), format!("{sim_url}{path}"), body, auth).await;
    let proxied = send(method.clone(), proxy.url(path), body, auth).await;
    assert_eq!(direct.status, proxied.status, "{method} {path}: status");
    assert_eq!(direct.headers, proxied.headers, "{method} {path}: headers");
    assert_eq!(
        direct.body,
        proxied.body,
        "{method} {path}: body ({} vs {} bytes)",
        direct.body.len(),
        proxied.body.len()
    );
    direct.status
}

#[tokio::test]
async fn forge_endpoints_answer_identically_direct_and_through_proxy() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    let url = sim.url();
    let get = [
        "/sdapi/v1/options",
        "/sdapi/v1/sd-models",
        "/sdapi/v1/sd-modules",
        "/sdapi/v1/memory",
        "/sdapi/v1/progress",
        "/sdapi/v1/progress?skip_current_image=true",
        "/sdapi/v1/samplers",
        "/sdapi/v1/schedulers",
        "/sdapi/v1/scripts",
        "/sdapi/v1/cmd-flags",
        "/sdapi/v1/sd-models?refresh=1&x=%20y",
        "/no/such/path",
        "/sdapi/v1/no-such-endpoint?q=1",
    ];
    for path in get {
        assert_same(&url, &proxy, Method::GET, path, None, None).await;
    }
    let post = [
        ("/sdapi/v1/options", r#"{"samples_format": "png"}"#, 200),
        (
            "/sdapi/v1/options",
            r#"{"sd_model_checkpoint": "nope"}"#,
            500,
        ),
        ("/sdapi/v1/options", "not json", 422),
        ("/sdapi/v1/interrupt", "", 200),
        ("/sdapi/v1/skip", "", 200),
        (
            "/sdapi/v1/txt2img",
            r#"{"prompt": "a cat", "steps": "many"}"#,
            422,
        ),
        ("/sdapi/v1/txt2img", "{not json", 422),
        ("/sdapi/v1/img2img", r#"{"prompt": "a cat"}"#, 404),
        ("/sdapi/v1/txt2img?debug=1", r#"[1, 2]"#, 422),
    ];
    for (path, body, status) in post {
        let got = assert_same(&url, &proxy, Method::POST, path, Some(body), None).await;
        assert_eq!(got.as_u16(), status, "POST {path} {body}");
    }
    assert_same(
        &url,
        &proxy,
        Method::DELETE,
        "/sdapi/v1/options",
        None,
        None,
    )
    .await;
}

#[tokio::test]
async fn generations_pass_through_with_identical_answers() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    // Warm the model so neither side pays the first load.
    let body = r#"{"prompt": "a lighthouse", "steps": 4, "seed": 7, "subseed": 8, "force_task_id": "task(parity)"}"#;
    let warm = send(
        Method::POST,
        format!("{}/sdapi/v1/txt2img", sim.url()),
        Some(body),
        None,
    )
    .await;
    assert_eq!(warm.status, StatusCode::OK);
    assert_same(
        &sim.url(),
        &proxy,
        Method::POST,
        "/sdapi/v1/txt2img",
        Some(body),
        None,
    )
    .await;
    let img2img =
        json!({"prompt": "a lighthouse", "steps": 4, "seed": 7, "subseed": 8, "force_task_id": "task(parity2)",
        "init_images": [crate::support::tiny_png_base64()], "denoising_strength": 0.5})
        .to_string();
    assert_same(
        &sim.url(),
        &proxy,
        Method::POST,
        "/sdapi/v1/img2img",
        Some(&img2img),
        None,
    )
    .await;
    let journal = sim.state().journal();
    let generations = journal.iter().filter(|e| e["kind"] == "generation").count();
    assert_eq!(
        generations, 5,
        "warm-up, then each request twice: {journal:?}"
    );
}

#[tokio::test]
async fn basic_auth_passes_through_and_401_is_identical() {
    let sim = sim_with(|c| c.api_auth = Some("alice:s3cret".into())).await;
    let proxy = Proxy::start(&sim.url(), "").await;
    let url = sim.url();
    let ok = assert_same(
        &url,
        &proxy,
        Method::GET,
        "/sdapi/v1/options",
        None,
        Some(("alice", "s3cret")),
    )
    .await;
    assert_eq!(ok, StatusCode::OK);
    let wrong = assert_same(
        &url,
        &proxy,
        Method::GET,
        "/sdapi/v1/options",
        None,
        Some(("alice", "guess")),
    )
    .await;
    assert_eq!(wrong, StatusCode::UNAUTHORIZED);
    let none = assert_same(&url, &proxy, Method::GET, "/sdapi/v1/sd-models", None, None).await;
    assert_eq!(none, StatusCode::UNAUTHORIZED);
    let body =
        r#"{"prompt": "x", "steps": 2, "seed": 1, "subseed": 2, "force_task_id": "task(auth)"}"#;
    let generated = assert_same(
        &url,
        &proxy,
        Method::POST,
        "/sdapi/v1/txt2img",
        Some(body),
        Some(("alice", "s3cret")),
    )
    .await;
    assert_eq!(generated, StatusCode::OK);
    let proxied = send(
        Method::GET,
        proxy.url("/sdapi/v1/options"),
        None,
        Some(("alice", "guess")),
    )
    .await;
    assert!(proxied
        .headers
        .contains(&("www-authenticate".into(), "Basic".into())));
}

async fn echo(proxy: &Proxy, request: reqwest::RequestBuilder) -> Value {
    let _ = proxy;
    let response = request.send().await.expect("echo request");
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("echo json")
}

#[tokio::test]
async fn forwards_every_method_path_query_and_body() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let seen = echo(
            &proxy,
            client()
                .request(
                    method.clone(),
                    proxy.url("/sim/echo/deep/path;x=1?b=2&a=%2F%20&a=3"),
                )
                .body("0123456789"),
        )
        .await;
        assert_eq!(seen["method"], method.as_str());
        assert_eq!(seen["path"], "/sim/echo/deep/path;x=1");
        assert_eq!(seen["query"], "b=2&a=%2F%20&a=3");
        assert_eq!(seen["body_len"], 10, "{method}: {seen}");
    }
}

#[tokio::test]
async fn strips_hop_by_hop_and_adds_forwarded_headers() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    let seen = echo(
        &proxy,
        client()
            .get(proxy.url("/sim/echo"))
            .header("connection", "keep-alive, x-hop-secret")
            .header("x-hop-secret", "must not pass")
            .header("keep-alive", "timeout=5")
            .header("proxy-authorization", "Basic cHJveHk6cHc=")
            .header("authorization", "Bearer client-token")
            .header("cookie", "session=abc")
            .header("x-custom", "kept as is")
            .header("x-forwarded-for", "203.0.113.9"),
    )
    .await;
    let headers = &seen["headers"];
    for gone in ["x-hop-secret", "keep-alive", "proxy-authorization"] {
        assert!(
            headers.get(gone).is_none(),
            "{gone} was forwarded: {headers}"
        );
    }
    assert_eq!(headers["authorization"], "Bearer client-token");
    assert_eq!(headers["cookie"], "session=abc");
    assert_eq!(headers["x-custom"], "kept as is");
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], proxy.addr.to_string());
    assert_eq!(headers["host"], sim.addr.to_string());
}

#[tokio::test]
async fn host_is_kept_when_configured() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "preserve_host = true\n").await;
    let seen = echo(&proxy, client().get(proxy.url("/sim/echo"))).await;
    assert_eq!(seen["headers"]["host"], proxy.addr.to_string());
}

#[tokio::test]
async fn request_id_is_kept_or_generated_and_forwarded() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    let response = client()
        .get(proxy.url("/sim/echo"))
        .header("x-request-id", "client-chosen-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-chosen-42");
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["headers"]["x-request-id"], "client-chosen-42");

    let response = client().get(proxy.url("/sim/echo")).send().await.unwrap();
    let generated = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["headers"]["x-request-id"], generated.as_str());
}

#[tokio::test]
async fn server_sent_events_arrive_as_they_are_sent() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    let started = Instant::now();
    let response = client()
        .get(proxy.url("/sim/sse?count=5&interval_ms=300"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response.bytes_stream();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while arrivals.len() < text.matches("data:").count() {
            arrivals.push(started.elapsed());
        }
    }
    let ended = started.elapsed();
    assert_eq!(arrivals.len(), 5, "{text}");
    // The stream lasts about 1.2 s; the first event must not wait for its end.
    assert!(
        arrivals[0] + Duration::from_millis(800) < ended,
        "first event at {:?}, stream ended at {ended:?}",
        arrivals[0]
    );
}

#[tokio::test]
async fn websocket_echoes_through_the_proxy() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    let (mut socket, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/sim/ws", proxy.addr))
            .await
            .expect("websocket handshake through the proxy");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    socket.send(Message::text("hello forge")).await.unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    assert_eq!(reply, Message::text("hello forge"));
    let payload: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    socket.send(Message::binary(payload.clone())).await.unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    assert_eq!(reply.into_data().as_ref(), payload.as_slice());
    socket.close(None).await.unwrap();
}

fn assert_proxy_error(body: &Value, kind: &str, message: &str) {
    assert_eq!(*body, proxy_error(kind, message));
}

#[tokio::test]
async fn backend_down_is_502_in_the_proxy_error_shape() {
    let backend = dead_backend();
    let proxy = Proxy::start(&backend, "").await;
    let response = client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .body(r#"{"prompt": "x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_proxy_error(
        &body,
        "BackendUnreachable",
        &format!(
            "forge-vram-proxy: backend {backend} is unreachable: Connection refused (os error 111)"
        ),
    );
    let ready = client()
        .get(proxy.url("/proxy/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn body_over_the_limit_is_413_declared_or_streamed() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "[limits]\nmax_request_body = \"1MiB\"\n").await;
    let message = "forge-vram-proxy: request body is larger than the limit of 1048576 bytes (limits.max_request_body)";

    let declared = client()
        .post(proxy.url("/sim/sink"))
        .body(vec![b'x'; (1 << 20) + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_proxy_error(&declared.json().await.unwrap(), "PayloadTooLarge", message);

    let chunks = futures_util::stream::iter(
        (0..32).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'y'; 64 * 1024]))),
    );
    let streamed = client()
        .post(proxy.url("/sim/sink"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_proxy_error(&streamed.json().await.unwrap(), "PayloadTooLarge", message);

    let at_limit = client()
        .post(proxy.url("/sim/sink"))
        .body(vec![b'z'; 1 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(at_limit.status(), StatusCode::OK);
    let sunk: Value = at_limit.json().await.unwrap();
    assert_eq!(sunk["bytes"], 1 << 20);
}

#[tokio::test]
async fn slow_backend_is_504_where_a_timeout_is_set() {
    let sim = sim_with(|c| c.time_scale = 1.0).await;
    let proxy = Proxy::start(
        &sim.url(),
        "[timeouts]\ngeneration = \"300ms\"\n[timeouts.routes]\n\"/sim/delay\" = \"200ms\"\n",
    )
    .await;
    let slow = client()
        .get(proxy.url("/sim/delay?ms=3000"))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_proxy_error(
        &slow.json().await.unwrap(),
        "BackendTimeout",
        &format!(
            "forge-vram-proxy: backend {} did not answer GET /sim/delay within 200ms",
            sim.url()
        ),
    );
    let fast = client()
        .get(proxy.url("/sim/delay?ms=10"))
        .send()
        .await
        .unwrap();
    assert_eq!(fast.status(), StatusCode::OK);

    // A real-time generation (a model load alone takes seconds) against a 300 ms limit.
    let generation = client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .body(r#"{"prompt": "slow", "steps": 20}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(generation.status(), StatusCode::GATEWAY_TIMEOUT);
    let body: Value = generation.json().await.unwrap();
    assert!(body["message"]
        .as_str()
        .unwrap()
        .ends_with("did not answer POST /sdapi/v1/txt2img within 300ms"));
}

#[tokio::test]
async fn health_and_readiness() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    let health: Value = get_json(proxy.url("/proxy/health")).await;
    assert_eq!(health, json!({"status": "ok"}));
    let ready = client()
        .get(proxy.url("/proxy/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["backends"][0]["healthy"], true);
    assert_eq!(ready["backends"][0]["url"], sim.url());
}

#[tokio::test]
async fn the_reserved_prefix_is_never_forwarded() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    let response = client()
        .get(proxy.url("/proxy/sim/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_proxy_error(
        &response.json().await.unwrap(),
        "NotFound",
        "forge-vram-proxy: no route /proxy/sim/echo under the proxy's reserved prefix /proxy/",
    );
}
