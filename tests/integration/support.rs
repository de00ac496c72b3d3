//! Shared helpers: the simulator in-process, the proxy in-process or as its real binary.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use forge_sim::{SimConfig, SimServer};
use forge_vram_proxy::config::from_toml_str;
use tokio::sync::oneshot;

/// A simulator with tiny timings, so generations take milliseconds.
pub async fn sim() -> SimServer {
    sim_with(|_| {}).await
}

pub async fn sim_with(adjust: impl FnOnce(&mut SimConfig)) -> SimServer {
    let mut config = SimConfig {
        time_scale: 0.001,
        image_bytes: 2_000,
        ..SimConfig::default()
    };
    adjust(&mut config);
    forge_sim::start(config).await.expect("start forge-sim")
}

/// The proxy served in this process by `run()` on 127.0.0.1:0; stops when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Proxy {
    /// A proxy in front of `backend_url`, reading VRAM from the backend's `/sdapi/v1/memory`
    /// (so a GPU on the test machine plays no part); `extra_toml` continues the backend's
    /// table.
    pub async fn start(backend_url: &str, extra_toml: &str) -> Proxy {
        let toml = format!(
            "[[backends]]\nurl = \"{backend_url}\"\nvram_source = \"backend\"\n{extra_toml}"
        );
        Self::start_toml(&toml).await
    }

    /// A proxy from a whole configuration file's text.
    pub async fn start_toml(toml: &str) -> Proxy {
        let config = from_toml_str(toml).expect("test config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(forge_vram_proxy::run(listener, config, async move {
            let _ = stopped.await;
        }));
        Proxy {
            addr,
            stop: Some(stop),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The real `forge-vram-proxy` binary as a child process, logging JSON lines we keep.
pub struct ProxyProcess {
    pub addr: SocketAddr,
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Its own `XDG_RUNTIME_DIR`, where it writes its runtime file (never the user's).
    pub runtime_dir: std::path::PathBuf,
}

impl ProxyProcess {
    pub fn start(args: &[&str]) -> ProxyProcess {
        Self::start_with_env(args, &[])
    }

    /// Listening on `127.0.0.1:0` (given by `--listen`).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> ProxyProcess {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Self::start_as_given(&all, env)
    }

    /// Listening where `args` and `env` say.
    pub fn start_as_given(args: &[&str], env: &[(&str, &str)]) -> ProxyProcess {
        let runtime_dir = runtime_dir();
        let mut command = Command::new(env!("CARGO_BIN_EXE_forge-vram-proxy"));
        for (key, _) in std::env::vars() {
            if key.starts_with("FORGE_VRAM_PROXY_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .args(["--log-format", "json"])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .env("XDG_RUNTIME_DIR", &runtime_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn forge-vram-proxy");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                    if event["message"] == "listening" {
                        let _ = tx.send(event["addr"].as_str().unwrap_or_default().to_owned());
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("proxy did not start: {:?}", log.lock().unwrap()));
        ProxyProcess {
            addr: addr.parse().unwrap(),
            child,
            log,
            runtime_dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Peak resident memory of the process so far (`VmHWM`), in bytes, as the kernel reports it.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM line");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("VmHWM value");
        kib * 1024
    }

    /// The first JSON log event `wanted` takes, waiting for it up to 10 s.
    pub async fn log_event(
        &self,
        what: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.log.lock().unwrap().iter().find_map(|line| {
                let event: serde_json::Value = serde_json::from_str(line).ok()?;
                wanted(&event).then_some(event)
            });
            if let Some(event) = found {
                return event;
            }
            assert!(
                std::time::Instant::now() < until,
                "no {what} in the log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.runtime_dir);
    }
}

/// A new, empty directory to serve as a process's `XDG_RUNTIME_DIR`.
pub fn runtime_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("fvp-run-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a runtime directory");
    dir
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
}

/// An address nothing listens on.
pub fn dead_backend() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// A valid 8x8 PNG, base64-encoded, as clients send in `init_images`.
pub fn tiny_png_base64() -> String {
    use base64::Engine as _;
    let mut png = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png, 8, 8);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("png header");
        writer
            .write_image_data(&[128u8; 8 * 8 * 3])
            .expect("png data");
    }
    base64::engine::general_purpose::STANDARD.encode(png)
}

/// The stand-in NVML library built by `cargo build -p fake-nvml` (and `cargo test --workspace`).
pub fn fake_nvml_library() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("test binary folder");
    let name = format!(
        "{}fake_nvml{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let candidates = [deps.join(&name), deps.join("..").join(&name)];
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "the fake NVML library is missing ({}): run `cargo build -p fake-nvml` \
                 (`cargo test --workspace` builds it too)",
                candidates[0].display()
            )
        })
}

/// The fake NVML's device file: what the "live" GPU reports, changeable while the proxy runs.
pub struct FakeGpu {
    pub path: std::path::PathBuf,
    pub uuid: String,
}

impl FakeGpu {
    pub fn new(total_mib: u64) -> FakeGpu {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("fvp-gpu-{}-{n}.json", std::process::id()));
        let gpu = FakeGpu {
            path,
            uuid: format!("GPU-00000000-0000-4000-8000-{n:012}"),
        };
        gpu.set(total_mib, 600);
        gpu
    }

    /// Writes a new reading; the proxy sees it on its next NVML call.
    pub fn set(&self, total_mib: u64, used_mib: u64) {
        let devices = serde_json::json!([{
            "uuid": self.uuid, "name": "Simulated RTX", "total_mib": total_mib, "used_mib": used_mib
        }]);
        std::fs::write(&self.path, devices.to_string()).expect("write fake GPU file");
    }

    /// The proxy binary in front of `backend`, reading this GPU through the fake NVML.
    pub fn proxy(&self, backend: &str, extra_args: &[&str]) -> ProxyProcess {
        let library = fake_nvml_library();
        let library = library.to_str().expect("utf-8 path");
        let mut args = vec!["--backend", backend, "--nvml-library", library];
        args.extend_from_slice(extra_args);
        let path = self.path.to_str().expect("utf-8 path").to_owned();
        ProxyProcess::start_with_env(&args, &[("FAKE_NVML_DEVICES", &path)])
    }
}

impl Drop for FakeGpu {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The simulator's default checkpoints, by family.
pub const FLUX: &str = "flux1-dev-Q4_0.gguf";
pub const SDXL: &str = "sd_xl_base_1.0.safetensors";
pub const SD15: &str = "v1-5-pruned-emaonly.safetensors";

/// A txt2img body that asks for `checkpoint` through `override_settings`.
pub fn txt2img_with(checkpoint: &str) -> String {
    serde_json::json!({
        "prompt": "a lighthouse", "steps": 2,
        "override_settings": {"sd_model_checkpoint": checkpoint}
    })
    .to_string()
}

/// The simulator's journal entries of one kind.
/// The title of one of the simulator's checkpoints, as `sd-models` lists it.
pub async fn title_of(sim: &SimServer, file: &str) -> String {
    let models = get_json(format!("{}/sdapi/v1/sd-models", sim.url())).await;
    models
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["title"].as_str())
        .find(|title| title.starts_with(&format!("{file} [")))
        .unwrap_or_else(|| panic!("{file} is not in the catalog: {models}"))
        .to_owned()
}

pub fn journal_of(sim: &SimServer, kind: &str) -> Vec<serde_json::Value> {
    sim.state()
        .journal()
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

/// A tiny deterministic generator, so a random mix is the same on every run.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `GET url`, its JSON answer.
pub async fn get_json(url: impl reqwest::IntoUrl) -> serde_json::Value {
    client()
        .get(url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("a JSON answer")
}

/// `get_json` with a client key, sent as a bearer token.
pub async fn get_json_as(url: impl reqwest::IntoUrl, key: &str) -> serde_json::Value {
    client()
        .get(url)
        .bearer_auth(key)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("a JSON answer")
}

/// The body of one of the proxy's own errors, in Forge's error shape.
pub fn proxy_error(kind: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"error": kind, "detail": message, "body": "", "message": message, "errors": message})
}
