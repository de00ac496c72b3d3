//! What a generation answers and what it costs: the answer's shape, `override_settings`
//! applied and restored, an unknown override checkpoint dropped, one generation at a time,
//! a generation that goes on after its client left, interrupt and skip, and the listings a
//! proxy reads (modules/api/api.py `text2imgapi`, `interruptapi`, `skip`, `unloadapi`;
//! modules/processing.py `process_images`; modules/call_queue.py `queue_lock`).

use std::time::Duration;

use serde_json::{json, Value};

use crate::{Event, Target};

/// The generation answered by `text2imgapi`: images, the request echoed, the info string.
fn info(answer: &Value) -> Value {
    serde_json::from_str(answer["info"].as_str().expect("info is a string")).expect("info JSON")
}

/// Selects the first catalog checkpoint and lets a generation load it, so that a case starts
/// with nothing pending. Answers the selected checkpoint's title.
async fn settle_on_first(target: &mut Target) -> Value {
    let first = target.checkpoints().await[0].clone();
    let title = first["title"].as_str().expect("title").to_owned();
    let name = title.split(" [").next().unwrap_or(&title).to_owned();
    target
        .set_options(json!({"sd_model_checkpoint": name}))
        .await;
    target.generate().await;
    target.clear_events();
    first
}

/// The `progress` reading, without the preview image.
async fn progress(target: &Target) -> Value {
    target
        .get("/sdapi/v1/progress?skip_current_image=true")
        .await
        .json()
}

/// Polls until the running job has sampled at least one step; answers that reading.
async fn wait_until_sampling(target: &Target) -> Value {
    for _ in 0..2000 {
        let reading = progress(target).await;
        if reading["state"]["job_count"] == 1
            && reading["state"]["sampling_step"].as_i64() > Some(0)
        {
            return reading;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the generation never reached its first step");
}

#[tokio::test]
async fn sd_models_lists_every_checkpoint_with_forges_fields() {
    let mut target = Target::open().await;
    let first = settle_on_first(&mut target).await;
    let keys: Vec<&str> = first
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "title",
            "model_name",
            "hash",
            "sha256",
            "filename",
            "config"
        ]
    );
    // Loaded once, so its hash is known and in its title (`CheckpointInfo.calculate_shorthash`).
    let hash = first["hash"].as_str().expect("a short hash once loaded");
    assert_eq!(hash.len(), 10);
    assert!(first["sha256"].as_str().unwrap().starts_with(hash));
    let file = first["filename"].as_str().unwrap();
    let name = file.rsplit('/').next().unwrap();
    assert_eq!(first["title"], format!("{name} [{hash}]"));
    assert_eq!(
        first["model_name"],
        name.rsplit_once('.').map_or(name, |(stem, _)| stem)
    );
}

#[tokio::test]
async fn a_generation_answers_each_image_the_request_and_its_info() {
    let mut target = Target::open().await;
    settle_on_first(&mut target).await;
    let body = json!({"prompt": "count", "steps": 1, "width": 64, "height": 64,
        "batch_size": 2, "n_iter": 2, "seed": 7});
    let answer = target.post("/sdapi/v1/txt2img", &body).await;
    assert_eq!(answer.status, 200);
    let answer = answer.json();
    let keys: Vec<&str> = answer
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["images", "parameters", "info"]);
    // batch_size x n_iter images, no grid through the API.
    assert_eq!(answer["images"].as_array().map(Vec::len), Some(4));
    assert_eq!(answer["parameters"]["prompt"], "count");
    assert_eq!(answer["parameters"]["n_iter"], 2);
    let info = info(&answer);
    assert_eq!(info["seed"], 7);
    assert_eq!(info["all_seeds"], json!([7, 8, 9, 10]));
    assert_eq!(info["batch_size"], 2);
    assert_eq!(info["width"], 64);

    let quiet = target
        .post(
            "/sdapi/v1/txt2img",
            &json!({"prompt": "quiet", "steps": 1, "width": 64, "height": 64, "send_images": false}),
        )
        .await
        .json();
    assert_eq!(quiet["images"], json!([]));
    assert_eq!(quiet["parameters"]["send_images"], false);
}

#[tokio::test]
async fn an_unknown_override_checkpoint_is_dropped_and_the_current_model_runs() {
    let mut target = Target::open().await;
    let first = settle_on_first(&mut target).await;
    let selected = target.options().await["sd_model_checkpoint"].clone();
    let stem = first["model_name"].as_str().unwrap().to_owned();
    let upper = first["title"].as_str().unwrap().to_uppercase();
    let substring = stem[..stem.len() - 2].to_owned();
    // modules/processing.py: `if checkpoint_info is None: p.override_settings.pop(...)`.
    for name in ["nope.safetensors", substring.as_str(), upper.as_str()] {
        let answer = target
            .post(
                "/sdapi/v1/txt2img",
                &json!({"prompt": "unknown", "steps": 1, "width": 64, "height": 64,
                    "override_settings": {"sd_model_checkpoint": name}}),
            )
            .await;
        assert_eq!(answer.status, 200, "{name}");
        assert_eq!(
            info(&answer.json())["sd_model_name"],
            stem.as_str(),
            "{name}"
        );
        assert_eq!(target.events(), vec![], "{name}: nothing loaded");
    }
    assert_eq!(target.options().await["sd_model_checkpoint"], selected);
}

#[tokio::test]
async fn an_override_checkpoint_loads_for_its_generation_and_the_old_one_comes_back_after() {
    let mut target = Target::open().await;
    let first = settle_on_first(&mut target).await;
    let selected = target.options().await["sd_model_checkpoint"].clone();
    let mut checkpoints = target.checkpoints().await;
    let second = checkpoints.remove(1);
    // By its file name without extension: an alias Forge knows before the first load.
    let other = second["model_name"].as_str().unwrap();
    let answer = target
        .post(
            "/sdapi/v1/txt2img",
            &json!({"prompt": "override", "steps": 1, "width": 64, "height": 64,
                "override_settings": {"sd_model_checkpoint": other}}),
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(info(&answer.json())["sd_model_name"], other);
    assert_eq!(target.events(), vec![Event::LoadFromDisk]);
    // Restored afterwards (the default): selected again, loaded lazily by the next one.
    assert_eq!(target.options().await["sd_model_checkpoint"], selected);
    let next = target.generate().await;
    assert_eq!(info(&next)["sd_model_name"], first["model_name"]);
    assert_eq!(target.events(), vec![Event::LoadFromDisk]);
}

#[tokio::test]
async fn an_override_memory_value_is_applied_then_restored_each_a_refresh() {
    let mut target = Target::open().await;
    // processing.py restores only keys already in `opts.data`: a value once posted is.
    let current = 2500.0;
    target
        .set_options(json!({"forge_inference_memory": current}))
        .await;
    settle_on_first(&mut target).await;
    let other = 2000.0;
    let body = |restore: bool| {
        json!({"prompt": "memory", "steps": 1, "width": 64, "height": 64,
            "override_settings": {"forge_inference_memory": other},
            "override_settings_restore_afterwards": restore})
    };

    let answer = target.post("/sdapi/v1/txt2img", &body(true)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        target.events(),
        vec![
            Event::MemoryRefresh {
                inference_mib: other
            },
            Event::UnloadAll,
            Event::MemoryRefresh {
                inference_mib: current
            },
        ],
        "two changes, two refreshes"
    );
    assert_eq!(
        target.options().await["forge_inference_memory"],
        json!(current)
    );
    target.generate().await;
    assert_eq!(
        target.events(),
        vec![Event::UnloadAll],
        "the restore costs the next generation a move from RAM"
    );

    let answer = target.post("/sdapi/v1/txt2img", &body(false)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        target.events(),
        vec![
            Event::MemoryRefresh {
                inference_mib: other
            },
            Event::UnloadAll
        ]
    );
    assert_eq!(
        target.options().await["forge_inference_memory"],
        json!(other),
        "kept"
    );
}

#[tokio::test]
async fn unload_checkpoint_moves_the_weights_off_and_the_next_generation_back_from_ram() {
    let mut target = Target::open().await;
    settle_on_first(&mut target).await;
    let answer = target
        .send(target.request(reqwest::Method::POST, "/sdapi/v1/unload-checkpoint"))
        .await;
    assert_eq!((answer.status.as_u16(), answer.json()), (200, json!({})));
    target.generate().await;
    // Forge prints the unload at the call, forge-sim journals it with the generation that
    // pays for it: either way one move, and no file read.
    assert_eq!(target.events(), vec![Event::UnloadAll]);
    target.generate().await;
    assert_eq!(target.events(), vec![]);
}

#[tokio::test]
async fn generations_run_one_at_a_time_in_the_order_they_came() {
    let mut target = Target::open_timed().await;
    settle_on_first(&mut target).await;
    let long = target.long_generation();
    let order = std::sync::Mutex::new(Vec::new());
    let brief = target.brief_generation();
    let first = async {
        let answer = target.post("/sdapi/v1/txt2img", &long).await;
        order.lock().unwrap().push("long");
        answer
    };
    let second = async {
        wait_until_sampling(&target).await;
        let answer = target.post("/sdapi/v1/txt2img", &brief).await;
        order.lock().unwrap().push("brief");
        answer
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!((first.status.as_u16(), second.status.as_u16()), (200, 200));
    // `queue_lock`: the brief generation, sent while the long one sampled, waited for it
    // (had it run beside it, it would have ended first).
    assert_eq!(*order.lock().unwrap(), ["long", "brief"]);
}

#[tokio::test]
async fn a_generation_goes_on_after_its_client_left() {
    let mut target = Target::open_timed().await;
    settle_on_first(&mut target).await;
    let long = target.long_generation();
    let steps = long["steps"].as_i64().unwrap();
    let leaving = target.post("/sdapi/v1/txt2img", &long);
    let at_leave = tokio::select! {
        _ = leaving => panic!("the long generation ended before its client left"),
        reading = wait_until_sampling(&target) => reading,
    };
    // The client is gone (its request future dropped, its connection closed): Forge neither
    // notices nor stops. Later readings show the same job sampling on to its end.
    let step_at_leave = at_leave["state"]["sampling_step"].as_i64().unwrap();
    let mut later_step = step_at_leave;
    let done = loop {
        let reading = progress(&target).await;
        if reading["state"]["job_count"] == 0 {
            break reading;
        }
        assert_eq!(
            reading["state"]["job_timestamp"],
            at_leave["state"]["job_timestamp"]
        );
        later_step = later_step.max(reading["state"]["sampling_step"].as_i64().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        later_step > step_at_leave,
        "sampled on after the client left"
    );
    assert_eq!(done["state"]["interrupted"], false);
    assert_eq!(done["state"]["job_no"], 1, "finished: {done}");
    assert_eq!(done["state"]["sampling_steps"], steps);
}

#[tokio::test]
async fn interrupt_ends_the_running_generation_early_and_skip_answers_null() {
    let mut target = Target::open_timed().await;
    settle_on_first(&mut target).await;
    // Nothing running: both are accepted and change nothing.
    let interrupt = target
        .send(target.request(reqwest::Method::POST, "/sdapi/v1/interrupt"))
        .await;
    assert_eq!(
        (interrupt.status.as_u16(), interrupt.json()),
        (200, json!({}))
    );
    let skip = target
        .send(target.request(reqwest::Method::POST, "/sdapi/v1/skip"))
        .await;
    assert_eq!((skip.status.as_u16(), skip.json()), (200, Value::Null));

    let long = target.long_generation();
    let steps = long["steps"].as_i64().unwrap();
    let generation = target.post("/sdapi/v1/txt2img", &long);
    let interrupting = async {
        wait_until_sampling(&target).await;
        let answer = target
            .send(target.request(reqwest::Method::POST, "/sdapi/v1/interrupt"))
            .await;
        assert_eq!(answer.status, 200);
    };
    let (answer, ()) = tokio::join!(generation, interrupting);
    // An interrupted generation still answers 200 with its (unfinished) image.
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["images"].as_array().map(Vec::len), Some(1));
    let after = progress(&target).await;
    assert_eq!(after["state"]["interrupted"], true, "{after}");
    assert_eq!(after["state"]["job_count"], 0);
    assert_eq!(after["state"]["sampling_steps"], steps);
    // The next generation starts clean.
    target.generate().await;
    assert_eq!(progress(&target).await["state"]["interrupted"], false);
}

#[tokio::test]
async fn not_found_answers_and_a_missing_init_image() {
    let target = Target::open().await;
    let unknown = target.get("/sdapi/v1/nope").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json(), json!({"detail": "Not Found"}));
    let img2img = target
        .post(
            "/sdapi/v1/img2img",
            &json!({"prompt": "no image", "steps": 1}),
        )
        .await;
    assert_eq!(img2img.status, 404);
    assert_eq!(img2img.json(), json!({"detail": "Init image not found"}));
}
