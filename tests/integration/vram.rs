//! VRAM-aware generations: what Forge ran with, read from the simulator's journal.

use http::StatusCode;
use serde_json::{json, Value};

use crate::support::{
    client, journal_of, sim_with, txt2img_with, FakeGpu, ProxyProcess, FLUX, SD15, SDXL,
};

async fn generate(proxy: &ProxyProcess, body: String) -> reqwest::Response {
    let response = client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("txt2img");
    assert_eq!(response.status(), StatusCode::OK);
    response
}

fn last_generation(sim: &forge_sim::SimServer) -> Value {
    journal_of(sim, "generation")
        .pop()
        .expect("a generation ran")
}

#[tokio::test]
async fn flux_and_sd15_get_the_seed_values_on_12_24_and_8_gib_cards() {
    for (card, flux, sd15) in [
        (12288, 4096, 10240),
        (24576, 12288, 22528),
        (8192, 4096, 6144),
    ] {
        let sim = sim_with(|c| c.vram_mib = card).await;
        let gpu = FakeGpu::new(card);
        let proxy = gpu.proxy(&sim.url(), &[]);

        let response = generate(&proxy, txt2img_with(FLUX)).await;
        let headers = response.headers().clone();
        let ran = last_generation(&sim);
        assert_eq!(ran["checkpoint"], FLUX);
        assert_eq!(
            ran["forge_inference_memory"], flux as f64,
            "Flux on {card} MiB: {ran}"
        );
        assert_eq!(ran["outcome"], "ok");
        assert_eq!(headers["x-forge-proxy-profile"], "flux");
        assert_eq!(
            headers["x-forge-proxy-inference-memory"],
            flux.to_string().as_str()
        );
        assert_eq!(
            headers["x-forge-proxy-gpu-weights"],
            (card - flux).to_string().as_str()
        );
        assert_eq!(headers["x-forge-proxy-options-applied"], "true");
        assert_eq!(headers["x-forge-proxy-vram-source"], "nvml");

        generate(&proxy, txt2img_with(SD15)).await;
        let ran = last_generation(&sim);
        assert_eq!(ran["checkpoint"], SD15);
        assert_eq!(
            ran["forge_inference_memory"], sd15 as f64,
            "SD 1.5 on {card} MiB: {ran}"
        );
    }
}

#[tokio::test]
async fn a_changed_live_reading_changes_the_next_value() {
    let sim = sim_with(|c| c.vram_mib = 24576).await;
    let gpu = FakeGpu::new(12288);
    let proxy = gpu.proxy(&sim.url(), &[]);
    generate(&proxy, txt2img_with(FLUX)).await;
    assert_eq!(last_generation(&sim)["forge_inference_memory"], 4096.0);
    gpu.set(24576, 600);
    generate(&proxy, txt2img_with(FLUX)).await;
    assert_eq!(last_generation(&sim)["forge_inference_memory"], 12288.0);
    gpu.set(8192, 600);
    generate(&proxy, txt2img_with(SD15)).await;
    assert_eq!(last_generation(&sim)["forge_inference_memory"], 6144.0);
}

#[tokio::test]
async fn nothing_to_change_sends_no_options_call() {
    let sim = sim_with(|_| {}).await;
    let gpu = FakeGpu::new(12288);
    let proxy = gpu.proxy(&sim.url(), &[]);
    generate(&proxy, txt2img_with(SDXL)).await;
    let calls = journal_of(&sim, "options")
        .into_iter()
        .filter(|e| e["source"] == "api")
        .count();
    assert_eq!(calls, 1);
    let response = generate(&proxy, txt2img_with(SDXL)).await;
    assert_eq!(response.headers()["x-forge-proxy-options-applied"], "false");
    assert_eq!(response.headers()["x-forge-proxy-inference-memory"], "5632");
    let calls = journal_of(&sim, "options")
        .into_iter()
        .filter(|e| e["source"] == "api")
        .count();
    assert_eq!(
        calls, 1,
        "the second SDXL generation needed no options call"
    );
    // A reading within the hysteresis (256 MiB) of the applied value changes nothing either.
    gpu.set(12288 + 200, 600);
    generate(&proxy, txt2img_with(SDXL)).await;
    let calls = journal_of(&sim, "options")
        .into_iter()
        .filter(|e| e["source"] == "api")
        .count();
    assert_eq!(calls, 1);
    assert_eq!(last_generation(&sim)["forge_inference_memory"], 5632.0);
}

#[tokio::test]
async fn options_call_carries_preset_and_matching_gpu_weights() {
    let sim = sim_with(|_| {}).await;
    let gpu = FakeGpu::new(12288);
    let proxy = gpu.proxy(&sim.url(), &[]);
    generate(&proxy, txt2img_with(FLUX)).await;
    let api: Vec<Value> = journal_of(&sim, "options")
        .into_iter()
        .filter(|e| e["source"] == "api")
        .collect();
    assert_eq!(api.len(), 1);
    assert_eq!(
        api[0]["changed"],
        json!({"forge_inference_memory": 4096.0, "flux_GPU_MB": 8192.0, "forge_preset": "flux"})
    );
}

#[tokio::test]
async fn flux_request_defaults_fill_only_what_the_client_left_out() {
    let sim = sim_with(|_| {}).await;
    let gpu = FakeGpu::new(12288);
    let proxy = gpu.proxy(&sim.url(), &[]);
    let body = json!({"prompt": "x", "steps": 2, "cfg_scale": 2.5,
                      "override_settings": {"sd_model_checkpoint": FLUX}});
    let answer: Value = generate(&proxy, body.to_string())
        .await
        .json()
        .await
        .unwrap();
    let parameters = &answer["parameters"];
    assert_eq!(parameters["cfg_scale"], 2.5);
    assert_eq!(parameters["distilled_cfg_scale"], 3.5);
    assert_eq!(parameters["scheduler"], "Simple");
    let body =
        json!({"prompt": "x", "steps": 2, "override_settings": {"sd_model_checkpoint": SD15}});
    let answer: Value = generate(&proxy, body.to_string())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["parameters"]["cfg_scale"], 7.0,
        "SD 1.5 keeps Forge's default"
    );
}
