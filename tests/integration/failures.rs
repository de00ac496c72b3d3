//! What a user sees when a generation cannot be prepared, and what Forge never receives.

use http::StatusCode;
use serde_json::{json, Value};

use crate::support::{
    client, get_json, journal_of, proxy_error, sim, txt2img_with, Proxy, FLUX, SD15,
};

#[tokio::test]
async fn options_call_answering_500_is_a_502_and_no_generation_runs() {
    let sim = sim().await;
    // A profile that switches to a checkpoint Forge does not have: Forge answers 500.
    let config = format!(
        "[[backends]]\nurl = \"{}\"\nvram_source = \"backend\"\n\n[[profiles]]\nname = \"broken\"\n\
         inference_memory_mib = 3000\noptions = {{ sd_model_checkpoint = \"missing.safetensors\" }}\n",
        sim.url()
    );
    let proxy = Proxy::start_toml(&config).await;
    let response = client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .header("x-forge-model-type", "broken")
        .json(&json!({"prompt": "x", "steps": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let message = format!(
        "forge-vram-proxy: could not prepare backend {} for the generation, which was not sent: \
         POST /sdapi/v1/options: backend answered 500: model 'missing.safetensors' not found",
        sim.url()
    );
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        proxy_error("OptionsCallFailed", &message)
    );
    assert!(
        journal_of(&sim, "generation").is_empty(),
        "no generation reached Forge"
    );
    // The proxy no longer trusts its view and re-reads before the next generation.
    let status: Value = get_json(proxy.url("/proxy/status")).await;
    assert_eq!(status["backends"][0]["options_known"], false);
    assert_eq!(status["decisions"][0]["outcome"], "failed");
    let ok = client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .json(&json!({"steps": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_model_type_header_is_400_naming_the_known_profiles() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    let response = client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .header("x-forge-model-type", "sd9")
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let message = "forge-vram-proxy: unknown model type \"sd9\" in X-Forge-Model-Type: known profiles are flux, sdxl, sd15";
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        proxy_error("UnknownModelType", message)
    );
    assert!(sim.state().journal().is_empty(), "nothing reached Forge");
}

#[tokio::test]
async fn the_model_type_header_is_used_and_not_forwarded() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    let response = client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .header("x-forge-model-type", "SDXL")
        .json(&json!({"prompt": "x", "steps": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-forge-proxy-profile"], "sdxl");
    assert_eq!(
        journal_of(&sim, "generation")[0]["forge_inference_memory"],
        5632.0
    );
    // With the echo endpoint as a generation route, what Forge receives is visible: the
    // header is consumed on generation routes and passes untouched elsewhere.
    let echoing = Proxy::start(&sim.url(), "[generation]\nroutes = [\"/sim/echo\"]\n").await;
    let seen: Value = client()
        .post(echoing.url("/sim/echo"))
        .header("x-forge-model-type", "sdxl")
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        seen["headers"].get("x-forge-model-type").is_none(),
        "{seen}"
    );
    let seen: Value = client()
        .put(echoing.url("/sim/echo"))
        .header("x-forge-model-type", "sdxl")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        seen["headers"].get("x-forge-model-type").is_none(),
        "removed on every route: {seen}"
    );
}

#[tokio::test]
async fn malformed_json_is_forwarded_untouched_and_forges_422_reaches_the_client() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    for body in ["{\"prompt\": \"x\",", "[1, 2, 3]", "\"just a string\""] {
        let direct = client()
            .post(format!("{}/sdapi/v1/txt2img", sim.url()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let proxied = client()
            .post(proxy.url("/sdapi/v1/txt2img"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(proxied.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(
            direct.bytes().await.unwrap(),
            proxied.bytes().await.unwrap(),
            "{body}"
        );
    }
    let health = client()
        .get(proxy.url("/proxy/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let after = client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .body(txt2img_with(SD15))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::OK, "still serving generations");
    assert_eq!(journal_of(&sim, "generation").len(), 1);
}

#[tokio::test]
async fn client_memory_options_are_stripped_by_default_refused_or_honoured_as_configured() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    let body = json!({"prompt": "x", "steps": 2,
        "override_settings": {"sd_model_checkpoint": FLUX, "forge_inference_memory": 700}});
    let response = client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let ran = journal_of(&sim, "generation").pop().unwrap();
    assert_eq!(
        ran["forge_inference_memory"], 4096.0,
        "the proxy's value, not the client's"
    );
    let sets_700 = journal_of(&sim, "options")
        .iter()
        .any(|e| e["changed"]["forge_inference_memory"] == 700.0);
    assert!(!sets_700);

    let posted = client()
        .post(proxy.url("/sdapi/v1/options"))
        .json(&json!({"forge_inference_memory": 700, "jpeg_quality": 77}))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::OK);
    let options: Value = get_json(format!("{}/sdapi/v1/options", sim.url())).await;
    assert_eq!(
        options["jpeg_quality"], 77.0,
        "Forge answers number options as floats"
    );
    assert_eq!(options["forge_inference_memory"], 4096.0);

    let rejecting =
        Proxy::start(&sim.url(), "[memory]\nclient_memory_options = \"reject\"\n").await;
    let refused = client()
        .post(rejecting.url("/sdapi/v1/options"))
        .json(&json!({"forge_inference_memory": 700}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let message = "forge-vram-proxy: the proxy sets forge_inference_memory itself; remove it from the options call (memory.client_memory_options = \"reject\")";
    assert_eq!(
        refused.json::<Value>().await.unwrap(),
        proxy_error("ClientMemoryOptions", message)
    );

    let honouring = Proxy::start(&sim.url(), "[memory]\nclient_memory_options = \"honor\"\n").await;
    let before = journal_of(&sim, "options").len();
    let body = json!({"prompt": "x", "steps": 2,
        "override_settings": {"sd_model_checkpoint": FLUX, "forge_inference_memory": 5000}});
    let response = client()
        .post(honouring.url("/sdapi/v1/txt2img"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-forge-proxy-inference-memory"], "5000");
    let ran = journal_of(&sim, "generation").pop().unwrap();
    assert_eq!(
        ran["forge_inference_memory"], 5000.0,
        "the client's value, applied by the proxy"
    );
    // Applied once by the proxy's call, not set and restored by Forge around the generation.
    let memory_changes: Vec<Value> = journal_of(&sim, "options")[before..]
        .iter()
        .filter(|e| e["changed"].get("forge_inference_memory").is_some())
        .cloned()
        .collect();
    assert_eq!(memory_changes.len(), 1, "{memory_changes:?}");
    assert_eq!(memory_changes[0]["source"], "api");
}

#[tokio::test]
async fn an_inspected_body_over_its_limit_is_413_and_nothing_reaches_forge() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "[limits]\nmax_inspected_body = \"1KiB\"\n").await;
    let big_prompt = "a lighthouse ".repeat(200);
    let response = client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .json(&json!({"prompt": big_prompt, "steps": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let message = "forge-vram-proxy: request body is larger than the limit of 1024 bytes for bodies the proxy inspects (limits.max_inspected_body)";
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        proxy_error("PayloadTooLarge", message)
    );
    assert!(sim.state().journal().is_empty());
    // Pass-through bodies are not held, so this limit does not apply to them.
    let sunk = client()
        .post(proxy.url("/sim/sink"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(sunk.status(), StatusCode::OK);
}
