//! The guarantee at the edges: every generation runs with the memory of the model Forge
//! really runs, whatever name a client uses for it, however its body is written, and
//! however it leaves. Each test reads what Forge ran from the simulator's journal.

use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};

use crate::support::{
    client, get_json, journal_of, sim_with, FakeGpu, Proxy, ProxyProcess, FLUX, SD15, SDXL,
};

/// `forge_inference_memory` of each family on a 12 GiB card (the embedded profiles).
fn memory_of(file: &str) -> f64 {
    match file {
        FLUX => 4096.0,
        SDXL => 5632.0,
        _ => 10240.0,
    }
}

fn family_of(file: &str) -> &'static str {
    match file {
        FLUX => "flux",
        SDXL => "sdxl",
        _ => "sd15",
    }
}

/// Every alias Forge accepts for one of the simulator's checkpoints, from its `sd-models`
/// entry: title, name, file name without extension, model name, short hash, sha256, and
/// both names with the short hash.
async fn aliases(sim_url: &str, file: &str) -> Vec<String> {
    let models = get_json(format!("{sim_url}/sdapi/v1/sd-models")).await;
    let entry = models
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["title"].as_str().unwrap().starts_with(file))
        .unwrap()
        .clone();
    let text = |key: &str| entry[key].as_str().unwrap().to_owned();
    let hash = text("hash");
    let stem = file.rsplit_once('.').unwrap().0.to_owned();
    vec![
        text("title"),
        file.to_owned(),
        stem.clone(),
        text("model_name"),
        hash.clone(),
        text("sha256"),
        format!("{file} [{hash}]"),
        format!("{stem} [{hash}]"),
    ]
}

async fn txt2img(proxy: &ProxyProcess, body: Value) -> reqwest::Response {
    client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Makes `file` Forge's checkpoint through the proxy (memory included), as a client that
/// keeps its override would.
async fn load(proxy: &ProxyProcess, file: &str) {
    let response = txt2img(
        proxy,
        json!({"prompt": "load", "steps": 1, "override_settings": {"sd_model_checkpoint": file},
               "override_settings_restore_afterwards": false}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
}

fn last_generation(sim: &forge_sim::SimServer) -> Value {
    journal_of(sim, "generation")
        .pop()
        .expect("a generation ran")
}

fn api_options(sim: &forge_sim::SimServer) -> Vec<Value> {
    journal_of(sim, "options")
        .into_iter()
        .filter(|e| e["source"] == "api")
        .collect()
}

#[tokio::test]
async fn every_alias_of_every_checkpoint_runs_with_its_familys_memory() {
    let sim = sim_with(|_| {}).await;
    let gpu = FakeGpu::new(12288);
    let proxy = gpu.proxy(&sim.url(), &[]);
    for wanted in [FLUX, SDXL, SD15] {
        let names = aliases(&sim.url(), wanted).await;
        for loaded in [FLUX, SDXL, SD15].into_iter().filter(|f| *f != wanted) {
            for alias in &names {
                load(&proxy, loaded).await;
                assert_eq!(last_generation(&sim)["checkpoint"], loaded);
                let response = txt2img(
                    &proxy,
                    json!({"prompt": "alias", "steps": 1,
                           "override_settings": {"sd_model_checkpoint": alias}}),
                )
                .await;
                assert_eq!(response.status(), StatusCode::OK, "{alias}");
                assert_eq!(
                    response.headers()["x-forge-proxy-profile"],
                    family_of(wanted),
                    "{alias} from {loaded}"
                );
                let ran = last_generation(&sim);
                assert_eq!(ran["checkpoint"], wanted, "{alias} from {loaded}");
                assert_eq!(
                    ran["forge_inference_memory"],
                    memory_of(wanted),
                    "{alias} from {loaded}: {ran}"
                );
            }
        }
    }
}

#[tokio::test]
async fn an_unknown_name_leaves_memory_and_checkpoint_as_they_were() {
    let sim = sim_with(|_| {}).await;
    let gpu = FakeGpu::new(12288);
    let proxy = gpu.proxy(&sim.url(), &[]);
    for loaded in [FLUX, SDXL, SD15] {
        load(&proxy, loaded).await;
        let before = api_options(&sim).len();
        let upper = loaded.to_uppercase();
        let part = &loaded[..loaded.len() - 8];
        for unknown in ["nope.safetensors", upper.as_str(), part] {
            let response = txt2img(
                &proxy,
                json!({"prompt": "unknown", "steps": 1,
                       "override_settings": {"sd_model_checkpoint": unknown}}),
            )
            .await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                response.headers()["x-forge-proxy-profile"],
                family_of(loaded),
                "{unknown} with {loaded}"
            );
            let ran = last_generation(&sim);
            assert_eq!(ran["checkpoint"], loaded, "{unknown}");
            assert_eq!(
                ran["forge_inference_memory"],
                memory_of(loaded),
                "{unknown}"
            );
            assert_eq!(
                ran["reloaded"], false,
                "{unknown}: nothing changed, nothing reloaded"
            );
            let status = get_json(proxy.url("/proxy/status")).await;
            let decision = status["decisions"]
                .as_array()
                .unwrap()
                .last()
                .unwrap()
                .clone();
            assert_eq!(decision["unknown_checkpoint"], unknown, "{decision}");
        }
        assert_eq!(
            api_options(&sim).len(),
            before,
            "no options call for {loaded}"
        );
    }
}

#[tokio::test]
async fn a_clients_options_call_resolves_aliases_and_leaves_unknown_names_to_forge() {
    let sim = sim_with(|_| {}).await;
    let gpu = FakeGpu::new(12288);
    let proxy = gpu.proxy(&sim.url(), &[]);
    let post_options = |body: Value| {
        client()
            .post(proxy.url("/sdapi/v1/options"))
            .json(&body)
            .send()
    };
    for wanted in [FLUX, SDXL, SD15] {
        for alias in aliases(&sim.url(), wanted).await {
            for loaded in [FLUX, SDXL, SD15].into_iter().filter(|f| *f != wanted) {
                load(&proxy, loaded).await;
                let response = post_options(json!({"sd_model_checkpoint": alias}))
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK, "{alias}");
                let change = api_options(&sim).pop().unwrap();
                assert_eq!(change["changed"]["sd_model_checkpoint"], alias.as_str());
                assert_eq!(
                    change["changed"]["forge_inference_memory"],
                    memory_of(wanted),
                    "{alias} from {loaded}: {change}"
                );
                // The next generation runs the new checkpoint, with its memory, unchanged.
                let response = txt2img(&proxy, json!({"prompt": "after", "steps": 1})).await;
                assert_eq!(response.headers()["x-forge-proxy-options-applied"], "false");
                let ran = last_generation(&sim);
                assert_eq!(ran["checkpoint"], wanted);
                assert_eq!(ran["forge_inference_memory"], memory_of(wanted));
            }
        }
    }
    // A name Forge does not know: Forge's own 500, and nothing added to the call.
    let before = api_options(&sim).len();
    let response = post_options(json!({"sd_model_checkpoint": "nope.safetensors"}))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["message"], "model 'nope.safetensors' not found");
    assert_eq!(api_options(&sim).len(), before);
}

/// A proxy in front of `sim` whose generations take long enough to leave.
async fn slow_flux_setup(extra: &str) -> (forge_sim::SimServer, Proxy) {
    let sim = sim_with(|c| c.time_scale = 0.002).await;
    let proxy = Proxy::start(&sim.url(), extra).await;
    (sim, proxy)
}

/// Sends a long Flux generation and gives up on it after half a second.
async fn abandon_a_long_flux_generation(proxy: &Proxy) {
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let abandoned = impatient
        .post(proxy.url("/sdapi/v1/txt2img"))
        .json(
            &json!({"prompt": "long", "steps": 1000, "width": 1024, "height": 1024,
                      "override_settings": {"sd_model_checkpoint": FLUX}}),
        )
        .send()
        .await;
    assert!(abandoned.is_err(), "the client gave up: {abandoned:?}");
}

/// The abandoned generation and the follower, from the journal; asserts no options call of
/// the proxy's landed while the abandoned one ran.
fn nothing_inside_the_abandoned_generation(sim: &forge_sim::SimServer) -> (Value, Value) {
    let generations = journal_of(sim, "generation");
    let abandoned = generations
        .iter()
        .find(|g| g["checkpoint"] == FLUX && g["steps"] == 1000)
        .expect("the abandoned generation ran")
        .clone();
    let follower = generations.last().unwrap().clone();
    let (start, end) = (
        abandoned["started_ms"].as_f64().unwrap(),
        abandoned["ended_ms"].as_f64().unwrap(),
    );
    for change in journal_of(sim, "options") {
        let at = change["at_ms"].as_f64().unwrap();
        assert!(
            !(start < at && at < end),
            "an options call at {at} ms inside the abandoned generation ({start}..{end} ms): {change}"
        );
    }
    assert!(
        follower["started_ms"].as_f64().unwrap() >= end,
        "the follower waited for the abandoned generation: {follower}"
    );
    (abandoned, follower)
}

#[tokio::test]
async fn a_client_that_leaves_keeps_the_backend_until_forge_has_finished() {
    let (sim, proxy) = slow_flux_setup("").await;
    abandon_a_long_flux_generation(&proxy).await;
    let status = get_json(proxy.url("/proxy/status")).await;
    let running = &status["backends"][0]["running"];
    assert_eq!(running["client_left"], true, "{status}");
    assert_eq!(running["profile"], "flux");

    // Another client, another family, at once.
    let follower = client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .json(&json!({"prompt": "next", "steps": 2,
                      "override_settings": {"sd_model_checkpoint": SD15}}))
        .send()
        .await
        .unwrap();
    assert_eq!(follower.status(), StatusCode::OK);
    assert_eq!(follower.headers()["x-forge-proxy-profile"], "sd15");
    let (abandoned, follower) = nothing_inside_the_abandoned_generation(&sim);
    assert_eq!(abandoned["outcome"], "ok", "Forge finished it");
    assert_eq!(abandoned["forge_inference_memory"], 4096.0);
    assert_eq!(follower["checkpoint"], SD15);
    assert_eq!(follower["forge_inference_memory"], 10240.0);
    let metrics = reqwest::get(proxy.url("/proxy/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("forge_proxy_clients_gone_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn on_client_disconnect_interrupt_stops_forge_and_still_waits_for_its_end() {
    let (sim, proxy) =
        slow_flux_setup("[generation]\non_client_disconnect = \"interrupt\"\n").await;
    abandon_a_long_flux_generation(&proxy).await;
    let follower = client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .json(&json!({"prompt": "next", "steps": 2,
                      "override_settings": {"sd_model_checkpoint": SDXL}}))
        .send()
        .await
        .unwrap();
    assert_eq!(follower.status(), StatusCode::OK);
    let (abandoned, follower) = nothing_inside_the_abandoned_generation(&sim);
    assert_eq!(abandoned["outcome"], "interrupted", "{abandoned}");
    assert_eq!(follower["checkpoint"], SDXL);
    assert_eq!(follower["forge_inference_memory"], 5632.0);
}

/// A Flux txt2img body, as JSON text.
const FLUX_BODY: &str = r#"{"prompt": "written oddly", "steps": 1, "override_settings": {"sd_model_checkpoint": "flux1-dev-Q4_0.gguf"}}"#;

#[tokio::test]
async fn every_body_forge_reads_is_managed_and_the_rest_is_forwarded_untouched() {
    let sim = sim_with(|_| {}).await;
    let proxy = Proxy::start(&sim.url(), "").await;
    let utf16 = |mark: bool| -> Vec<u8> {
        let mark: &[u8] = if mark { b"\xff\xfe" } else { b"" };
        mark.iter()
            .copied()
            .chain(FLUX_BODY.encode_utf16().flat_map(u16::to_le_bytes))
            .collect()
    };
    let mut bom = b"\xef\xbb\xbf".to_vec();
    bom.extend(FLUX_BODY.as_bytes());
    let nan = FLUX_BODY.replace("\"steps\": 1", "\"steps\": 1, \"cfg_scale\": NaN");
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("UTF-8 with a byte-order mark", "/sdapi/v1/txt2img", bom),
        (
            "UTF-16 with a byte-order mark",
            "/sdapi/v1/txt2img",
            utf16(true),
        ),
        ("UTF-16 without one", "/sdapi/v1/txt2img", utf16(false)),
        ("a NaN", "/sdapi/v1/txt2img", nan.into_bytes()),
        (
            "a percent-encoded path",
            "/sdapi/v1/%74xt2img",
            FLUX_BODY.into(),
        ),
    ];
    for (what, path, bytes) in cases {
        // Back to SD 1.5 first, so that Flux needs a change.
        let reset = client()
            .post(proxy.url("/sdapi/v1/txt2img"))
            .json(
                &json!({"steps": 1, "override_settings": {"sd_model_checkpoint": SD15},
                          "override_settings_restore_afterwards": false}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(reset.status(), StatusCode::OK);
        let response = client()
            .post(proxy.url(path))
            .header("content-type", "application/json")
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{what}");
        assert_eq!(
            response.headers()["x-forge-proxy-profile"],
            "flux",
            "{what}"
        );
        let ran = last_generation(&sim);
        assert_eq!(ran["checkpoint"], FLUX, "{what}");
        assert_eq!(ran["forge_inference_memory"], 4096.0, "{what}: {ran}");
    }

    // What neither reads goes to Forge untouched (seen through a generation route that
    // echoes what it received), and Forge's own answer comes back.
    let echoing = Proxy::start(
        &sim.url(),
        "[generation]\nroutes = [\"/sdapi/v1/txt2img\", \"/sim/echo\"]\n",
    )
    .await;
    let before = api_options(&sim).len();
    for (what, content_type, body) in [
        ("cut short", "application/json", r#"{"prompt": "#.to_owned()),
        ("a text body", "text/plain", FLUX_BODY.to_owned()),
        (
            "a lone surrogate",
            "application/json",
            FLUX_BODY.replace("written oddly", "\\ud800"),
        ),
    ] {
        let seen: Value = client()
            .post(echoing.url("/sim/echo"))
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(seen["body_len"], body.len(), "{what}");
        assert_eq!(seen["headers"]["content-type"], content_type, "{what}");
    }
    for (what, content_type, body, status) in [
        (
            "cut short",
            "application/json",
            r#"{"prompt": "#.to_owned(),
            422,
        ),
        ("a text body", "text/plain", FLUX_BODY.to_owned(), 422),
        // Forge reads these, then refuses them: nothing is changed for them either.
        (
            "a width Forge refuses",
            "application/json",
            FLUX_BODY.replace("\"steps\": 1", "\"width\": 1e308"),
            422,
        ),
        (
            "a fractional batch",
            "application/json",
            FLUX_BODY.replace("\"steps\": 1", "\"batch_size\": 1.5"),
            422,
        ),
        (
            "a NaN width",
            "application/json",
            FLUX_BODY.replace("\"steps\": 1", "\"width\": NaN"),
            500,
        ),
    ] {
        let response = client()
            .post(proxy.url("/sdapi/v1/txt2img"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{what}");
        assert!(
            response.headers().get("x-forge-proxy-profile").is_none(),
            "{what}"
        );
        assert!(
            response.headers().get("x-forge-proxy-error").is_none(),
            "{what}"
        );
    }
    assert_eq!(api_options(&sim).len(), before, "nothing changed for them");
}

#[tokio::test]
async fn a_non_ascii_model_type_is_the_documented_400() {
    let sim = sim_with(|_| {}).await;
    let proxy = Proxy::start(&sim.url(), "").await;
    let response = client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .header(
            "x-forge-model-type",
            http::HeaderValue::from_bytes(b"fl\xfcx").unwrap(),
        )
        .json(&json!({"steps": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        answer["message"],
        "forge-vram-proxy: unknown model type \"fl\u{fffd}x\" in X-Forge-Model-Type: known profiles are flux, sdxl, sd15"
    );
    assert!(journal_of(&sim, "generation").is_empty());
}

#[tokio::test]
async fn a_cold_burst_of_mixed_generations_uses_both_idle_backends() {
    let a = sim_with(|c| c.time_scale = 0.002).await;
    let b = sim_with(|c| c.time_scale = 0.002).await;
    let toml = format!(
        "[[backends]]\nurl = \"{}\"\nvram_source = \"backend\"\n[[backends]]\nurl = \"{}\"\nvram_source = \"backend\"\n",
        a.url(),
        b.url()
    );
    let proxy = Proxy::start_toml(&toml).await;
    let sends = (0..8).map(|i| {
        let checkpoint = if i % 2 == 0 { FLUX } else { SD15 };
        let url = proxy.url("/sdapi/v1/txt2img");
        async move {
            tokio::time::sleep(Duration::from_millis(5 * i)).await;
            client()
                .post(url)
                .json(&json!({"prompt": "burst", "steps": 40,
                              "override_settings": {"sd_model_checkpoint": checkpoint}}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    for status in futures_util::future::join_all(sends).await {
        assert_eq!(status, StatusCode::OK);
    }
    let flux_on = |sim: &forge_sim::SimServer| {
        journal_of(sim, "generation")
            .iter()
            .filter(|g| g["checkpoint"] == FLUX)
            .count()
    };
    assert!(
        flux_on(&a) > 0 && flux_on(&b) > 0,
        "both idle backends took Flux work: {} and {}",
        flux_on(&a),
        flux_on(&b)
    );
}

/// Polls `/proxy/status` until `ready` holds for it.
async fn status_until(proxy: &Proxy, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..500 {
        let status = get_json(proxy.url("/proxy/status")).await;
        if ready(&status) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never saw {what}");
}

#[tokio::test]
async fn a_clients_options_call_waits_its_turn_and_shows_as_queued_work() {
    let (sim, proxy) = slow_flux_setup("").await;
    let long = tokio::spawn(
        client()
            .post(proxy.url("/sdapi/v1/txt2img"))
            .json(
                &json!({"prompt": "long", "steps": 300, "width": 1024, "height": 1024,
                          "override_settings": {"sd_model_checkpoint": FLUX}}),
            )
            .send(),
    );
    status_until(&proxy, "the generation running", |s| {
        s["backends"][0]["running"]["work"] == "generation"
    })
    .await;
    let change = tokio::spawn(
        client()
            .post(proxy.url("/sdapi/v1/options"))
            .json(&json!({"sd_model_checkpoint": SDXL}))
            .send(),
    );
    let status = status_until(&proxy, "the options call queued", |s| {
        s["backends"][0]["queue"][0]["work"] == "options"
    })
    .await;
    assert_eq!(status["backends"][0]["queue"][0]["profile"], "sdxl");
    assert_eq!(change.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(long.await.unwrap().unwrap().status(), StatusCode::OK);

    let generation = last_generation(&sim);
    let change = api_options(&sim).pop().unwrap();
    assert_eq!(change["changed"]["sd_model_checkpoint"], SDXL);
    assert_eq!(change["changed"]["forge_inference_memory"], 5632.0);
    assert!(
        change["at_ms"].as_f64() >= generation["ended_ms"].as_f64(),
        "the change waited for the generation: {change} {generation}"
    );
    let metrics = reqwest::get(proxy.url("/proxy/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let waits = metrics
        .lines()
        .find(|l| l.starts_with("forge_proxy_queue_wait_seconds_count"))
        .unwrap_or_default()
        .to_owned();
    assert!(waits.ends_with(" 2"), "both waited in the queue: {waits}");
}

#[tokio::test]
async fn a_checkpoint_listed_after_refresh_checkpoints_is_resolved_at_once() {
    let sim = sim_with(|_| {}).await;
    let proxy = Proxy::start(&sim.url(), "").await;
    let generate = |checkpoint: &'static str| {
        client()
            .post(proxy.url("/sdapi/v1/txt2img"))
            .json(&json!({"prompt": "new", "steps": 1,
                          "override_settings": {"sd_model_checkpoint": checkpoint}}))
            .send()
    };
    // A new file in Forge's models folder: not listed, so not a name Forge knows, until
    // refresh-checkpoints.
    sim.state()
        .add_checkpoint_file("my-flux-finetune.safetensors:flux".parse().unwrap());
    let before = generate("my-flux-finetune").await.unwrap();
    assert_eq!(before.headers()["x-forge-proxy-profile"], "sd15");
    assert_eq!(last_generation(&sim)["checkpoint"], SD15);

    let refreshed = client()
        .post(proxy.url("/sdapi/v1/refresh-checkpoints"))
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), StatusCode::OK);
    // At once, well within the interval between catalog reads for a missing name.
    let after = generate("my-flux-finetune").await.unwrap();
    assert_eq!(after.headers()["x-forge-proxy-profile"], "flux");
    let ran = last_generation(&sim);
    assert_eq!(ran["checkpoint"], "my-flux-finetune.safetensors");
    assert_eq!(ran["forge_inference_memory"], 4096.0);
}
