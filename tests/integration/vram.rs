//! VRAM-aware generations: what Forge ran with, read from the simulator's journal.

use http::StatusCode;
use serde_json::{json, Value};

use crate::support::{
    client, get_json, journal_of, sim_with, txt2img_with, FakeGpu, ProxyProcess, XorShift, FLUX,
    SD15, SDXL,
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

fn expected_memory(family: &str) -> f64 {
    match family {
        "flux" => 4096.0,
        "sdxl" => 5632.0,
        "sd15" => 10240.0,
        other => panic!("unexpected family {other}"),
    }
}

#[tokio::test]
async fn two_hundred_mixed_generations_from_16_clients_each_run_with_their_memory() {
    let sim = sim_with(|_| {}).await;
    let gpu = FakeGpu::new(12288);
    let proxy = gpu.proxy(&sim.url(), &[]);
    let url = proxy.url("/sdapi/v1/txt2img");
    let mut rng = XorShift(0x5eed_1234_abcd_0001);
    let requests: Vec<&str> = (0..200)
        .map(|_| [FLUX, SDXL, SD15][(rng.next() % 3) as usize])
        .collect();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(requests));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let queue = queue.clone();
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let mut images = 0;
            loop {
                let Some(checkpoint) = queue.lock().unwrap().pop() else {
                    break;
                };
                let response = client()
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(txt2img_with(checkpoint))
                    .send()
                    .await
                    .expect("txt2img");
                assert_eq!(response.status(), StatusCode::OK);
                let answer: Value = response.json().await.unwrap();
                images += answer["images"].as_array().map_or(0, Vec::len);
            }
            images
        }));
    }
    let mut images = 0;
    for c in clients {
        images += c.await.unwrap();
    }
    assert_eq!(images, 200, "every client got its images");

    let journal = sim.state().journal();
    let generations: Vec<&Value> = journal
        .iter()
        .filter(|e| e["kind"] == "generation")
        .collect();
    assert_eq!(generations.len(), 200);
    for g in &generations {
        let family = g["family"].as_str().unwrap();
        assert_eq!(g["forge_inference_memory"], expected_memory(family), "{g}");
        assert_eq!(g["outcome"], "ok");
    }
    // One options call per profile change, in the order Forge ran the generations (the
    // first generation changes from Forge's default of 1024).
    let families: Vec<&str> = generations
        .iter()
        .map(|g| g["family"].as_str().unwrap())
        .collect();
    let changes = 1 + families.windows(2).filter(|w| w[0] != w[1]).count();
    let api_calls: Vec<&Value> = journal
        .iter()
        .filter(|e| e["kind"] == "options" && e["source"] == "api")
        .collect();
    assert_eq!(api_calls.len(), changes);
    // And each call came right before the first generation of its profile.
    let mut expecting = None;
    for entry in &journal {
        match (entry["kind"].as_str(), entry["source"].as_str()) {
            (Some("options"), Some("api")) => {
                expecting = entry["changed"]["forge_inference_memory"].as_f64();
            }
            (Some("generation"), _) => {
                if let Some(memory) = expecting.take() {
                    assert_eq!(entry["forge_inference_memory"], memory, "{entry}");
                }
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn drift_behind_the_proxys_back_is_corrected_before_the_next_generation() {
    let sim = sim_with(|_| {}).await;
    let gpu = FakeGpu::new(12288);
    let proxy = gpu.proxy(&sim.url(), &[]);
    generate(&proxy, txt2img_with(SD15)).await;
    assert_eq!(last_generation(&sim)["forge_inference_memory"], 10240.0);
    // Someone (Forge's UI on page reload, another tool) resets it directly.
    let direct = client()
        .post(format!("{}/sdapi/v1/options", sim.url()))
        .json(&json!({"forge_inference_memory": 1024}))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), StatusCode::OK);
    let response = generate(&proxy, txt2img_with(SD15)).await;
    assert_eq!(response.headers()["x-forge-proxy-options-applied"], "true");
    assert_eq!(last_generation(&sim)["forge_inference_memory"], 10240.0);
    let api: Vec<Value> = journal_of(&sim, "options")
        .into_iter()
        .filter(|e| e["source"] == "api")
        .collect();
    assert_eq!(
        api.last().unwrap()["changed"]["forge_inference_memory"],
        10240.0
    );
}

#[tokio::test]
async fn open_webui_style_whole_dict_post_gets_the_new_profiles_memory() {
    let sim = sim_with(|_| {}).await;
    let gpu = FakeGpu::new(12288);
    let proxy = gpu.proxy(&sim.url(), &[]);
    generate(&proxy, txt2img_with(SD15)).await; // the backend now holds 10240
    let models: Value = get_json(proxy.url("/sdapi/v1/sd-models")).await;
    let flux_title = models
        .as_array()
        .unwrap()
        .iter()
        .find_map(|m| m["title"].as_str().filter(|t| t.starts_with("flux")))
        .unwrap()
        .to_owned();
    let mut options: Value = get_json(proxy.url("/sdapi/v1/options")).await;
    assert_eq!(
        options["forge_inference_memory"], 10240.0,
        "the stale value rides along"
    );
    options["sd_model_checkpoint"] = json!(flux_title);
    let before = sim.state().journal().len();
    let posted = client()
        .post(proxy.url("/sdapi/v1/options"))
        .json(&options)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::OK);
    let body = json!({"prompt": "a lighthouse", "steps": 2});
    generate(&proxy, body.to_string()).await;
    let journal = sim.state().journal();
    let after = &journal[before..];
    let changes: Vec<&Value> = after.iter().filter(|e| e["kind"] == "options").collect();
    assert_eq!(changes.len(), 1, "{after:?}");
    // Forge stores the checkpoint as the alias posted (here the title).
    assert_eq!(
        changes[0]["changed"]["sd_model_checkpoint"],
        json!(flux_title)
    );
    assert_eq!(changes[0]["changed"]["forge_inference_memory"], 4096.0);
    let ran = last_generation(&sim);
    assert_eq!(
        (
            ran["checkpoint"].as_str(),
            ran["forge_inference_memory"].as_f64()
        ),
        (Some(FLUX), Some(4096.0))
    );
    assert!(
        !after
            .iter()
            .any(|e| e["changed"]["forge_inference_memory"] == 10240.0),
        "the echoed value was never applied"
    );
}

#[tokio::test]
async fn nvml_missing_falls_back_to_the_backends_memory_and_status_says_why() {
    let sim = sim_with(|_| {}).await;
    let proxy = ProxyProcess::start(&[
        "--backend",
        &sim.url(),
        "--nvml-library",
        "/nonexistent/libnvidia-ml.so.1",
    ]);
    let response = generate(&proxy, txt2img_with(FLUX)).await;
    assert_eq!(response.headers()["x-forge-proxy-vram-source"], "backend");
    assert_eq!(last_generation(&sim)["forge_inference_memory"], 4096.0);
    let status: Value = get_json(proxy.url("/proxy/status")).await;
    let reason = "cannot load the NVML library /nonexistent/libnvidia-ml.so.1: cannot open shared object file: No such file or directory";
    assert_eq!(status["nvml"], json!({"available": false, "error": reason}));
    assert_eq!(status["backends"][0]["vram_source"], "backend");
    assert_eq!(
        status["backends"][0]["vram_source_why"],
        format!("NVML unavailable: {reason}")
    );
    assert_eq!(status["backends"][0]["last_reading"]["total_mib"], 12288);
    // Said once at start-up, with the reason.
    let log = proxy.log_text();
    assert_eq!(log.matches("NVML is not available").count(), 1, "{log}");
    assert!(log.contains(reason));
}

#[tokio::test]
async fn without_any_vram_reading_fixed_values_still_apply_and_the_header_says_none() {
    // A backend without a GPU answers /sdapi/v1/memory with "cuda": {"error": ...}.
    let sim = sim_with(|c| c.vram_mib = 0).await;
    let config = format!(
        "nvml_library = \"/nonexistent/libnvidia-ml.so.1\"\n\n[[backends]]\nurl = \"{}\"\n\n\
         [[profiles]]\nname = \"sdxl\"\npatterns = [\"*xl*\"]\ninference_memory_mib = 3000\n",
        sim.url()
    );
    let proxy = crate::support::Proxy::start_toml(&config).await;
    let response = client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .header("content-type", "application/json")
        .body(txt2img_with(SD15))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-forge-proxy-vram-source"], "none");
    assert_eq!(response.headers()["x-forge-proxy-options-applied"], "false");
    assert_eq!(
        last_generation(&sim)["forge_inference_memory"],
        1024.0,
        "auto policy: unchanged"
    );
    let response = client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .header("content-type", "application/json")
        .body(txt2img_with(SDXL))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-forge-proxy-vram-source"], "none");
    assert_eq!(response.headers()["x-forge-proxy-inference-memory"], "3000");
    assert_eq!(
        last_generation(&sim)["forge_inference_memory"],
        3000.0,
        "the fixed value applies"
    );
    let status: Value = get_json(proxy.url("/proxy/status")).await;
    let error = status["backends"][0]["reading_error"].as_str().unwrap();
    assert_eq!(
        error,
        "GET /sdapi/v1/memory: unexpected answer: no CUDA device (unavailable)"
    );
}

#[tokio::test]
async fn with_verification_off_the_proxy_trusts_what_it_applied() {
    let sim = sim_with(|_| {}).await;
    let gpu = FakeGpu::new(12288);
    let dir = std::env::temp_dir().join(format!("fvp-verify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    std::fs::write(&file, "[memory]\nverify_before_generation = false\n").unwrap();
    let proxy = gpu.proxy(&sim.url(), &["--config", file.to_str().unwrap()]);
    generate(&proxy, txt2img_with(SD15)).await;
    client()
        .post(format!("{}/sdapi/v1/options", sim.url()))
        .json(&json!({"forge_inference_memory": 2048}))
        .send()
        .await
        .unwrap();
    let response = generate(&proxy, txt2img_with(SD15)).await;
    assert_eq!(response.headers()["x-forge-proxy-options-applied"], "false");
    assert_eq!(
        last_generation(&sim)["forge_inference_memory"],
        2048.0,
        "not re-read: the change behind its back went unnoticed, as configured"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn the_gpu_can_be_chosen_by_uuid() {
    let sim = sim_with(|_| {}).await;
    let gpu = FakeGpu::new(24576);
    // The chosen card second, behind a 12 GiB one: index 0 would give Flux 4096.
    let devices = serde_json::json!([
        {"uuid": "GPU-00000000-0000-4000-8000-ffffffffffff", "name": "Simulated RTX",
         "total_mib": 12288, "used_mib": 600},
        {"uuid": gpu.uuid, "name": "Simulated RTX", "total_mib": 24576, "used_mib": 600},
    ]);
    std::fs::write(&gpu.path, devices.to_string()).unwrap();
    let dir = std::env::temp_dir().join(format!("fvp-uuid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    let config = format!(
        "[[backends]]\nurl = \"{}\"\ngpu = \"{}\"\n",
        sim.url(),
        gpu.uuid
    );
    std::fs::write(&file, config).unwrap();
    let library = crate::support::fake_nvml_library();
    let path = gpu.path.to_str().unwrap().to_owned();
    let proxy = ProxyProcess::start_with_env(
        &[
            "--config",
            file.to_str().unwrap(),
            "--nvml-library",
            library.to_str().unwrap(),
        ],
        &[("FAKE_NVML_DEVICES", &path)],
    );
    let response = generate(&proxy, txt2img_with(FLUX)).await;
    assert_eq!(response.headers()["x-forge-proxy-vram-source"], "nvml");
    assert_eq!(last_generation(&sim)["forge_inference_memory"], 12288.0);
    let status: Value = get_json(proxy.url("/proxy/status")).await;
    assert_eq!(status["backends"][0]["gpu"], gpu.uuid.as_str());
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn pass_through_is_never_held_by_a_running_generation() {
    // Slow enough that the generation (a Flux load and sampling) takes over a second.
    let sim = sim_with(|c| c.time_scale = 0.05).await;
    let gpu = FakeGpu::new(12288);
    let proxy = gpu.proxy(&sim.url(), &[]);
    let url = proxy.url("/sdapi/v1/txt2img");
    let generation = tokio::spawn(async move {
        client()
            .post(url)
            .header("content-type", "application/json")
            .body(txt2img_with(FLUX))
            .send()
            .await
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let started = std::time::Instant::now();
        let progress: Value = get_json(proxy.url("/sdapi/v1/progress")).await;
        let took = started.elapsed();
        if progress["state"]["job_count"].as_u64().unwrap_or(0) > 0 {
            assert!(
                took < std::time::Duration::from_millis(500),
                "progress poll took {took:?}"
            );
            let options = client()
                .get(proxy.url("/sdapi/v1/options"))
                .send()
                .await
                .unwrap();
            assert_eq!(options.status(), StatusCode::OK);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the generation never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!generation.is_finished(), "polled while the generation ran");
    let response = generation.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_client_reposting_the_current_memory_value_costs_no_reload() {
    let sim = sim_with(|_| {}).await;
    let gpu = FakeGpu::new(12288);
    let proxy = gpu.proxy(&sim.url(), &[]);
    let plain = json!({"prompt": "a lighthouse", "steps": 2}).to_string();
    generate(&proxy, plain.clone()).await;
    assert_eq!(last_generation(&sim)["forge_inference_memory"], 10240.0);
    let before = sim.state().journal().len();

    // What the article's recipe does before every request: post the value Forge has.
    let posted = client()
        .post(proxy.url("/sdapi/v1/options"))
        .json(&json!({"forge_inference_memory": 10240}))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::OK);
    generate(&proxy, plain).await;

    let journal = sim.state().journal();
    let after = &journal[before..];
    assert!(
        after.iter().all(|e| e["kind"] == "generation"),
        "Forge skipped the unchanged value: {after:?}"
    );
    let ran = last_generation(&sim);
    assert_eq!(
        (ran["load"].as_str(), ran["reloaded"].as_bool()),
        (Some("none"), Some(false)),
        "{ran}"
    );
}
