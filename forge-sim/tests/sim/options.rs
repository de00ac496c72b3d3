//! POST /sdapi/v1/options: skipped unchanged values, the unknown-checkpoint
//! failure, the memory refresh and its reloads.

use serde_json::{json, Value};

use crate::{entries, fast, get, post, sim, small_txt2img};
use forge_sim::SimConfig;

#[tokio::test]
async fn unchanged_option_is_skipped_and_not_journaled() {
    let server = sim(fast()).await;
    let (status, body) = post(&server, "/sdapi/v1/options", json!({"jpeg_quality": 95})).await;
    assert_eq!((status.as_u16(), body), (200, Value::Null));
    post(&server, "/sdapi/v1/options", json!({"jpeg_quality": 95})).await;
    post(&server, "/sdapi/v1/options", json!({"jpeg_quality": 95.0})).await;
    let journal = server.state().journal();
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0]["source"], "api");
    assert_eq!(journal[0]["changed"], json!({"jpeg_quality": 95}));
    assert!(journal[0].get("gpu_setting").is_none());
}

#[tokio::test]
async fn unchanged_options_do_not_reload_the_model() {
    let server = sim(fast()).await;
    post(&server, "/sdapi/v1/txt2img", small_txt2img()).await;
    post(
        &server,
        "/sdapi/v1/options",
        json!({"sd_model_checkpoint": "v1-5-pruned-emaonly.safetensors", "forge_preset": "sd"}),
    )
    .await;
    post(&server, "/sdapi/v1/txt2img", small_txt2img()).await;
    let generations = entries(&server, "generation");
    assert_eq!(generations[0]["reloaded"], true, "first load");
    assert_eq!(generations[1]["reloaded"], false);
}

#[tokio::test]
async fn unknown_checkpoint_is_500_and_nothing_is_applied() {
    let server = sim(fast()).await;
    let (status, body) = post(
        &server,
        "/sdapi/v1/options",
        json!({"sd_model_checkpoint": "nope", "jpeg_quality": 90, "forge_inference_memory": 4096}),
    )
    .await;
    assert_eq!(status.as_u16(), 500);
    assert_eq!(
        body,
        json!({"error": "RuntimeError", "detail": "", "body": "", "message": "model 'nope' not found"})
    );
    let (_, options) = get(&server, "/sdapi/v1/options").await;
    assert_eq!(options["jpeg_quality"], json!(80.0));
    assert_eq!(options["forge_inference_memory"], json!(1024.0));
    assert!(server.state().journal().is_empty());
}

#[tokio::test]
async fn checkpoint_title_is_stored_as_sent_and_reloads() {
    let server = sim(fast()).await;
    let (_, models) = get(&server, "/sdapi/v1/sd-models").await;
    let sdxl = models
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model_name"] == "sd_xl_base_1.0")
        .unwrap()
        .clone();
    assert!(sdxl["title"]
        .as_str()
        .unwrap()
        .starts_with("sd_xl_base_1.0.safetensors ["));
    assert_eq!(sdxl["hash"].as_str().unwrap().len(), 10);

    post(&server, "/sdapi/v1/txt2img", small_txt2img()).await;
    post(
        &server,
        "/sdapi/v1/options",
        json!({"sd_model_checkpoint": sdxl["title"]}),
    )
    .await;
    // Stored as sent, as Forge's `checkpoint_change` does.
    let (_, options) = get(&server, "/sdapi/v1/options").await;
    assert_eq!(options["sd_model_checkpoint"], sdxl["title"]);
    assert_eq!(options["sd_checkpoint_hash"].as_str().unwrap().len(), 64);

    post(&server, "/sdapi/v1/txt2img", small_txt2img()).await;
    let last = entries(&server, "generation").pop().unwrap();
    assert_eq!(last["checkpoint"], "sd_xl_base_1.0.safetensors");
    assert_eq!(last["family"], "sdxl");
    assert_eq!(last["reloaded"], true);
    assert_eq!(
        server.state().options()["sd_checkpoint_hash"],
        sdxl["sha256"]
    );
}

#[tokio::test]
async fn memory_values_come_back_as_floats() {
    let server = sim(fast()).await;
    post(
        &server,
        "/sdapi/v1/options",
        json!({"forge_inference_memory": 4096}),
    )
    .await;
    let (_, options) = get(&server, "/sdapi/v1/options").await;
    assert!(options["forge_inference_memory"].is_f64());
    assert_eq!(options["forge_inference_memory"], json!(4096.0));
}

#[tokio::test]
async fn inference_256_on_12_gib_is_a_low_vram_warning_and_1024_a_gpu_setting() {
    let server = sim(fast()).await;
    post(
        &server,
        "/sdapi/v1/options",
        json!({"forge_inference_memory": 256}),
    )
    .await;
    post(
        &server,
        "/sdapi/v1/options",
        json!({"forge_inference_memory": 1024}),
    )
    .await;
    let journal = server.state().journal();
    assert_eq!(journal[0]["low_vram"], true);
    assert_eq!(
        journal[0]["gpu_setting"],
        "[Low VRAM Warning] You just set Forge to use 100% GPU memory (12032.00 MB) to load model weights."
    );
    assert_eq!(journal[1]["low_vram"], false);
    assert_eq!(
        journal[1]["gpu_setting"],
        "[GPU Setting] You will use 91.67% GPU memory (11264.00 MB) to load weights, and use 8.33% GPU memory (1024.00 MB) to do matrix computation."
    );
}

#[tokio::test]
async fn low_vram_threshold_is_five_percent_of_a_small_card() {
    let server = sim(SimConfig {
        vram_mib: 4096,
        ..fast()
    })
    .await;
    // min(512, 4096 * 0.05) = 204.8
    post(
        &server,
        "/sdapi/v1/options",
        json!({"forge_inference_memory": 204}),
    )
    .await;
    post(
        &server,
        "/sdapi/v1/options",
        json!({"forge_inference_memory": 205}),
    )
    .await;
    let journal = server.state().journal();
    assert_eq!(journal[0]["low_vram"], true);
    assert_eq!(journal[1]["low_vram"], false);
}

#[tokio::test]
async fn memory_change_reloads_but_posting_the_same_value_again_does_not() {
    let server = sim(fast()).await;
    post(&server, "/sdapi/v1/txt2img", small_txt2img()).await;
    post(&server, "/sdapi/v1/txt2img", small_txt2img()).await;
    post(
        &server,
        "/sdapi/v1/options",
        json!({"forge_inference_memory": 2048}),
    )
    .await;
    post(&server, "/sdapi/v1/txt2img", small_txt2img()).await;
    // Same value: skipped (`if v == shared.opts.data.get(k): continue`), no refresh.
    post(
        &server,
        "/sdapi/v1/options",
        json!({"forge_inference_memory": 2048}),
    )
    .await;
    post(&server, "/sdapi/v1/txt2img", small_txt2img()).await;

    let reloads: Vec<Value> = entries(&server, "generation")
        .iter()
        .map(|g| g["reloaded"].clone())
        .collect();
    assert_eq!(reloads, [true, false, true, false]);
    let loads: Vec<Value> = entries(&server, "generation")
        .iter()
        .map(|g| g["load"].clone())
        .collect();
    assert_eq!(loads, ["disk", "none", "ram", "none"]);
    let options = entries(&server, "options");
    assert_eq!(options.len(), 1, "the second post is not journaled");
    assert!(options[0]["gpu_setting"]
        .as_str()
        .unwrap()
        .starts_with("[GPU Setting]"));
    let last = entries(&server, "generation").pop().unwrap();
    assert_eq!(last["forge_inference_memory"], json!(2048.0));
    assert_eq!(last["gpu_weights_mib"], json!(10240.0));
}

#[tokio::test]
async fn unet_dtype_alone_waits_for_the_next_loading_refresh() {
    let server = sim(fast()).await;
    post(&server, "/sdapi/v1/txt2img", small_txt2img()).await;
    // The option has no `onchange`: stored, not taken.
    post(
        &server,
        "/sdapi/v1/options",
        json!({"forge_unet_storage_dtype": "bnb-nf4"}),
    )
    .await;
    post(&server, "/sdapi/v1/txt2img", small_txt2img()).await;
    assert_eq!(entries(&server, "generation")[1]["load"], "none");
    // Posted with a checkpoint (or memory) change, it is taken: the file is read again.
    post(
        &server,
        "/sdapi/v1/options",
        json!({"sd_model_checkpoint": "sd_xl_base_1.0.safetensors", "forge_unet_storage_dtype": "float8-e4m3fn"}),
    )
    .await;
    post(&server, "/sdapi/v1/txt2img", small_txt2img()).await;
    assert_eq!(entries(&server, "generation")[2]["load"], "disk");
}

#[tokio::test]
async fn unknown_option_key_is_a_key_error() {
    let server = sim(fast()).await;
    let (status, body) = post(&server, "/sdapi/v1/options", json!({"no_such_option": 1})).await;
    assert_eq!(status.as_u16(), 500);
    assert_eq!(
        body,
        json!({"error": "KeyError", "detail": "", "body": "", "message": "'no_such_option'"})
    );
}

#[tokio::test]
async fn options_look_like_forges() {
    let server = sim(fast()).await;
    let (_, options) = get(&server, "/sdapi/v1/options").await;
    for (key, value) in [
        (
            "sd_model_checkpoint",
            json!("v1-5-pruned-emaonly.safetensors"),
        ),
        ("sd_vae", json!("Automatic")),
        ("CLIP_stop_at_last_layers", json!(1.0)),
        ("samples_format", json!("png")),
        ("forge_preset", json!("sd")),
        ("forge_inference_memory", json!(1024.0)),
        ("forge_additional_modules", json!([])),
        ("forge_unet_storage_dtype", json!("Automatic")),
        ("forge_async_loading", json!("Queue")),
        ("forge_pin_shared_memory", json!("CPU")),
        ("flux_GPU_MB", json!(11264.0)),
        ("xl_GPU_MB", json!(11264.0)),
    ] {
        assert_eq!(options[key], value, "{key}");
    }
    assert_eq!(options.as_object().unwrap().len(), 331);
}

#[tokio::test]
async fn a_file_added_to_the_folder_is_a_checkpoint_after_refresh_checkpoints() {
    let server = sim(fast()).await;
    let added = reqwest::Client::new()
        .post(format!("{}/sim/checkpoints", server.url()))
        .body("new/model-xl.safetensors:sdxl:6000")
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 200);
    let listed = |models: &Value| {
        models
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["model_name"] == "new_model-xl")
    };
    let (_, models) = get(&server, "/sdapi/v1/sd-models").await;
    assert!(!listed(&models), "not before the refresh");
    let (status, _) = post(
        &server,
        "/sdapi/v1/options",
        json!({"sd_model_checkpoint": "model-xl"}),
    )
    .await;
    assert_eq!(status.as_u16(), 500);

    let (status, body) = post(&server, "/sdapi/v1/refresh-checkpoints", json!({})).await;
    assert_eq!((status.as_u16(), body), (200, Value::Null));
    let (_, models) = get(&server, "/sdapi/v1/sd-models").await;
    assert!(listed(&models));
    let (status, _) = post(
        &server,
        "/sdapi/v1/options",
        json!({"sd_model_checkpoint": "model-xl"}),
    )
    .await;
    assert_eq!(status.as_u16(), 200);
    post(&server, "/sdapi/v1/txt2img", small_txt2img()).await;
    let ran = entries(&server, "generation").pop().unwrap();
    assert_eq!(ran["checkpoint"], "new/model-xl.safetensors");
    assert_eq!(ran["weights_mib"], 6000);
}
