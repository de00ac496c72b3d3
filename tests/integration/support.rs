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
    pub async fn start(backend_url: &str, extra_toml: &str) -> Proxy {
        let toml = format!("[[backends]]\nurl = \"{backend_url}\"\n{extra_toml}");
        let config = from_toml_str(&toml).expect("test config");
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
}

impl ProxyProcess {
    pub fn start(args: &[&str]) -> ProxyProcess {
        Self::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> ProxyProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_forge-vram-proxy"));
        for (key, _) in std::env::vars() {
            if key.starts_with("FORGE_VRAM_PROXY_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
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
    }
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
