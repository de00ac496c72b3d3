//! A real client: the Python package `webuiapi`, through the proxy, against forge-sim.

use std::process::Command;

use serde_json::Value;

use crate::support::{journal_of, sim, Proxy, FLUX, SD15};

/// The Python that has `webuiapi`: `FORGE_TEST_PYTHON` (set by scripts/test), else `python3`.
fn python() -> String {
    std::env::var("FORGE_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Runs `tests/clients/SCRIPT` against the proxy; its stdout as JSON.
async fn run_client(script: &str, proxy: &Proxy, extra: &[&str]) -> Value {
    run_client_at(script, proxy.addr.port(), extra).await
}

/// Runs `tests/clients/SCRIPT` against `127.0.0.1:port`; its stdout as JSON.
pub async fn run_client_at(script: &str, port: u16, extra: &[&str]) -> Value {
    let script = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut args = vec![script, "127.0.0.1".to_owned(), port.to_string()];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let output = tokio::task::spawn_blocking(move || Command::new(python()).args(&args).output())
        .await
        .unwrap()
        .expect("run python (set FORGE_TEST_PYTHON or run scripts/test)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'webuiapi'"),
        "webuiapi is not installed: run scripts/test, or pip install -r tests/requirements.txt"
    );
    assert!(output.status.success(), "webuiapi client failed:\n{stderr}");
    serde_json::from_slice(&output.stdout).expect("client output")
}

#[tokio::test]
async fn webuiapi_client_works_through_the_proxy() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    let seen = run_client("webuiapi_flow.py", &proxy, &[]).await;
    assert_eq!(seen["txt2img_images"], 1);
    assert_eq!(seen["img2img_images"], 1);
    assert_eq!(
        seen["jpeg_quality"], 91.0,
        "Forge answers number options as floats"
    );
    assert_eq!(seen["txt2img_seed"], 11);
    let models = seen["models"].as_array().unwrap();
    assert_eq!(models.len(), 3, "{seen}");

    // What the simulator ran, from its journal.
    let journal = sim.state().journal();
    let routes: Vec<&str> = journal
        .iter()
        .filter(|e| e["kind"] == "generation")
        .map(|e| e["route"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["txt2img", "img2img"]);
    assert!(journal
        .iter()
        .any(|e| e["kind"] == "options" && e["changed"]["jpeg_quality"] == 91));
}

#[tokio::test]
async fn webuiapi_switching_flux_and_sd15_runs_each_with_its_memory() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    let seen = run_client("webuiapi_profiles.py", &proxy, &[FLUX, SD15]).await;
    assert_eq!(seen[0]["images"], 1);
    // webuiapi always sends cfg_scale (its own default, 7): the client's value is kept.
    assert_eq!(seen[0]["cfg_scale"], 7.0, "{seen}");
    assert_eq!(seen[1]["images"], 1);
    let ran: Vec<(String, f64)> = journal_of(&sim, "generation")
        .iter()
        .map(|g| {
            (
                g["checkpoint"].as_str().unwrap().to_owned(),
                g["forge_inference_memory"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ran, [(FLUX.to_owned(), 4096.0), (SD15.to_owned(), 10240.0)]);
}
