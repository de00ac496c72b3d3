//! `GET /sdapi/v1/progress`: behind `--api-auth` like every `/sdapi` route, and the fields
//! of Forge's `ProgressResponse` and `shared.state` (modules/api/api.py `progressapi`,
//! modules/shared_state.py `State`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use crate::Target;

#[tokio::test]
async fn progress_needs_credentials_under_api_auth() {
    let Some(target) = Target::open_with_api_auth().await else {
        println!("skipped: set FORGE_AUTH_URL to a Forge started with --api-auth");
        return;
    };
    // api.py `add_api_route` puts `Depends(self.auth)` on every route it adds, /progress too.
    let anonymous = reqwest::Client::new();
    let missing = anonymous
        .get(target.url("/sdapi/v1/progress"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Basic");
    assert_eq!(
        missing.json::<Value>().await.unwrap(),
        json!({"detail": "Not authenticated"})
    );
    let wrong = anonymous
        .get(target.url("/sdapi/v1/progress"))
        .basic_auth("user", Some("not-the-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.headers()["www-authenticate"], "Basic");
    assert_eq!(
        wrong.json::<Value>().await.unwrap(),
        json!({"detail": "Incorrect username or password"})
    );
    let right = target.get("/sdapi/v1/progress").await;
    assert_eq!(right.status, 200);
    assert!(right.json().get("state").is_some());
    // Auth comes before the query's validation.
    let invalid_query = anonymous
        .get(target.url("/sdapi/v1/progress?skip_current_image=maybe"))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid_query.status(), 401);

    // Open: what the Lora extension registers itself, and FastAPI's own docs.
    for open in ["/sdapi/v1/loras", "/openapi.json", "/docs"] {
        let response = anonymous.get(target.url(open)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{open}");
    }
}

const KEYS: [&str; 5] = [
    "progress",
    "eta_relative",
    "state",
    "current_image",
    "textinfo",
];

const STATE_KEYS: [&str; 9] = [
    "skipped",
    "interrupted",
    "stopping_generation",
    "job",
    "job_count",
    "job_timestamp",
    "job_no",
    "sampling_step",
    "sampling_steps",
];

/// A reading's keys, checked against `ProgressResponse` and `State.dict()` in their order.
fn assert_shape(reading: &Value) {
    let keys: Vec<&str> = reading
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, KEYS, "no current_task: {reading}");
    let state: Vec<&str> = reading["state"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(state, STATE_KEYS);
}

fn int(reading: &Value, key: &str) -> i64 {
    reading["state"][key].as_i64().expect("an int")
}

/// The first checkpoint that is not the selected one, by its file name.
async fn other_checkpoint(target: &Target) -> String {
    let selected = target.options().await["sd_model_checkpoint"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    target
        .checkpoints()
        .await
        .iter()
        .filter_map(|c| c["title"].as_str())
        .map(|title| title.split(" [").next().unwrap_or(title).to_owned())
        .find(|name| *name != selected)
        .expect("two checkpoints")
}

#[tokio::test]
async fn progress_reports_forges_fields_and_counters() {
    let target = Target::open().await;
    let txt2img = |steps: u32, n_iter: u32| json!({"prompt": "progress", "steps": steps, "n_iter": n_iter, "width": 64, "height": 64});

    // After a job the counters stay: processing.py's `state.nextjob()` after each iteration
    // leaves job_no at n_iter and the step at 0; `state.end()` resets only job and job_count.
    let answer = target.post("/sdapi/v1/txt2img", &txt2img(3, 2)).await;
    assert_eq!(answer.status, 200);
    let idle = target.get("/sdapi/v1/progress").await.json();
    assert_shape(&idle);
    assert_eq!(idle["progress"], json!(0.0));
    assert_eq!(idle["eta_relative"], json!(0.0));
    assert_eq!(idle["current_image"], Value::Null);
    assert_eq!(idle["textinfo"], Value::Null);
    assert_eq!(idle["state"]["job"], "");
    assert_eq!(
        (
            int(&idle, "job_count"),
            int(&idle, "job_no"),
            int(&idle, "sampling_step"),
            int(&idle, "sampling_steps")
        ),
        (0, 2, 0, 3)
    );
    assert_eq!(
        idle["state"]["job_timestamp"].as_str().map(str::len),
        Some(14)
    );
    assert_eq!(idle["state"]["interrupted"], false);

    // A job that loads another checkpoint: `state.begin()` sets job_count to -1 and keeps
    // the last job's sampling_steps until `launch_sampling`, after the load; the sampler
    // callback stores each step's 0-based index.
    let other = other_checkpoint(&target).await;
    target
        .set_options(json!({"sd_model_checkpoint": other}))
        .await;
    let done = AtomicBool::new(false);
    let generation = async {
        let answer = target.post("/sdapi/v1/txt2img", &txt2img(4, 1)).await;
        done.store(true, Ordering::SeqCst);
        answer
    };
    let watcher = async {
        let mut readings = Vec::new();
        while !done.load(Ordering::SeqCst) {
            let reading = target
                .get("/sdapi/v1/progress?skip_current_image=true")
                .await
                .json();
            if int(&reading, "job_count") != 0 {
                readings.push(reading);
            }
            tokio::time::sleep(Duration::from_millis(if target.is_sim() { 1 } else { 50 })).await;
        }
        readings
    };
    let (answer, readings) = tokio::join!(generation, watcher);
    assert_eq!(answer.status, 200);
    let mut loading = 0;
    for reading in &readings {
        assert_shape(reading);
        let progress = reading["progress"].as_f64().unwrap();
        match int(reading, "job_count") {
            -1 => {
                loading += 1;
                assert_eq!(int(reading, "job_no"), 0, "{reading}");
                assert_eq!(int(reading, "sampling_step"), 0, "{reading}");
                assert_eq!(
                    int(reading, "sampling_steps"),
                    3,
                    "the last job's: {reading}"
                );
                assert!((progress - 0.01).abs() < 1e-9, "{reading}");
            }
            1 => {
                if int(reading, "sampling_steps") == 4 {
                    assert!(int(reading, "sampling_step") < 4, "0-based: {reading}");
                }
                assert!((0.01..=1.0).contains(&progress), "{reading}");
            }
            other => panic!("job_count {other}: {reading}"),
        }
        assert_eq!(reading["state"]["job"], "scripts_txt2img", "{reading}");
    }
    if !target.is_sim() {
        // Loading a checkpoint takes seconds on a real Forge: the poll sees it.
        assert!(loading > 0, "no reading while loading: {readings:?}");
    }
    let done = target.get("/sdapi/v1/progress").await.json();
    assert_shape(&done);
    assert_eq!(
        (
            int(&done, "job_count"),
            int(&done, "job_no"),
            int(&done, "sampling_step"),
            int(&done, "sampling_steps")
        ),
        (0, 1, 0, 4)
    );

    // `skip_current_image` is a pydantic bool in the query.
    let invalid = target
        .get("/sdapi/v1/progress?skip_current_image=maybe")
        .await;
    assert_eq!(invalid.status, 422);
    assert_eq!(
        invalid.json(),
        json!({"detail": [{"type": "bool_parsing", "loc": ["query", "skip_current_image"],
            "msg": "Input should be a valid boolean, unable to interpret input", "input": "maybe",
            "url": "https://errors.pydantic.dev/2.8/v/bool_parsing"}]})
    );
}
