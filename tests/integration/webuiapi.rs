//! A real client: the Python package `webuiapi`, through the proxy, against forge-sim.

use std::process::Command;

use serde_json::Value;

use crate::support::{sim, Proxy};

/// The Python that has `webuiapi`: `FORGE_TEST_PYTHON` (set by scripts/test), else `python3`.
fn python() -> String {
    std::env::var("FORGE_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

#[tokio::test]
async fn webuiapi_client_works_through_the_proxy() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    let script = format!(
        "{}/tests/clients/webuiapi_flow.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let port = proxy.addr.port().to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .args([script.as_str(), "127.0.0.1", port.as_str()])
            .output()
    })
    .await
    .unwrap()
    .expect("run python (set FORGE_TEST_PYTHON or run scripts/test)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'webuiapi'"),
        "webuiapi is not installed: run scripts/test, or pip install -r tests/requirements.txt"
    );
    assert!(output.status.success(), "webuiapi flow failed:\n{stderr}");
    let seen: Value = serde_json::from_slice(&output.stdout).expect("flow output");
    assert_eq!(seen["txt2img_images"], 1);
    assert_eq!(seen["img2img_images"], 1);
    assert_eq!(seen["jpeg_quality"], 91);
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
