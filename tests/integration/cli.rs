//! The command line: config files, environment overrides, errors with exit code 2; the
//! `status` and `health` subcommands against running proxies; the text log.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use forge_vram_proxy::config::from_toml_str;
use serde_json::Value;

use crate::support::{
    client, dead_backend, get_json, get_json_as, runtime_dir, sim, sim_with, txt2img_with, Proxy,
    ProxyProcess, FLUX,
};

fn proxy() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_forge-vram-proxy"));
    for (key, _) in std::env::vars() {
        if key.starts_with("FORGE_VRAM_PROXY_") {
            command.env_remove(key);
        }
    }
    command
}

fn example_path() -> String {
    format!(
        "{}/config/forge-vram-proxy.toml",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn the_commented_example_config_loads_and_matches_the_defaults() {
    let text = std::fs::read_to_string(example_path()).unwrap();
    let example = from_toml_str(&text).expect("example config is valid");
    assert_eq!(example.raw, forge_vram_proxy::Config::default().raw);
    let output = proxy()
        .args(["check-config", &example_path()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(printed.contains("listen = \"127.0.0.1:7870\""), "{printed}");
    assert!(
        printed.contains("url = \"http://127.0.0.1:7860\""),
        "{printed}"
    );
}

#[test]
fn no_config_file_means_embedded_defaults() {
    let output = proxy().arg("check-config").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout).unwrap();
    // Parsing merges onto the defaults: the printed text itself must carry them.
    assert!(printed.contains("listen = \"127.0.0.1:7870\""), "{printed}");
    let effective = from_toml_str(&printed).unwrap();
    assert_eq!(effective.raw, forge_vram_proxy::Config::default().raw);
}

#[test]
fn bad_config_exits_2_naming_key_value_and_expectation() {
    let dir = std::env::temp_dir().join(format!("fvp-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[timeouts]\nconnect = \"soon\"\n").unwrap();
    let output = proxy().arg("--config").arg(&file).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr,
        "forge-vram-proxy: invalid configuration:\n  config key `timeouts.connect`: \"soon\" is not valid: expected a duration like \"30s\", \"500ms\", \"10m\", or \"off\"\n"
    );

    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7870\"\nbackend = \"http://x\"\n",
    )
    .unwrap();
    let output = proxy().arg("check-config").arg(&file).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("config key `backend` is not a known key (in ")
            && stderr
                .contains("expected one of listen, backends, timeouts, limits, generation, log"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn environment_overrides_the_file_and_flags_override_both() {
    let output = proxy()
        .args(["check-config", &example_path()])
        .env("FORGE_VRAM_PROXY_LISTEN", "0.0.0.0:9000")
        .env("FORGE_VRAM_PROXY_TIMEOUTS__CONNECT", "2s")
        .env("FORGE_VRAM_PROXY_BACKEND", "http://gpu-a:7860")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(printed.contains("listen = \"0.0.0.0:9000\""), "{printed}");
    assert!(printed.contains("connect = \"2s\""), "{printed}");
    assert!(printed.contains("url = \"http://gpu-a:7860\""), "{printed}");

    let output = proxy()
        .args(["--listen", "127.0.0.1:9001", "check-config"])
        .env("FORGE_VRAM_PROXY_LISTEN", "0.0.0.0:9000")
        .output()
        .unwrap();
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(printed.contains("listen = \"127.0.0.1:9001\""), "{printed}");

    let output = proxy()
        .arg("check-config")
        .env("FORGE_VRAM_PROXY_LOG__FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        "forge-vram-proxy: invalid configuration:\n  config key `log.format`: \"xml\" is not valid: expected \"text\" or \"json\"\n"
    );
}

#[test]
fn gpus_lists_what_nvml_sees() {
    let gpu = crate::support::FakeGpu::new(12288);
    gpu.set(12288, 900);
    let library = crate::support::fake_nvml_library();
    let output = proxy()
        .args(["gpus", "--nvml-library", library.to_str().unwrap()])
        .env("FAKE_NVML_DEVICES", &gpu.path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let expected = format!(
        "INDEX  UUID{pad}  NAME           TOTAL MiB  USED MiB  FREE MiB\n\
         0      {uuid}  Simulated RTX      12288       900     11388\n",
        pad = " ".repeat(gpu.uuid.len() - 4),
        uuid = gpu.uuid
    );
    assert_eq!(String::from_utf8(output.stdout).unwrap(), expected);
}

#[test]
fn gpus_says_exactly_why_nvml_cannot_be_used() {
    let output = proxy()
        .args(["gpus", "--nvml-library", "/nonexistent/libnvidia-ml.so.1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        "forge-vram-proxy: cannot load the NVML library /nonexistent/libnvidia-ml.so.1: cannot open shared object file: No such file or directory\n"
    );
}

#[test]
fn backend_may_be_given_several_times() {
    let output = proxy()
        .args([
            "--backend",
            "http://gpu-a:7860",
            "--backend",
            "http://gpu-b:7860",
            "check-config",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let effective = from_toml_str(&String::from_utf8(output.stdout).unwrap()).unwrap();
    let urls: Vec<&str> = effective.backends.iter().map(|b| b.url.as_str()).collect();
    assert_eq!(urls, ["http://gpu-a:7860", "http://gpu-b:7860"]);
}

/// The `config.toml: |` block of a Kubernetes ConfigMap, dedented.
fn configmap_toml(manifest: &str) -> String {
    let mut lines = manifest
        .lines()
        .skip_while(|l| l.trim() != "config.toml: |");
    let key = lines.next().expect("a config.toml key");
    let key_indent = key.len() - key.trim_start().len();
    let block: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > key_indent)
        .collect();
    let indent = block
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    block
        .iter()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_deployment_configs_are_valid_proxy_configs() {
    let root = env!("CARGO_MANIFEST_DIR");
    let compose =
        std::fs::read_to_string(format!("{root}/deploy/compose/forge-vram-proxy.toml")).unwrap();
    let config = from_toml_str(&compose).expect("deploy/compose/forge-vram-proxy.toml");
    assert_eq!(config.backends[0].url, "http://forge:7860");
    for manifest in [
        "deploy/kubernetes/sidecar/configmap.yaml",
        "deploy/kubernetes/gateway/forge-vram-proxy.yaml",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{manifest}")).unwrap();
        let toml = configmap_toml(&text);
        let config = from_toml_str(&toml).unwrap_or_else(|e| panic!("{manifest}: {e}\n{toml}"));
        assert!(config
            .backends
            .iter()
            .all(|b| b.vram == forge_vram_proxy::config::VramPreference::Backend));
    }
}

#[test]
fn the_text_log_to_a_pipe_has_no_colour_codes() {
    let runtime = runtime_dir();
    let mut child = proxy()
        .args(["--listen", "127.0.0.1:0", "--log-format", "text"])
        .args(["--backend", &dead_backend()])
        .env("XDG_RUNTIME_DIR", &runtime)
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut log = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).split(b'\n') {
        let line = line.unwrap();
        let listening = String::from_utf8_lossy(&line).contains("listening");
        log.extend_from_slice(&line);
        log.push(b'\n');
        if listening {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(runtime);
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("listening"), "{log}");
    assert!(!log.contains('\x1b'), "escape codes in {log:?}");
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `forge-vram-proxy health` with `args` and `env`, in `runtime_dir`, to its end.
fn health(
    runtime_dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    proxy()
        .arg("health")
        .args(args)
        .env("XDG_RUNTIME_DIR", runtime_dir)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn health_finds_a_proxy_whose_address_was_a_flag() {
    let serving = ProxyProcess::start(&["--backend", &dead_backend()]);
    // As in the image: its variable names the default port, the proxy was given another.
    let elsewhere = dead_backend();
    let elsewhere = elsewhere.trim_start_matches("http://");
    let output = health(
        &serving.runtime_dir,
        &[],
        &[("FORGE_VRAM_PROXY_LISTEN", elsewhere)],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    // `--listen` names the address to ask, whatever the runtime file says.
    let output = health(&serving.runtime_dir, &["--listen", elsewhere], &[]);
    assert_eq!(output.status.code(), Some(1));
    let said = text(&output.stderr);
    assert!(
        said.starts_with(&format!(
            "forge-vram-proxy: unhealthy: unreachable: http://{elsewhere}/proxy/health"
        )) && said.contains("(given by --listen)"),
        "{said}"
    );
    let output = health(
        &serving.runtime_dir,
        &["--listen", &serving.addr.to_string()],
        &[],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
}

#[test]
fn health_finds_a_proxy_whose_address_was_in_the_environment() {
    let serving = ProxyProcess::start_as_given(
        &["--backend", &dead_backend()],
        &[("FORGE_VRAM_PROXY_LISTEN", "127.0.0.1:0")],
    );
    let output = health(&serving.runtime_dir, &[], &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
}

#[test]
fn health_finds_a_proxy_whose_address_was_in_its_config_file_and_the_file_goes_at_exit() {
    let dir = runtime_dir();
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n[[backends]]\nurl = \"{}\"\n",
            dead_backend()
        ),
    )
    .unwrap();
    let mut serving = ProxyProcess::start_as_given(&["--config", config.to_str().unwrap()], &[]);
    let output = health(&serving.runtime_dir, &[], &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let announced = serving.runtime_dir.join("forge-vram-proxy.json");
    let file: Value = serde_json::from_slice(&std::fs::read(&announced).unwrap()).unwrap();
    assert_eq!(file["listen"], serving.addr.to_string());
    assert_eq!(file["tls"], false);
    assert_eq!(file["pid"], serving.child.id());

    serving.signal("TERM");
    assert!(serving.child.wait().unwrap().success());
    assert!(!announced.exists(), "the runtime file outlived the proxy");
    let output = health(&serving.runtime_dir, &[], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr)
            .contains("the configured listen address; no running proxy announced itself in"),
        "{}",
        text(&output.stderr)
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// `forge-vram-proxy ARGS` run to its end, without blocking the proxy served in this
/// process; none of the test process's proxy variables, and a runtime directory of its own.
/// `forge-vram-proxy status` with `args`: what it printed, once it exited with `code`.
async fn status_shown(args: &[&str], code: i32) -> String {
    let argv: Vec<&str> = std::iter::once("status")
        .chain(args.iter().copied())
        .collect();
    let output = run_cli(&argv, &[]).await;
    let shown = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(code),
        "{shown}{}",
        text(&output.stderr)
    );
    shown
}

async fn run_cli(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let runtime = runtime_dir();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_forge-vram-proxy"));
    for (key, _) in std::env::vars() {
        if key.starts_with("FORGE_VRAM_PROXY_") {
            command.env_remove(key);
        }
    }
    let output = command
        .args(args)
        .env("XDG_RUNTIME_DIR", &runtime)
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run forge-vram-proxy");
    let _ = std::fs::remove_dir_all(runtime);
    output
}

#[tokio::test]
async fn status_shows_the_backend_its_profile_and_decision_and_exits_0() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    let response = client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .body(txt2img_with(FLUX))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let url = format!("http://{}", proxy.addr);
    let shown = status_shown(&["--url", &url], 0).await;
    for expected in [
        format!("forge-vram-proxy {url}: ready, 1 of 1 backends healthy"),
        format!("{}: healthy (", sim.url()),
        // The checkpoint is Forge's own again: an override lasts one generation.
        "  loaded   profile flux, checkpoint ".to_owned(),
        "  memory   [".to_owned(),
        "  running  nothing".to_owned(),
        "  queue    empty".to_owned(),
        "the last 1 of 1 decisions".to_owned(),
        "txt2img  flux".to_owned(),
        "4096 MiB   applied (changed)".to_owned(),
    ] {
        assert!(
            shown.contains(&expected),
            "{expected:?} missing in\n{shown}"
        );
    }
}

#[tokio::test]
async fn status_exits_1_when_the_only_backend_is_down() {
    let proxy = Proxy::start(
        &dead_backend(),
        "\n[health]\ninterval = \"100ms\"\nunhealthy_after = 1\n",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_json(proxy.url("/proxy/status")).await["backends"][0]["healthy"] != false {
        assert!(
            Instant::now() < deadline,
            "the backend never went unhealthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("http://{}", proxy.addr);
    let shown = status_shown(&["--url", &url], 1).await;
    assert!(
        shown.contains(&format!(
            "forge-vram-proxy {url}: NOT READY, 0 of 1 backends healthy"
        )),
        "{shown}"
    );
    assert!(
        shown.contains(": UNHEALTHY (check failed: unreachable"),
        "{shown}"
    );
}

#[tokio::test]
async fn status_exits_2_when_nothing_answers_and_says_so() {
    let url = dead_backend();
    let output = run_cli(&["status", "--url", &url], &[]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty(), "{}", text(&output.stdout));
    let said = text(&output.stderr);
    assert!(
        said.starts_with(&format!(
            "forge-vram-proxy: unreachable: {url}/proxy/status: Connection refused"
        )),
        "{said}"
    );
}

const STATUS_ADMIN: &str = "status-admin-key-1e4f";
const STATUS_READ: &str = "status-read-key-8a20";
const STATUS_APPS: &str = "status-apps-key-c3d9";

#[tokio::test]
async fn status_needs_a_key_where_keys_are_set_and_shows_other_keys_to_admins_only() {
    let sim = sim_with(|c| c.time_scale = 0.3).await;
    let config = format!(
        "[[backends]]\nurl = \"{}\"\nvram_source = \"backend\"\n\n\
         [[access.keys]]\nname = \"ops\"\nkey = \"{STATUS_ADMIN}\"\nrole = \"admin\"\n\n\
         [[access.keys]]\nname = \"viewer\"\nkey = \"{STATUS_READ}\"\nrole = \"read\"\n\n\
         [[access.keys]]\nname = \"apps\"\nkey = \"{STATUS_APPS}\"\nrole = \"generate\"\n",
        sim.url()
    );
    let proxy = Proxy::start_toml(&config).await;
    let url = format!("http://{}", proxy.addr);

    let output = run_cli(&["status", "--url", &url], &[]).await;
    assert_eq!(output.status.code(), Some(2));
    let said = text(&output.stderr);
    assert!(
        said.starts_with(&format!(
            "forge-vram-proxy: unauthorized: {url}/proxy/status answered 401 Unauthorized"
        )),
        "{said}"
    );

    let generation = tokio::spawn(
        client()
            .post(proxy.url("/sdapi/v1/txt2img"))
            .bearer_auth(STATUS_APPS)
            .body(txt2img_with(FLUX))
            .send(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status: Value = get_json_as(proxy.url("/proxy/status"), STATUS_ADMIN).await;
        if status["backends"][0]["running"].is_object() {
            break;
        }
        assert!(Instant::now() < deadline, "the generation never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let output = run_cli(
        &["status", "--url", &url],
        &[("FORGE_VRAM_PROXY_KEY", STATUS_ADMIN)],
    )
    .await;
    let shown = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{shown}{}",
        text(&output.stderr)
    );
    assert!(
        shown.contains("  running  generation flux for ") && shown.contains(", key apps"),
        "{shown}"
    );
    let shown = status_shown(&["--url", &url, "--key", STATUS_READ], 0).await;
    assert!(shown.contains("  running  generation flux for "), "{shown}");
    assert!(!shown.contains("key apps"), "{shown}");
    assert_eq!(generation.await.unwrap().unwrap().status(), 200);
}
