//! POST /sdapi/v1/options: which keys Forge applies, in which order, and what each costs
//! (`modules/sysinfo.py` `set_config`, `modules_forge/main_entry.py`).

use reqwest::Method;
use serde_json::{json, Value};

use crate::{Event, Target};

/// A memory value other than the current one, so that a case can make a change happen.
async fn other_memory(target: &Target) -> f64 {
    let current = target.options().await["forge_inference_memory"]
        .as_f64()
        .expect("forge_inference_memory is a number");
    if current == 2048.0 {
        3072.0
    } else {
        2048.0
    }
}

/// Posts a body written out by hand, so that its keys keep the order given.
async fn post_raw(target: &Target, body: &str) -> crate::Answer {
    target
        .send(
            target
                .request(Method::POST, "/sdapi/v1/options")
                .header("content-type", "application/json")
                .body(body.to_owned()),
        )
        .await
}

/// The selected model settled: loaded, no refresh pending, nothing left in the events.
async fn settle(target: &mut Target) {
    target.generate().await;
    target.clear_events();
}

#[tokio::test]
async fn memory_key_posted_with_its_current_value_changes_nothing() {
    let mut target = Target::open().await;
    let value = other_memory(&target).await;
    target
        .set_options(json!({"forge_inference_memory": value}))
        .await;
    settle(&mut target).await;

    // `if v == shared.opts.data.get(k): continue`: no refresh, no unload, as int or float.
    target
        .set_options(json!({"forge_inference_memory": value as u64}))
        .await;
    target
        .set_options(json!({"forge_inference_memory": value, "forge_async_loading": "Queue"}))
        .await;
    assert_eq!(target.events(), vec![], "re-posting the current value");
    target.generate().await;
    assert_eq!(
        target.events(),
        vec![],
        "the next generation reloads nothing"
    );
}

#[tokio::test]
async fn memory_change_refreshes_at_once_and_the_next_generation_moves_weights_back_from_ram() {
    let mut target = Target::open().await;
    settle(&mut target).await;
    let value = other_memory(&target).await;
    target
        .set_options(json!({"forge_inference_memory": value}))
        .await;
    assert_eq!(
        target.events(),
        vec![Event::MemoryRefresh {
            inference_mib: value
        }]
    );
    // Stored as a float, whatever was posted.
    let answer = target.get("/sdapi/v1/options").await;
    let text = String::from_utf8_lossy(&answer.bytes);
    assert!(
        text.contains(&format!("\"forge_inference_memory\":{value:.1}")),
        "memory value comes back as a float"
    );

    target.generate().await;
    assert_eq!(
        target.events(),
        vec![Event::UnloadAll],
        "a memory change costs a move from RAM, not a file load"
    );
    target.generate().await;
    assert_eq!(target.events(), vec![], "and only once");
}

#[tokio::test]
async fn checkpoint_change_loads_the_new_file_at_the_next_generation() {
    let mut target = Target::open().await;
    let checkpoints = target.checkpoints().await;
    let titles: Vec<&str> = checkpoints
        .iter()
        .filter_map(|c| c["title"].as_str())
        .collect();
    assert!(titles.len() >= 2, "the suite needs two checkpoints");
    target
        .set_options(json!({"sd_model_checkpoint": titles[0]}))
        .await;
    settle(&mut target).await;

    target
        .set_options(json!({"sd_model_checkpoint": titles[1]}))
        .await;
    assert_eq!(target.events(), vec![], "the change is lazy");
    target.generate().await;
    assert_eq!(target.events(), vec![Event::LoadFromDisk]);
}

#[tokio::test]
async fn checkpoint_is_stored_as_the_alias_sent() {
    let target = Target::open().await;
    let checkpoints = target.checkpoints().await;
    let (first, second) = (&checkpoints[0], &checkpoints[1]);
    let (first_title, second_title) = (
        first["title"].as_str().unwrap(),
        second["title"].as_str().unwrap(),
    );
    target
        .set_options(json!({"sd_model_checkpoint": first_title}))
        .await;
    target.generate().await;
    target
        .set_options(json!({"sd_model_checkpoint": second_title}))
        .await;
    target.generate().await;

    // The short hash of the first (known once it was loaded), then its sha256: each is
    // stored exactly as posted.
    let short = first["hash"].as_str().expect("the first checkpoint's hash");
    target
        .set_options(json!({"sd_model_checkpoint": short}))
        .await;
    assert_eq!(target.options().await["sd_model_checkpoint"], json!(short));

    // Another alias of the model already selected keeps the string stored.
    let sha256 = first["sha256"]
        .as_str()
        .expect("the first checkpoint's sha256");
    target
        .set_options(json!({"sd_model_checkpoint": sha256}))
        .await;
    assert_eq!(target.options().await["sd_model_checkpoint"], json!(short));

    // A change to the other model by its sha256 stores the sha256.
    let other_sha = second["sha256"].as_str().unwrap();
    target
        .set_options(json!({"sd_model_checkpoint": other_sha}))
        .await;
    assert_eq!(
        target.options().await["sd_model_checkpoint"],
        json!(other_sha)
    );
    let info: Value = serde_json::from_str(
        target.generate().await["info"]
            .as_str()
            .expect("info is a string"),
    )
    .expect("info is JSON");
    assert_eq!(
        info["sd_model_hash"], second["hash"],
        "the sha256 selected the second model"
    );
}

#[tokio::test]
async fn checkpoint_aliases_are_exact_and_case_sensitive() {
    let target = Target::open().await;
    let checkpoints = target.checkpoints().await;
    let title = checkpoints[0]["title"].as_str().unwrap();
    let name = title.split(" [").next().unwrap();
    for wrong in [
        name.to_uppercase(),
        name[..name.len() - 3].to_owned(),
        format!("{name} "),
        "nope.safetensors".to_owned(),
    ] {
        let answer = target
            .post("/sdapi/v1/options", &json!({"sd_model_checkpoint": wrong}))
            .await;
        assert_eq!(answer.status, 500, "{wrong:?}");
        assert_eq!(
            answer.json(),
            json!({"error": "RuntimeError", "detail": "", "body": "",
                   "message": format!("model '{wrong}' not found")}),
        );
    }
}

#[tokio::test]
async fn keys_apply_in_the_order_sent_until_one_fails() {
    let target = Target::open().await;
    target.set_options(json!({"jpeg_quality": 80})).await;

    // An unknown key fails the call after the keys before it were stored.
    let answer = post_raw(&target, r#"{"jpeg_quality": 62, "aaa_unknown": 1}"#).await;
    assert_eq!(answer.status, 500);
    assert_eq!(answer.json()["error"], "KeyError");
    assert_eq!(answer.json()["message"], "'aaa_unknown'");
    assert_eq!(target.options().await["jpeg_quality"].as_f64(), Some(62.0));

    // Keys after it are not.
    let answer = post_raw(&target, r#"{"aaa_unknown": 1, "jpeg_quality": 63}"#).await;
    assert_eq!(answer.status, 500);
    assert_eq!(target.options().await["jpeg_quality"].as_f64(), Some(62.0));

    // The same with an unknown checkpoint.
    let answer = post_raw(
        &target,
        r#"{"jpeg_quality": 64, "sd_model_checkpoint": "nope", "jpeg_quality_png": 1}"#,
    )
    .await;
    assert_eq!(answer.status, 500);
    assert_eq!(answer.json()["message"], "model 'nope' not found");
    assert_eq!(target.options().await["jpeg_quality"].as_f64(), Some(64.0));
    target.set_options(json!({"jpeg_quality": 80})).await;
}

#[tokio::test]
async fn a_memory_change_before_a_failing_key_is_not_applied() {
    let mut target = Target::open().await;
    let before = target.options().await["forge_inference_memory"].clone();
    let value = other_memory(&target).await;
    target.clear_events();
    let answer = post_raw(
        &target,
        &format!(r#"{{"forge_inference_memory": {value}, "aaa_unknown": 1}}"#),
    )
    .await;
    assert_eq!(answer.status, 500);
    // Memory keys are applied after the loop, which the KeyError left.
    assert_eq!(target.events(), vec![]);
    assert_eq!(
        target.options().await["forge_inference_memory"],
        before,
        "not stored"
    );
}

#[tokio::test]
async fn an_answer_from_an_exception_ends_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let target = Target::open().await;
    let address = target.url("").trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let body = r#"{"sd_model_checkpoint": "nope"}"#;
    let request = format!(
        "POST /sdapi/v1/options HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    // Read until the server ends the connection: the whole 500, then EOF (or a reset).
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("Forge ends the connection after a 500 from an exception");
    assert!(
        read.is_ok() || answer.ends_with(b"not found\"}"),
        "{read:?}"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 500"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("connection: close"),
        "without saying so: {text}"
    );
    assert!(
        text.ends_with(r#""message":"model 'nope' not found"}"#),
        "{text}"
    );
}
