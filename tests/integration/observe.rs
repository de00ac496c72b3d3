//! The proxy's own views: the plan endpoint, the status page, Prometheus metrics.

use http::StatusCode;
use serde_json::{json, Value};

use crate::support::{client, get_json, journal_of, sim, txt2img_with, Proxy, FLUX};

#[tokio::test]
async fn plan_answers_the_decision_without_changing_forge() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    let response = client()
        .post(proxy.url("/proxy/plan/txt2img"))
        .json(
            &json!({"prompt": "x", "width": 1024, "height": 1024, "batch_size": 2,
                      "override_settings": {"sd_model_checkpoint": FLUX}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    let plan = &answer["plan"];
    assert_eq!(plan["profile"], "flux");
    // The name as Forge resolves it: the checkpoint's title.
    let title = crate::support::title_of(&sim, FLUX).await;
    assert_eq!(
        plan["why_profile"],
        json!({"source": "override_checkpoint", "value": title})
    );
    // 2 MP: 1 MP beyond the reference, 1536 MiB more reserve than the 4096 floor.
    assert_eq!(plan["computed"]["reserve_mib"], 5632);
    assert_eq!(plan["inference_memory_mib"], 5632);
    assert_eq!(plan["gpu_weights_mib"], 6656);
    assert_eq!(
        plan["options"],
        json!({"forge_inference_memory": 5632, "flux_GPU_MB": 6656, "forge_preset": "flux"})
    );
    assert_eq!(
        plan["added_fields"],
        json!({"cfg_scale": 1.0, "distilled_cfg_scale": 3.5, "scheduler": "Simple"})
    );
    assert_eq!(plan["outcome"], "applied");
    assert_eq!(answer["vram_source"], "backend");
    assert_eq!(answer["reading"]["total_mib"], 12288);
    assert!(
        sim.state().journal().is_empty(),
        "nothing changed on Forge: {:?}",
        sim.state().journal()
    );
    let unknown = client()
        .post(proxy.url("/proxy/plan/extras"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn status_shows_backend_reading_profile_memory_and_decisions() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    let response = client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .header("content-type", "application/json")
        .header("x-request-id", "status-1")
        .body(txt2img_with(FLUX))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let status: Value = get_json(proxy.url("/proxy/status")).await;
    let backend = &status["backends"][0];
    assert_eq!(backend["url"], sim.url());
    assert_eq!(backend["vram_source"], "backend");
    assert_eq!(
        backend["vram_source_why"],
        "configured: vram_source = \"backend\""
    );
    assert_eq!(backend["last_reading"]["total_mib"], 12288);
    assert_eq!(backend["profile"], "flux");
    assert_eq!(backend["inference_memory_mib"], 4096);
    assert_eq!(
        backend["checkpoint"], "v1-5-pruned-emaonly.safetensors",
        "Forge restored it after the override"
    );
    assert_eq!(backend["generation_running"], false);
    assert_eq!(backend["queue_length"], 0);
    let decisions = status["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 1);
    let decision = &decisions[0];
    assert_eq!(decision["request_id"], "status-1");
    assert_eq!(decision["route"], "txt2img");
    assert_eq!(decision["profile"], "flux");
    assert_eq!(decision["why_profile"]["source"], "override_checkpoint");
    assert_eq!(decision["computed"]["inference_mib"], 4096);
    assert_eq!(decision["outcome"], "applied");
    assert_eq!(decision["reason"], "changed");
    assert_eq!(decision["options_sent"]["forge_inference_memory"], 4096);
    assert_eq!(journal_of(&sim, "generation").len(), 1);
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_with_the_expected_samples() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    for checkpoint in [FLUX, FLUX, "v1-5-pruned-emaonly.safetensors"] {
        let response = client()
            .post(proxy.url("/sdapi/v1/txt2img"))
            .header("content-type", "application/json")
            .body(txt2img_with(checkpoint))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    client()
        .get(proxy.url("/sdapi/v1/progress"))
        .send()
        .await
        .unwrap();
    let response = client()
        .get(proxy.url("/proxy/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let found: Vec<&prometheus_parse::Sample> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?} in:\n{text}");
        match found[0].value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: {other:?}"),
        }
    };
    assert_eq!(
        value(
            "forge_proxy_requests_total",
            &[("route", "txt2img"), ("status", "200")]
        ),
        3.0
    );
    assert_eq!(
        value(
            "forge_proxy_requests_total",
            &[("route", "pass_through"), ("status", "200")]
        ),
        1.0
    );
    let backend = sim.url();
    assert_eq!(
        value(
            "forge_proxy_options_calls_total",
            &[
                ("backend", &backend),
                ("outcome", "applied"),
                ("reason", "changed")
            ]
        ),
        2.0
    );
    assert_eq!(
        value(
            "forge_proxy_options_calls_total",
            &[
                ("backend", &backend),
                ("outcome", "skipped"),
                ("reason", "same")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            "forge_proxy_vram_total_mib",
            &[("gpu", "0"), ("source", "backend")]
        ),
        12288.0
    );
    assert_eq!(
        value("forge_proxy_inference_memory_mib", &[("backend", &backend)]),
        10240.0
    );
    assert_eq!(
        value(
            "forge_proxy_profile_switches_total",
            &[("backend", &backend), ("from", "flux"), ("to", "sd15")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "forge_proxy_generation_duration_seconds_count",
            &[("backend", &backend), ("profile", "flux")]
        ),
        2.0
    );
    assert_eq!(
        value(
            "forge_proxy_queue_wait_seconds_count",
            &[("backend", &backend)]
        ),
        3.0
    );
    assert_eq!(
        value("forge_proxy_queue_length", &[("backend", &backend)]),
        0.0
    );
    assert_eq!(value("forge_proxy_retries_total", &[]), 0.0);
}
