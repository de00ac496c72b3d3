//! txt2img / img2img: validation, the queue, override_settings, memory
//! outcomes, progress, interrupt and skip, and the images themselves.

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::{entries, fast, get, post, same, sim, small_txt2img};
use forge_sim::{SimConfig, SimServer};

async fn post_raw(server: &SimServer, path: &str, body: &'static str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", server.url()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn wrong_field_type_is_fastapis_422() {
    let server = sim(fast()).await;
    let (status, body) = post(
        &server,
        "/sdapi/v1/txt2img",
        json!({"steps": "many", "width": "768"}),
    )
    .await;
    assert_eq!(status.as_u16(), 422);
    assert_eq!(
        body,
        json!({"detail": [{"type": "int_parsing", "loc": ["body", "steps"],
            "msg": "Input should be a valid integer, unable to parse string as an integer", "input": "many",
            "url": "https://errors.pydantic.dev/2.8/v/int_parsing"}]})
    );
    assert!(server.state().journal().is_empty());
}

#[tokio::test]
async fn body_that_is_not_json_is_json_invalid() {
    let server = sim(fast()).await;
    let (status, body) = post_raw(&server, "/sdapi/v1/txt2img", "not json").await;
    assert_eq!(status, 422);
    assert_eq!(
        body,
        json!({"detail": [{"type": "json_invalid", "loc": ["body", 0], "msg": "JSON decode error",
            "input": {}, "ctx": {"error": "Expecting value"}}]})
    );
}

#[tokio::test]
async fn body_that_is_not_an_object_is_model_attributes_type() {
    let server = sim(fast()).await;
    let (status, body) = post_raw(&server, "/sdapi/v1/txt2img", "[1, 2]").await;
    assert_eq!(status, 422);
    assert_eq!(
        body,
        json!({"detail": [{"type": "model_attributes_type", "loc": ["body"],
            "msg": "Input should be a valid dictionary or object to extract fields from", "input": [1, 2],
            "url": "https://errors.pydantic.dev/2.8/v/model_attributes_type"}]})
    );
    let (status, body) = post_raw(&server, "/sdapi/v1/options", "[1, 2]").await;
    assert_eq!(status, 422);
    assert_eq!(
        body,
        json!({"detail": [{"type": "dict_type", "loc": ["body"],
            "msg": "Input should be a valid dictionary", "input": [1, 2],
            "url": "https://errors.pydantic.dev/2.8/v/dict_type"}]})
    );
}

#[tokio::test]
async fn img2img_without_init_images_is_404() {
    let server = sim(fast()).await;
    for body in [json!({}), json!({"init_images": null})] {
        let (status, answer) = post(&server, "/sdapi/v1/img2img", body).await;
        assert_eq!(status.as_u16(), 404);
        assert_eq!(answer, json!({"detail": "Init image not found"}));
    }
    let (status, answer) = post(
        &server,
        "/sdapi/v1/img2img",
        json!({"init_images": ["aGVsbG8="]}),
    )
    .await;
    assert_eq!(status.as_u16(), 500);
    assert_eq!(answer, json!({"detail": "Invalid encoded image"}));
    assert!(server.state().journal().is_empty());
}

#[tokio::test]
async fn img2img_with_a_png_returns_an_image() {
    let server = sim(fast()).await;
    let (_, txt) = post(&server, "/sdapi/v1/txt2img", small_txt2img()).await;
    let image = txt["images"][0].clone();
    let (status, answer) = post(
        &server,
        "/sdapi/v1/img2img",
        json!({"init_images": [image], "steps": 10}),
    )
    .await;
    assert_eq!(status.as_u16(), 200);
    assert_eq!(answer["images"].as_array().unwrap().len(), 1);
    assert_eq!(answer["parameters"]["init_images"], Value::Null);
    assert_eq!(entries(&server, "generation")[1]["route"], "img2img");
}

#[tokio::test]
async fn images_are_pngs_of_the_requested_size_and_about_image_bytes() {
    let server = sim(SimConfig {
        image_bytes: 50_000,
        ..fast()
    })
    .await;
    let (status, answer) = post(
        &server,
        "/sdapi/v1/txt2img",
        json!({"width": 512, "height": 768, "steps": 2, "batch_size": 2, "n_iter": 2}),
    )
    .await;
    assert_eq!(status.as_u16(), 200);
    let images = answer["images"].as_array().unwrap();
    assert_eq!(images.len(), 4);
    for image in images {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(image.as_str().unwrap())
            .unwrap();
        let reader = png::Decoder::new(bytes.as_slice()).read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (512, 768));
        assert!(
            (bytes.len() as f64 - 50_000.0).abs() < 2_500.0,
            "{} bytes",
            bytes.len()
        );
    }
    assert_eq!(answer["parameters"]["steps"], 2);
    assert_eq!(answer["parameters"]["cfg_scale"], json!(7.0));
    let info: Value = serde_json::from_str(answer["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["sd_model_name"], "v1-5-pruned-emaonly");
    assert_eq!(info["all_seeds"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn send_images_false_answers_without_images() {
    let server = sim(fast()).await;
    let (_, answer) = post(
        &server,
        "/sdapi/v1/txt2img",
        json!({"steps": 2, "send_images": false}),
    )
    .await;
    assert_eq!(answer["images"], json!([]));
}

#[tokio::test]
async fn generations_run_one_at_a_time() {
    let server = sim(SimConfig {
        time_scale: 0.01,
        ..fast()
    })
    .await;
    let body = json!({"steps": 20, "width": 512, "height": 512});
    let (a, b, c) = tokio::join!(
        post(&server, "/sdapi/v1/txt2img", body.clone()),
        post(&server, "/sdapi/v1/txt2img", body.clone()),
        post(&server, "/sdapi/v1/txt2img", body.clone()),
    );
    assert!(a.0.is_success() && b.0.is_success() && c.0.is_success());
    let mut spans: Vec<(f64, f64)> = entries(&server, "generation")
        .iter()
        .map(|g| {
            (
                g["started_ms"].as_f64().unwrap(),
                g["ended_ms"].as_f64().unwrap(),
            )
        })
        .collect();
    spans.sort_by(|x, y| x.0.total_cmp(&y.0));
    assert_eq!(spans.len(), 3);
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "overlap: {pair:?}");
    }
}

#[tokio::test]
async fn options_do_not_wait_for_a_running_generation() {
    let server = sim(SimConfig {
        time_scale: 0.05,
        ..fast()
    })
    .await;
    let generation = post(&server, "/sdapi/v1/txt2img", json!({"steps": 100}));
    let options = async {
        wait_for_sampling(&server).await;
        let posted = post(&server, "/sdapi/v1/options", json!({"jpeg_quality": 70})).await;
        (posted, server.state().journal().len())
    };
    let (_, ((status, _), journal_len)) = tokio::join!(generation, options);
    assert!(status.is_success());
    // The options change was journaled while the generation still ran.
    assert_eq!(journal_len, 1);
    let journal = server.state().journal();
    assert_eq!(journal[0]["kind"], "options");
    assert_eq!(journal[1]["kind"], "generation");
}

#[tokio::test]
async fn an_override_of_a_key_never_stored_is_kept_afterwards() {
    let server = sim(fast()).await;
    let mut body = small_txt2img();
    body["override_settings"] = json!({"jpeg_quality": 50});
    post(&server, "/sdapi/v1/txt2img", body).await;
    // `stored_opts` in `processing.process_images` skips keys not in `opts.data`.
    let (_, after) = get(&server, "/sdapi/v1/options").await;
    assert_eq!(after["jpeg_quality"], json!(50.0));
}

#[tokio::test]
async fn override_settings_apply_for_the_generation_and_are_restored() {
    let server = sim(fast()).await;
    // Forge restores only keys it has stored (`opts.data`): store these first, as a Forge
    // whose settings were saved once has them.
    post(
        &server,
        "/sdapi/v1/options",
        json!({"forge_inference_memory": 1024, "jpeg_quality": 80}),
    )
    .await;
    reqwest::Client::new()
        .delete(format!("{}/sim/journal", server.url()))
        .send()
        .await
        .expect("clear the journal");
    post(&server, "/sdapi/v1/txt2img", small_txt2img()).await;
    let (_, before) = get(&server, "/sdapi/v1/options").await;

    let mut body = small_txt2img();
    body["override_settings"] = json!({"forge_inference_memory": 4096, "jpeg_quality": 50});
    let (status, answer) = post(&server, "/sdapi/v1/txt2img", body).await;
    assert_eq!(status.as_u16(), 200);
    assert_eq!(
        answer["parameters"]["override_settings"]["forge_inference_memory"],
        4096
    );
    post(&server, "/sdapi/v1/txt2img", small_txt2img()).await;

    let (_, after) = get(&server, "/sdapi/v1/options").await;
    assert!(same(&before, &after), "options restored");

    let journal = server.state().journal();
    let kinds: Vec<(&str, &str)> = journal
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["source"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("generation", ""),
            ("options", "override"),
            ("generation", ""),
            ("options", "restore"),
            ("generation", "")
        ]
    );
    assert_eq!(
        journal[1]["changed"],
        json!({"forge_inference_memory": 4096.0, "jpeg_quality": 50})
    );
    assert!(journal[1]["gpu_setting"]
        .as_str()
        .unwrap()
        .contains("(8192.00 MB) to load weights"));
    assert_eq!(journal[2]["forge_inference_memory"], json!(4096.0));
    assert_eq!(journal[2]["reloaded"], true);
    assert_eq!(
        journal[3]["changed"],
        json!({"forge_inference_memory": 1024.0, "jpeg_quality": 80})
    );
    // The memory override cost two reloads: this generation and the next.
    assert_eq!(journal[4]["reloaded"], true);
    assert_eq!(journal[4]["forge_inference_memory"], json!(1024.0));
}

#[tokio::test]
async fn checkpoint_override_runs_that_model_and_unknown_ones_are_dropped() {
    let server = sim(fast()).await;
    let mut body = small_txt2img();
    body["override_settings"] = json!({"sd_model_checkpoint": "sd_xl_base_1.0"});
    post(&server, "/sdapi/v1/txt2img", body).await;
    let mut body = small_txt2img();
    body["override_settings"] = json!({"sd_model_checkpoint": "nope"});
    let (status, _) = post(&server, "/sdapi/v1/txt2img", body).await;
    assert_eq!(status.as_u16(), 200);

    let generations = entries(&server, "generation");
    assert_eq!(generations[0]["checkpoint"], "sd_xl_base_1.0.safetensors");
    assert_eq!(
        generations[1]["checkpoint"],
        "v1-5-pruned-emaonly.safetensors"
    );
    assert_eq!(generations[1]["reloaded"], true);
    assert_eq!(
        server.state().options()["sd_model_checkpoint"],
        "v1-5-pruned-emaonly.safetensors"
    );
}

#[tokio::test]
async fn override_without_restore_keeps_the_value() {
    let server = sim(fast()).await;
    let mut body = small_txt2img();
    body["override_settings"] = json!({"jpeg_quality": 60});
    body["override_settings_restore_afterwards"] = json!(false);
    post(&server, "/sdapi/v1/txt2img", body).await;
    assert_eq!(server.state().options()["jpeg_quality"], 60);
    assert!(entries(&server, "options")
        .iter()
        .all(|e| e["source"] != "restore"));
}

#[tokio::test]
async fn flux_with_1024_inference_on_12_gib_runs_out_of_memory() {
    let server = sim(fast()).await;
    post(
        &server,
        "/sdapi/v1/options",
        json!({"sd_model_checkpoint": "flux1-dev-Q4_0.gguf"}),
    )
    .await;
    let body = json!({"width": 1024, "height": 1024, "steps": 4, "cfg_scale": 1.0});
    let (status, answer) = post(&server, "/sdapi/v1/txt2img", body.clone()).await;
    assert_eq!(status.as_u16(), 500);
    assert_eq!(answer["error"], "OutOfMemoryError");
    assert_eq!(
        (answer["detail"].clone(), answer["body"].clone()),
        (json!(""), json!(""))
    );
    assert!(answer["message"]
        .as_str()
        .unwrap()
        .starts_with("CUDA out of memory. Tried to allocate 3.22 GiB."));
    let oom = entries(&server, "generation").pop().unwrap();
    assert_eq!(
        (oom["outcome"].clone(), oom["reloaded"].clone()),
        (json!("oom"), json!(true))
    );
    let (_, memory) = get(&server, "/sdapi/v1/memory").await;
    assert_eq!(memory["cuda"]["events"]["oom"], 1);

    post(
        &server,
        "/sdapi/v1/options",
        json!({"forge_inference_memory": 4096}),
    )
    .await;
    let (status, _) = post(&server, "/sdapi/v1/txt2img", body).await;
    assert_eq!(status.as_u16(), 200);
    let ok = entries(&server, "generation").pop().unwrap();
    assert_eq!(ok["outcome"], "ok");
    assert_eq!(ok["gpu_weights_loaded_mib"], json!(8192.0));
    let slowdown = ok["slowdown"].as_f64().unwrap();
    assert!(
        (slowdown - (1.0 + 9.0 * 3308.0 / 11500.0)).abs() < 1e-9,
        "{slowdown}"
    );
}

#[tokio::test]
async fn without_a_gpu_memory_is_unavailable_and_generation_is_slow_but_works() {
    let server = sim(SimConfig {
        vram_mib: 0,
        ..fast()
    })
    .await;
    let (_, memory) = get(&server, "/sdapi/v1/memory").await;
    assert_eq!(memory["cuda"], json!({"error": "unavailable"}));
    let (status, _) = post(&server, "/sdapi/v1/txt2img", small_txt2img()).await;
    assert_eq!(status.as_u16(), 200);
    assert_eq!(entries(&server, "generation")[0]["slowdown"], json!(10.0));
}

#[tokio::test]
async fn memory_reading_follows_the_loaded_weights() {
    let server = sim(fast()).await;
    let mib = 1024u64 * 1024;
    let (_, before) = get(&server, "/sdapi/v1/memory").await;
    assert_eq!(before["cuda"]["system"]["total"], json!(12288 * mib));
    assert_eq!(before["cuda"]["system"]["used"], json!(300 * mib));
    post(&server, "/sdapi/v1/txt2img", small_txt2img()).await;
    let (_, after) = get(&server, "/sdapi/v1/memory").await;
    assert_eq!(after["cuda"]["system"]["used"], json!(2300 * mib));
    assert_eq!(after["cuda"]["system"]["free"], json!((12288 - 2300) * mib));
}

/// Polls `/progress` until a generation is sampling; returns that reading.
async fn wait_for_sampling(server: &SimServer) -> Value {
    for _ in 0..2000 {
        let (_, progress) = get(server, "/sdapi/v1/progress").await;
        if progress["state"]["sampling_step"].as_i64().unwrap_or(0) > 0
            && progress["state"]["job_count"] != 0
        {
            return progress;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("the generation never started sampling");
}

#[tokio::test]
async fn progress_reports_the_running_generation() {
    let server = sim(SimConfig {
        time_scale: 0.05,
        ..fast()
    })
    .await;
    let (_, idle) = get(&server, "/sdapi/v1/progress").await;
    assert_eq!(idle["progress"], json!(0.0));
    assert_eq!(idle["state"]["job_count"], 0);
    // Forge's ProgressResponse has no current_task.
    assert!(idle.get("current_task").is_none());

    let body = json!({"steps": 40, "force_task_id": "task(my-own-id)"});
    let generation = post(&server, "/sdapi/v1/txt2img", body);
    let watcher = async {
        let running = wait_for_sampling(&server).await;
        let progress = running["progress"].as_f64().unwrap();
        assert!(progress > 0.01 && progress < 1.0, "{progress}");
        assert!(running["eta_relative"].as_f64().unwrap() > 0.0);
        assert!(running.get("current_task").is_none());
        assert_eq!(running["state"]["job"], "scripts_txt2img");
        assert_eq!(running["state"]["sampling_steps"], 40);
    };
    let ((status, _), ()) = tokio::join!(generation, watcher);
    assert!(status.is_success());
    let (_, done) = get(&server, "/sdapi/v1/progress").await;
    assert_eq!(done["progress"], json!(0.0));
    // processing.py's last `state.nextjob()`: one job done, its step reset.
    assert_eq!(done["state"]["job_no"], 1);
    assert_eq!(done["state"]["sampling_step"], 0);
    assert_eq!(done["state"]["sampling_steps"], 40);
    assert_eq!(
        entries(&server, "generation")[0]["task_id"],
        "task(my-own-id)"
    );
}

#[tokio::test]
async fn interrupt_stops_at_the_next_step_and_still_answers_with_images() {
    let server = sim(SimConfig {
        time_scale: 0.05,
        ..fast()
    })
    .await;
    let generation = post(
        &server,
        "/sdapi/v1/txt2img",
        json!({"steps": 40, "n_iter": 3}),
    );
    let interrupter = async {
        wait_for_sampling(&server).await;
        post(&server, "/sdapi/v1/interrupt", json!(null)).await
    };
    let ((status, answer), (interrupt_status, interrupt_answer)) =
        tokio::join!(generation, interrupter);
    assert_eq!(
        (interrupt_status.as_u16(), interrupt_answer),
        (200, json!({}))
    );
    assert_eq!(status.as_u16(), 200);
    assert_eq!(answer["images"].as_array().unwrap().len(), 1);
    let entry = entries(&server, "generation").pop().unwrap();
    assert_eq!(entry["outcome"], "interrupted");
    assert_eq!(entry["images"], 1);
}

#[tokio::test]
async fn skip_ends_the_current_iteration_only() {
    let server = sim(SimConfig {
        time_scale: 0.05,
        ..fast()
    })
    .await;
    let generation = post(
        &server,
        "/sdapi/v1/txt2img",
        json!({"steps": 40, "n_iter": 2}),
    );
    let skipper = async {
        wait_for_sampling(&server).await;
        post(&server, "/sdapi/v1/skip", json!(null)).await
    };
    let ((status, answer), (_, skip_answer)) = tokio::join!(generation, skipper);
    assert_eq!(skip_answer, Value::Null);
    assert_eq!(status.as_u16(), 200);
    assert_eq!(answer["images"].as_array().unwrap().len(), 2);
    let entry = entries(&server, "generation").pop().unwrap();
    assert_eq!(entry["outcome"], "ok");
    // One of the two iterations was cut short.
    let full_ms = 1000.0 + 2.0 * 2000.0 + 2.0 * 40.0 * 280.0 / 4.0;
    assert!(entry["duration_ms"].as_f64().unwrap() < full_ms);
}

#[tokio::test]
async fn journal_durations_follow_the_timing_model() {
    let server = sim(fast()).await;
    post(
        &server,
        "/sdapi/v1/txt2img",
        json!({"steps": 20, "width": 512, "height": 512}),
    )
    .await;
    post(
        &server,
        "/sdapi/v1/txt2img",
        json!({"steps": 20, "width": 1024, "height": 1024, "batch_size": 2}),
    )
    .await;
    let generations = entries(&server, "generation");
    // Reload (1000 + 2 * 2000) + 20 steps * 280 ms/MP * 0.25 MP.
    assert_eq!(generations[0]["duration_ms"], json!(5000.0 + 20.0 * 70.0));
    // No reload; 20 steps * 280 ms/MP * 1 MP * batch 2.
    assert_eq!(generations[1]["duration_ms"], json!(20.0 * 560.0));
    assert!(generations[1]["wall_ms"].as_f64().unwrap() >= 20.0 * 560.0 * 0.0005);
}
