//! `SIGHUP` against the binary: a new key file and a changed profile take effect while a
//! generation runs, which completes; connections stay open; a file that does not validate
//! changes nothing; backends come and go.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{client, get_json, get_json_as, journal_of, sim_with, ProxyProcess, SD15};

/// A folder for one test's files, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let path = std::env::temp_dir().join(format!("fvp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Dir(path)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(backends: &[String], key_file: &Path, sd15_inference_mib: u64) -> String {
    let mut text = String::new();
    for url in backends {
        text += &format!("[[backends]]\nurl = \"{url}\"\nvram_source = \"backend\"\n\n");
    }
    text += &format!(
        r#"[health]
interval = "200ms"

[[access.keys]]
name = "ops"
key_file = "{}"
role = "admin"

[[profiles]]
name = "sd15"
patterns = ["*"]
presets = ["sd"]
inference_memory_mib = {sd15_inference_mib}
"#,
        key_file.display()
    );
    text
}

/// The log event whose message is `message`, waited for.
async fn log_line(proxy: &ProxyProcess, message: &str) -> Value {
    proxy
        .log_event(message, |event| event["message"] == message)
        .await
}

fn reload_lines(proxy: &ProxyProcess, message: &str) -> usize {
    proxy
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|line| line.contains(&format!("\"message\":\"{message}\"")))
        .count()
}

/// One request on an open keep-alive connection: its status and body.
async fn on_connection(stream: &mut TcpStream, path: &str, key: &str) -> (u16, String) {
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: proxy\r\nauthorization: Bearer {key}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 16384];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(n > 0, "the connection was closed");
        received.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&received).into_owned();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let head = text[..end].to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.trim().parse().ok())
            .expect("a content-length");
        if received.len() >= end + 4 + length {
            let status = text[9..12].parse().unwrap();
            return (status, text[end + 4..end + 4 + length].to_owned());
        }
    }
}

async fn metric(proxy: &ProxyProcess, key: &str, line_start: &str) -> String {
    let text = client()
        .get(proxy.url("/proxy/metrics"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .unwrap_or_default()
        .to_owned()
}

/// Until Forge reports a job (its own `/sdapi/v1/progress`, asked directly).
async fn until_forge_runs_one(sim: &forge_sim::SimServer) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let progress: Value = get_json(format!("{}/sdapi/v1/progress", sim.url())).await;
        if progress["state"]["job_count"].as_i64().unwrap_or(0) > 0 {
            return;
        }
        assert!(
            Instant::now() < until,
            "the generation never started: {progress}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A txt2img of `steps` steps sent with the key `key-one`.
async fn generate(url: String, steps: u32) -> reqwest::Result<reqwest::Response> {
    client()
        .post(url)
        .bearer_auth("key-one")
        .header("content-type", "application/json")
        .body(txt2img(steps))
        .send()
        .await
}

fn txt2img(steps: u32) -> String {
    json!({
        "prompt": "a lighthouse", "steps": steps,
        "override_settings": {"sd_model_checkpoint": SD15}
    })
    .to_string()
}

#[tokio::test]
async fn sighup_changes_keys_and_profiles_under_a_running_generation_and_a_bad_file_changes_nothing(
) {
    // A generation of 40 steps at this scale runs for a few seconds.
    let sim = sim_with(|c| c.time_scale = 0.3).await;
    let dir = Dir::new("reload");
    let key_file = dir.write("ops.key", "key-one\n");
    let file = dir.write("config.toml", &config(&[sim.url()], &key_file, 3000));
    let proxy = ProxyProcess::start(&["--config", file.to_str().unwrap()]);

    let status = client()
        .get(proxy.url("/proxy/status"))
        .bearer_auth("key-one")
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), StatusCode::OK);
    let status: Value = status.json().await.unwrap();
    let loaded_at = status["config"]["loaded_at"].as_str().unwrap().to_owned();
    assert_eq!(status["config"]["file"], file.to_str().unwrap());

    // A keep-alive connection opened before the reload.
    let mut kept = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(
        on_connection(&mut kept, "/sdapi/v1/options", "key-one")
            .await
            .0,
        200
    );

    let running = tokio::spawn(generate(proxy.url("/sdapi/v1/txt2img"), 40));
    until_forge_runs_one(&sim).await;

    std::fs::write(&key_file, "key-two\n").unwrap();
    std::fs::write(&file, config(&[sim.url()], &key_file, 3500)).unwrap();
    proxy.signal("HUP");
    let reloaded = log_line(&proxy, "configuration reloaded").await;
    assert_eq!(reloaded["keys"], 1);
    assert!(
        !running.is_finished(),
        "the generation was still running at the reload (make it longer)"
    );

    // The new key works at once, on the connection opened before; the old one no longer.
    assert_eq!(
        on_connection(&mut kept, "/sdapi/v1/options", "key-two")
            .await
            .0,
        200
    );
    let (status, body) = on_connection(&mut kept, "/sdapi/v1/options", "key-one").await;
    assert_eq!(status, 401, "{body}");

    // The generation under way completes, with the memory of the profile it started with.
    let answered = running
        .await
        .unwrap()
        .expect("the generation's connection held");
    assert_eq!(answered.status(), StatusCode::OK);
    let generations = journal_of(&sim, "generation");
    assert_eq!(
        generations.last().unwrap()["forge_inference_memory"],
        3000.0
    );

    // The next one gets the changed profile.
    let next = client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .bearer_auth("key-two")
        .header("content-type", "application/json")
        .body(txt2img(2))
        .send()
        .await
        .unwrap();
    assert_eq!(next.status(), StatusCode::OK);
    let generations = journal_of(&sim, "generation");
    assert_eq!(
        generations.last().unwrap()["forge_inference_memory"],
        3500.0
    );
    assert_eq!(
        metric(
            &proxy,
            "key-two",
            "forge_proxy_config_reloads_total{result=\"ok\"}"
        )
        .await,
        "forge_proxy_config_reloads_total{result=\"ok\"} 1"
    );
    let status: Value = get_json_as(proxy.url("/proxy/status"), "key-two").await;
    let reloaded_at = status["config"]["loaded_at"].as_str().unwrap().to_owned();
    assert!(reloaded_at >= loaded_at, "{reloaded_at} < {loaded_at}");

    // A file that does not validate: the error logged, nothing changed.
    std::fs::write(&file, "[timeouts]\nconnect = \"soon\"\n").unwrap();
    proxy.signal("HUP");
    let refused = log_line(
        &proxy,
        "configuration not reloaded: the running one stays in force",
    )
    .await;
    assert_eq!(
        refused["error"],
        "config key `timeouts.connect`: \"soon\" is not valid: expected a duration like \"30s\", \"500ms\", \"10m\", or \"off\""
    );
    assert_eq!(reload_lines(&proxy, "configuration reloaded"), 1);
    assert_eq!(
        on_connection(&mut kept, "/sdapi/v1/options", "key-two")
            .await
            .0,
        200
    );
    assert_eq!(
        metric(
            &proxy,
            "key-two",
            "forge_proxy_config_reloads_total{result=\"error\"}"
        )
        .await,
        "forge_proxy_config_reloads_total{result=\"error\"} 1"
    );
    let status: Value = get_json_as(proxy.url("/proxy/status"), "key-two").await;
    assert_eq!(status["config"]["loaded_at"], reloaded_at);
    // Still the process it was.
    assert!(proxy.log_text().contains("configuration not reloaded"));
}

#[tokio::test]
async fn a_removed_backend_finishes_its_generation_and_a_new_one_takes_the_next() {
    let first = sim_with(|c| c.time_scale = 0.3).await;
    let second = sim_with(|_| {}).await;
    let dir = Dir::new("reload-backends");
    let key_file = dir.write("ops.key", "key-one\n");
    let file = dir.write("config.toml", &config(&[first.url()], &key_file, 3000));
    let proxy = ProxyProcess::start(&["--config", file.to_str().unwrap()]);

    let running = tokio::spawn(generate(proxy.url("/sdapi/v1/txt2img"), 40));
    until_forge_runs_one(&first).await;
    std::fs::write(&file, config(&[second.url()], &key_file, 3000)).unwrap();
    proxy.signal("HUP");
    let reloaded = log_line(&proxy, "configuration reloaded").await;
    assert_eq!(
        (
            reloaded["backends_added"].clone(),
            reloaded["backends_removed"].clone()
        ),
        (json!(1), json!(1))
    );

    let status: Value = get_json_as(proxy.url("/proxy/status"), "key-one").await;
    let backends = status["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2, "{status:#}");
    assert_eq!(backends[0]["url"], first.url());
    assert_eq!(backends[0]["retired"], true);
    assert_eq!(backends[0]["generation_running"], true);
    assert_eq!(backends[1]["url"], second.url());

    let answered = running
        .await
        .unwrap()
        .expect("the generation's connection held");
    assert_eq!(answered.status(), StatusCode::OK);
    assert_eq!(journal_of(&first, "generation").len(), 1);

    // Once its first health check has passed, the new backend takes the next generation.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let ready: Value = get_json(proxy.url("/proxy/ready")).await;
        if ready["status"] == "ready" {
            assert_eq!(ready["backends"].as_array().unwrap().len(), 1, "{ready}");
            assert_eq!(ready["backends"][0]["url"], second.url());
            break;
        }
        assert!(
            Instant::now() < until,
            "the new backend never became ready: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let next = generate(proxy.url("/sdapi/v1/txt2img"), 2).await.unwrap();
    assert_eq!(next.status(), StatusCode::OK);
    assert_eq!(journal_of(&second, "generation").len(), 1);
    assert_eq!(journal_of(&first, "generation").len(), 1);

    // Drained, the removed backend leaves the status.
    let status: Value = get_json_as(proxy.url("/proxy/status"), "key-one").await;
    let urls: Vec<&Value> = status["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| &b["url"])
        .collect();
    assert_eq!(urls, [&json!(second.url())]);
}
