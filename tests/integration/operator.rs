//! What operators and clients see of the proxy's work: the live events, the admin actions,
//! the history, the page, and a queued client's progress.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::StatusCode;
use serde_json::{json, Value};

use crate::support::{client, get_json, get_json_as, journal_of, sim, sim_with, Proxy, SD15, SDXL};
use crate::webuiapi::run_client_at;

fn txt2img(checkpoint: &str, steps: u32) -> String {
    json!({
        "prompt": "a lighthouse", "steps": steps,
        "override_settings": {"sd_model_checkpoint": checkpoint}
    })
    .to_string()
}

/// A client whose connections come from 127.0.0.2: another client, as the proxy tells them
/// apart.
fn other_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .build()
        .unwrap()
}

async fn two_backends() -> (forge_sim::SimServer, forge_sim::SimServer, Proxy) {
    let first = sim_with(|c| c.time_scale = 0.3).await;
    let second = sim().await;
    let toml = format!(
        "[[backends]]\nurl = \"{}\"\nvram_source = \"backend\"\n\n[[backends]]\nurl = \"{}\"\nvram_source = \"backend\"\n",
        first.url(),
        second.url()
    );
    let proxy = Proxy::start_toml(&toml).await;
    (first, second, proxy)
}

/// Server-sent events as they come: (event name, JSON data).
struct Events {
    stream:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl Events {
    async fn open(proxy: &Proxy) -> Events {
        let response = client()
            .get(proxy.url("/proxy/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Events {
            stream: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return (name, serde_json::from_str(&data).unwrap());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.stream.next())
                .await
                .expect("an event within 10 s")
                .expect("the stream goes on")
                .unwrap();
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next event named `name` that satisfies `wanted`.
    async fn until(&mut self, name: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            assert!(Instant::now() < deadline, "no {name} event as wanted");
            let (event, data) = self.next().await;
            if event == name && wanted(&data) {
                return data;
            }
        }
    }
}

#[tokio::test]
async fn events_carry_the_status_at_once_then_a_generation_and_its_decision_as_they_happen() {
    let (first, _second, proxy) = two_backends().await;
    let mut events = Events::open(&proxy).await;
    let (name, status) = events.next().await;
    assert_eq!(name, "status");
    assert_eq!(status["backends"].as_array().unwrap().len(), 2);
    assert_eq!(status["backends"][0]["url"], first.url());

    let url = proxy.url("/sdapi/v1/txt2img");
    let running = tokio::spawn(async move {
        client()
            .post(url)
            .header("content-type", "application/json")
            .body(txt2img(SD15, 30))
            .send()
            .await
            .unwrap()
            .status()
    });
    let decision = events.until("decision", |d| d["kind"] == "decision").await;
    assert_eq!(decision["route"], "txt2img");
    assert_eq!(decision["profile"], "sd15");
    let busy = events
        .until("status", |s| {
            s["backends"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["running"]["profile"] == "sd15")
        })
        .await;
    let backend = busy["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| !b["running"].is_null())
        .unwrap();
    assert_eq!(backend["running"]["work"], "generation");
    assert_eq!(running.await.unwrap(), StatusCode::OK);
    events
        .until("status", |s| {
            s["backends"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b["running"].is_null())
        })
        .await;
}

#[tokio::test]
async fn a_drained_backend_takes_no_new_work_until_resumed_and_actions_are_recorded() {
    let (first, second, proxy) = two_backends().await;
    let drained = client()
        .post(proxy.url("/proxy/backends/1/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(drained.status(), StatusCode::OK);
    let status = get_json(proxy.url("/proxy/status")).await;
    assert_eq!(status["backends"][1]["drained"], true);
    assert_eq!(status["backends"][0]["drained"], false);
    let action = status["decisions"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (
            action["kind"].as_str(),
            action["route"].as_str(),
            action["outcome"].as_str()
        ),
        (Some("action"), Some("drain"), Some("done"))
    );
    assert_eq!(action["backend"], second.url());

    // Two generations: both go to the first backend, the second waits for it.
    let sends = (0..2).map(|_| {
        client()
            .post(proxy.url("/sdapi/v1/txt2img"))
            .header("content-type", "application/json")
            .body(txt2img(SD15, 2))
            .send()
    });
    for response in futures_util::future::join_all(sends).await {
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(journal_of(&first, "generation").len(), 2);
    assert!(journal_of(&second, "generation").is_empty());

    let resumed = client()
        .post(proxy.url("/proxy/backends/1/resume"))
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), StatusCode::OK);
    assert_eq!(
        get_json(proxy.url("/proxy/status")).await["backends"][1]["drained"],
        false
    );

    // Unload: Forge frees the model, in the backend's turn; the next generation loads it.
    let unloaded = client()
        .post(proxy.url("/proxy/backends/0/unload"))
        .send()
        .await
        .unwrap();
    assert_eq!(unloaded.status(), StatusCode::OK);
    let requests = first.state().requests();
    assert!(
        requests
            .iter()
            .any(|r| r["path"] == "/sdapi/v1/unload-checkpoint" && r["method"] == "POST"),
        "{requests:?}"
    );

    // Unknown backends and actions are the proxy's 404s.
    let missing = client()
        .post(proxy.url("/proxy/backends/7/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["detail"], "forge-vram-proxy: no backend 7");
    let unknown = client()
        .post(proxy.url("/proxy/backends/0/explode"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn actions_need_an_admin_key_and_the_page_events_and_history_a_read_key() {
    let sim = sim().await;
    let keys = r#"
[[access.keys]]
name = "viewer"
key = "read-key-1"
role = "read"

[[access.keys]]
name = "ops"
key = "admin-key-1"
role = "admin"
"#;
    let proxy = Proxy::start(&sim.url(), keys).await;
    for path in ["/proxy/ui", "/proxy/history", "/proxy/status"] {
        let response = client()
            .get(proxy.url(path))
            .bearer_auth("read-key-1")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let page = client()
        .get(proxy.url("/proxy/ui"))
        .basic_auth("anyone", Some("read-key-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(page.text().await.unwrap().contains("forge-vram-proxy"));
    let anonymous = client().get(proxy.url("/proxy/ui")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(anonymous.headers().contains_key("www-authenticate"));

    let refused = client()
        .post(proxy.url("/proxy/backends/0/drain"))
        .bearer_auth("read-key-1")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let status: Value = get_json_as(proxy.url("/proxy/status"), "read-key-1").await;
    assert_eq!(
        status["you"],
        json!({"keys_configured": true, "key": "viewer", "role": "read", "admin": false})
    );
    assert_eq!(status["backends"][0]["drained"], false);
    let done = client()
        .post(proxy.url("/proxy/backends/0/drain"))
        .bearer_auth("admin-key-1")
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);

    let history: Value = get_json_as(proxy.url("/proxy/history"), "read-key-1").await;
    assert_eq!(history["every_s"], 10);
    let samples = history["samples"].as_array().unwrap();
    assert!(!samples.is_empty(), "a sample is taken at start");
    assert_eq!(samples[0]["backends"][0]["url"], sim.url());
}

#[tokio::test]
async fn a_queued_clients_progress_is_the_proxys_until_its_generation_runs() {
    let sim = sim_with(|c| c.time_scale = 0.3).await;
    let proxy = Proxy::start(&sim.url(), "").await;
    // Another client's long generation holds the one backend.
    let url = proxy.url("/sdapi/v1/txt2img");
    let theirs = tokio::spawn(async move {
        other_client()
            .post(url)
            .header("content-type", "application/json")
            .body(txt2img(SD15, 40))
            .send()
            .await
            .unwrap()
            .status()
    });
    let until = Instant::now() + Duration::from_secs(10);
    while get_json(proxy.url("/proxy/status")).await["backends"][0]["running"].is_null() {
        assert!(Instant::now() < until, "their generation never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Ours waits behind it.
    let url = proxy.url("/sdapi/v1/txt2img");
    let ours = tokio::spawn(async move {
        client()
            .post(url)
            .header("content-type", "application/json")
            .body(txt2img(SDXL, 30))
            .send()
            .await
            .unwrap()
            .status()
    });
    while get_json(proxy.url("/proxy/status")).await["backends"][0]["queue"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < until, "ours never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let queued = run_client_at("webuiapi_progress.py", proxy.addr.port(), &[]).await;
    assert_eq!(queued["progress"], 0.0);
    assert_eq!(queued["state"]["job"], "queued: 1 ahead");
    assert!(queued["eta_relative"].as_f64().unwrap() > 0.0, "{queued}");
    assert!(queued["current_image"].is_null());
    let raw = client()
        .get(proxy.url("/sdapi/v1/progress"))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.headers()["x-forge-proxy-queued"], "true");
    // The other client still sees its own job, from Forge.
    let theirs_now: Value = other_client()
        .get(proxy.url("/sdapi/v1/progress"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(theirs_now["state"]["job"], "queued: 1 ahead");
    // Forge's own answer: a job under way (-1 until its first pass knows the count).
    assert_ne!(theirs_now["state"]["job_count"], 0, "{theirs_now}");

    assert_eq!(theirs.await.unwrap(), StatusCode::OK);
    // Once ours runs, its polls go to Forge.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = run_client_at("webuiapi_progress.py", proxy.addr.port(), &[]).await;
        if seen["state"]["job_count"].as_i64().unwrap_or(0) != 0 {
            assert!(!seen["state"]["job"].as_str().unwrap().starts_with("queued"));
            break;
        }
        assert!(Instant::now() < until, "ours never ran: {seen}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ours.await.unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn each_decision_is_one_readable_log_line_with_its_fields() {
    let sim = sim().await;
    let proxy = crate::support::ProxyProcess::start(&["--backend", &sim.url()]);
    let response = client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .header("content-type", "application/json")
        .header("x-request-id", "req-log-1")
        .body(txt2img(SDXL, 2))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let inference = response.headers()["x-forge-proxy-inference-memory"]
        .to_str()
        .unwrap()
        .to_owned();
    let line = proxy
        .log_event("decision line", |event| {
            event["request_id"] == "req-log-1"
                && event["route"] == "txt2img"
                && event.get("profile").is_some()
        })
        .await;
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["profile"], "sdxl");
    assert_eq!(line["outcome"], "applied");
    assert_eq!(line["reason"], "changed");
    assert_eq!(line["inference_mib"].to_string(), inference);
    let message = line["message"].as_str().unwrap();
    // The checkpoint as Forge resolves it: its title.
    let title = crate::support::title_of(&sim, SDXL).await;
    let expected_start = format!(
        "txt2img req=req-log-1 profile=sdxl (checkpoint {title}) card {} MiB: inference {} -> {inference}, options sent (reload expected)",
        line["card_mib"], line["inference_before_mib"]
    );
    assert_eq!(message, expected_start);
}
