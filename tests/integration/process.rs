//! The real binary: memory while streaming a GiB each way, the access log, SIGTERM.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::StatusCode;
use serde_json::Value;

use crate::support::{client, get_json, sim, sim_with, ProxyProcess};

const GIB: u64 = 1 << 30;
/// Resident memory the proxy may reach while a GiB streams through it.
const RSS_LIMIT: u64 = 64 << 20;

#[tokio::test]
async fn a_gib_response_streams_through_with_flat_memory() {
    let sim = sim().await;
    let proxy = ProxyProcess::start(&["--backend", &sim.url()]);
    let response = client()
        .get(proxy.url(&format!("/sim/bytes?n={GIB}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-length"],
        GIB.to_string().as_str()
    );
    let mut stream = response.bytes_stream();
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        received += chunk.expect("chunk").len() as u64;
    }
    assert_eq!(received, GIB);
    let peak = proxy.peak_rss();
    eprintln!(
        "proxy peak RSS after a 1 GiB response: {:.1} MiB",
        peak as f64 / 1048576.0
    );
    assert!(peak < RSS_LIMIT, "peak RSS {peak} bytes");
}

#[tokio::test]
async fn a_gib_request_body_streams_through_with_flat_memory() {
    let sim = sim().await;
    let proxy = ProxyProcess::start_with_env(
        &["--backend", &sim.url()],
        &[("FORGE_VRAM_PROXY_LIMITS__MAX_REQUEST_BODY", "2GiB")],
    );
    static CHUNK: [u8; 64 * 1024] = [7u8; 64 * 1024];
    let chunks = futures_util::stream::iter(
        (0..GIB / CHUNK.len() as u64)
            .map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from_static(&CHUNK))),
    );
    let response = client()
        .post(proxy.url("/sim/sink"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let sunk: Value = response.json().await.unwrap();
    assert_eq!(sunk["bytes"], GIB);
    let peak = proxy.peak_rss();
    eprintln!(
        "proxy peak RSS after a 1 GiB request: {:.1} MiB",
        peak as f64 / 1048576.0
    );
    assert!(peak < RSS_LIMIT, "peak RSS {peak} bytes");
}

#[tokio::test]
async fn access_log_has_one_line_per_request_and_no_secrets() {
    let sim = sim().await;
    let proxy = ProxyProcess::start(&["--backend", &sim.url()]);
    let response = client()
        .get(proxy.url("/sdapi/v1/options?token=query-secret"))
        .header("authorization", "Basic YWxpY2U6dG9wLXNlY3JldA==")
        .header("cookie", "session=cookie-secret")
        .header("x-request-id", "log-me-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let size = response.bytes().await.unwrap().len() as u64;
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let found = proxy
            .log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["request_id"] == "log-me-1");
        if let Some(line) = found {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no access line: {}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(line["target"], "access");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/sdapi/v1/options");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], size);
    assert_eq!(line["complete"], true);
    assert!(line["duration_ms"].as_f64().is_some());
    let text = proxy.log_text();
    for secret in [
        "YWxpY2U6dG9wLXNlY3JldA",
        "top-secret",
        "cookie-secret",
        "query-secret",
    ] {
        assert!(!text.contains(secret), "{secret} reached the log");
    }
}

#[tokio::test]
async fn sigterm_lets_a_running_generation_finish_then_exits_zero() {
    // Real-time-ish simulator: the first generation loads the model (seconds) then samples.
    let sim = sim_with(|c| c.time_scale = 0.4).await;
    let mut proxy = ProxyProcess::start(&["--backend", &sim.url()]);
    let url = proxy.url("/sdapi/v1/txt2img");
    let generation = tokio::spawn(async move {
        client()
            .post(url)
            .body(r#"{"prompt": "finish me", "steps": 20}"#)
            .send()
            .await
    });
    // Wait until Forge is really generating.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let progress: Value = get_json(format!("{}/sdapi/v1/progress", sim.url())).await;
        if progress["state"]["job_count"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "generation never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.signal("TERM");
    let response = generation
        .await
        .unwrap()
        .expect("the generation's response arrives");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["images"].as_array().map(Vec::len), Some(1));
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = proxy.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "proxy did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status {status:?}");
    let journal = sim.state().journal();
    assert_eq!(journal.last().unwrap()["outcome"], "ok");
}
