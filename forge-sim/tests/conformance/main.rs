//! The conformance suite: HTTP cases written once and run against two targets.
//!
//! - By default (and in CI) each case starts its own forge-sim on `127.0.0.1:0` and
//!   reads what happened from the simulator's journal.
//! - By hand against a real Forge: `FORGE_URL=http://127.0.0.1:7861 FORGE_LOG=/path/to/forge.log
//!   cargo test -p forge-sim --test conformance -- --test-threads=1`. `FORGE_LOG` is the file
//!   Forge's standard output goes to; its lines (`[GPU Setting]`, `Loading Model:`,
//!   `[Unload]`) stand in for the journal. Cases that need `--api-auth` run against
//!   `FORGE_AUTH_URL` (a second Forge started with `--api-auth $FORGE_AUTH`), and say
//!   `skipped` when it is not set. Each case sets the state it relies on first, so the cases
//!   can run in any order against one long-running Forge; they take one lock so that two of
//!   them never share it at once.
//!
//! Every case names the line of Forge's source it follows where that is not obvious.

mod behaviour;
mod generation;
mod http;
mod option_values;
mod options;
mod progress;
mod reading;

use std::path::PathBuf;
use std::sync::OnceLock;

use forge_sim::{start, CheckpointSpec, SimConfig, SimServer};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::{Mutex, MutexGuard};

/// What a case learned from one call: status, headers and the body (JSON when it parses).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub bytes: bytes::Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or_else(|error| {
            panic!(
                "not JSON ({error}): {}",
                String::from_utf8_lossy(&self.bytes[..self.bytes.len().min(300)])
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Something that happened inside Forge, as its journal (forge-sim) or its log (Forge) tells.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// `refresh_memory_management_settings` ran: the `[GPU Setting]` or `[Low VRAM Warning]`
    /// line, with the inference memory it names (MiB).
    MemoryRefresh { inference_mib: f64 },
    /// A generation (re)loaded its model from the checkpoint file (`Loading Model:`).
    LoadFromDisk,
    /// A generation moved every model off the card and back without reading the file
    /// (`need_global_unload`: `[Unload] Trying to free all memory`).
    UnloadAll,
}

/// Where the cases run.
pub struct Target {
    base: String,
    client: reqwest::Client,
    /// The simulator this case started, when not against a real Forge.
    sim: Option<SimServer>,
    /// Forge's log file and how far into it this case has read.
    log: Option<(PathBuf, u64)>,
    /// The last journal entry this case has seen.
    seen_seq: u64,
    /// Basic credentials of a target started with `--api-auth`.
    pub auth: Option<(String, String)>,
    _serial: Option<MutexGuard<'static, ()>>,
}

/// The checkpoints of the simulator a case starts: the real Forge set-up's two.
pub fn sim_checkpoints() -> Vec<CheckpointSpec> {
    ["tiny-sd15-random.safetensors", "tiny-xl-random.safetensors"]
        .into_iter()
        .map(CheckpointSpec::new)
        .collect()
}

fn serial() -> &'static Mutex<()> {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| Mutex::new(()))
}

fn sim_config() -> SimConfig {
    SimConfig {
        time_scale: 0.0005,
        image_bytes: 2_000,
        checkpoints: sim_checkpoints(),
        ..SimConfig::default()
    }
}

impl Target {
    /// The target of a case that needs no `--api-auth`.
    pub async fn open() -> Target {
        match std::env::var("FORGE_URL") {
            Ok(url) => Target::real(url, None).await,
            Err(_) => Target::sim(sim_config()).await,
        }
    }

    /// A target whose generations take long enough to watch, interrupt or leave: a
    /// simulator at a twentieth of Forge's time rather than the default's two-thousandth.
    pub async fn open_timed() -> Target {
        match std::env::var("FORGE_URL") {
            Ok(url) => Target::real(url, None).await,
            Err(_) => {
                Target::sim(SimConfig {
                    time_scale: 0.05,
                    ..sim_config()
                })
                .await
            }
        }
    }

    /// A txt2img body that runs about one to four seconds on this target (a target from
    /// `open_timed` for the simulator): a few steps on a CPU-only Forge, many more simulated.
    pub fn long_generation(&self) -> Value {
        if self.is_sim() {
            serde_json::json!({"prompt": "long", "steps": 400, "width": 512, "height": 512})
        } else {
            serde_json::json!({"prompt": "long", "steps": 12, "width": 64, "height": 64})
        }
    }

    /// A txt2img body a tenth to a fifth as long as `long_generation`'s, and still far longer
    /// than an answer takes to travel.
    pub fn brief_generation(&self) -> Value {
        if self.is_sim() {
            serde_json::json!({"prompt": "brief", "steps": 40, "width": 512, "height": 512})
        } else {
            serde_json::json!({"prompt": "brief", "steps": 2, "width": 64, "height": 64})
        }
    }

    /// A target started with `--api-auth user:secret`, or `None` (the case is skipped) when
    /// running against a real Forge without `FORGE_AUTH_URL`.
    pub async fn open_with_api_auth() -> Option<Target> {
        if std::env::var("FORGE_URL").is_err() {
            let config = SimConfig {
                api_auth: Some("user:secret".into()),
                ..sim_config()
            };
            let mut target = Target::sim(config).await;
            target.auth = Some(("user".into(), "secret".into()));
            return Some(target);
        }
        let url = std::env::var("FORGE_AUTH_URL").ok()?;
        let auth = std::env::var("FORGE_AUTH").unwrap_or_else(|_| "user:secret".into());
        let (user, pass) = auth.split_once(':').expect("FORGE_AUTH is user:pass");
        Some(Target::real(url, Some((user.into(), pass.into()))).await)
    }

    async fn sim(config: SimConfig) -> Target {
        let sim = start(config).await.expect("simulator starts");
        Target {
            base: sim.url(),
            client: reqwest::Client::new(),
            sim: Some(sim),
            log: None,
            seen_seq: 0,
            auth: None,
            _serial: None,
        }
    }

    async fn real(url: String, auth: Option<(String, String)>) -> Target {
        let serial = serial().lock().await;
        let log = std::env::var_os("FORGE_LOG").map(|path| {
            let path = PathBuf::from(path);
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            (path, len)
        });
        Target {
            base: url.trim_end_matches('/').to_owned(),
            // A fresh connection per request: after an answer made from an exception (a 500),
            // uvicorn resets the connection, and a request sent on it meanwhile fails.
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("client"),
            sim: None,
            log,
            seen_seq: 0,
            auth,
            _serial: Some(serial),
        }
    }

    pub fn is_sim(&self) -> bool {
        self.sim.is_some()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request builder for `path`, with this target's credentials when it has some.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.client.request(method, self.url(path));
        match &self.auth {
            Some((user, pass)) => builder.basic_auth(user, Some(pass)),
            None => builder,
        }
    }

    pub async fn send(&self, builder: reqwest::RequestBuilder) -> Answer {
        let response = builder.send().await.expect("request reaches the target");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        Answer {
            status,
            headers,
            bytes,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send(self.request(reqwest::Method::POST, path).json(body))
            .await
    }

    /// `POST /sdapi/v1/options` that must succeed.
    pub async fn set_options(&self, body: Value) {
        let answer = self.post("/sdapi/v1/options", &body).await;
        assert_eq!(answer.status, 200, "options {body}: {:?}", answer.bytes);
    }

    /// `GET /sdapi/v1/options`.
    pub async fn options(&self) -> Value {
        self.get("/sdapi/v1/options").await.json()
    }

    /// The catalog's checkpoints (`GET /sdapi/v1/sd-models`), in Forge's order.
    pub async fn checkpoints(&self) -> Vec<Value> {
        match self.get("/sdapi/v1/sd-models").await.json() {
            Value::Array(models) => models,
            other => panic!("sd-models is not a list: {other}"),
        }
    }

    /// A small, fast txt2img (64x64, one step) that must succeed.
    pub async fn generate(&self) -> Value {
        let answer = self
            .post(
                "/sdapi/v1/txt2img",
                &serde_json::json!({"prompt": "conformance", "steps": 1, "width": 64, "height": 64}),
            )
            .await;
        assert_eq!(answer.status, 200, "txt2img: {:?}", answer.bytes);
        answer.json()
    }

    /// What happened since the last call (or since the target was opened).
    pub fn events(&mut self) -> Vec<Event> {
        if let Some(sim) = &self.sim {
            let journal: Vec<Value> = sim
                .state()
                .journal()
                .into_iter()
                .filter(|entry| entry["seq"].as_u64().unwrap_or(0) > self.seen_seq)
                .collect();
            if let Some(last) = journal.last() {
                self.seen_seq = last["seq"].as_u64().unwrap_or(self.seen_seq);
            }
            return behaviour::from_journal(&journal);
        }
        let Some((path, offset)) = &mut self.log else {
            panic!("set FORGE_LOG to Forge's log file to check behaviour against a real Forge");
        };
        let text = std::fs::read(&*path).expect("FORGE_LOG is readable");
        let start = (*offset as usize).min(text.len());
        *offset = text.len() as u64;
        behaviour::from_log(&String::from_utf8_lossy(&text[start..]))
    }

    /// Forgets what happened so far.
    pub fn clear_events(&mut self) {
        self.events();
    }
}

/// JSON values equal with numbers compared as numbers (`1024 == 1024.0`), as Python's `==`.
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}
