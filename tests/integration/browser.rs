//! The dashboard (`/proxy/ui`) in a real browser: headless Chromium driven over WebDriver
//! (chromedriver, spoken to directly over HTTP), in front of the proxy binary with two
//! simulated GPUs and two forge-sims. The page must show what `/proxy/status` says, follow
//! a generation live without a reload, and drain a backend when an admin asks.
//!
//! Needs `chromedriver` and `chromium` (`CHROMEDRIVER` and `CHROMIUM` name other paths).
//! Without them the test says so and passes, unless `FORGE_TEST_BROWSER=required` (CI).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::StatusCode;
use serde_json::{json, Value};

use crate::support::{
    client, fake_nvml_library, get_json, txt2img_with, FakeGpu, ProxyProcess, FLUX, SD15,
};

/// What each card shows, read from the page's stable hooks.
const CARDS: &str = r#"
return [...document.querySelectorAll('[data-backend]')].map(card => {
  const f = name => card.querySelector(`[data-field="${name}"]`);
  return {
    url: f('url').textContent,
    card_total: f('card-total').dataset.value ?? null,
    card_total_text: f('card-total').textContent,
    profile: f('profile').dataset.value ?? null,
    queue: Number(f('queue-length').dataset.value),
    running: f('running').dataset.state,
    running_profile: f('running-profile').textContent,
    drained: card.dataset.drained === 'true',
    drained_badge: !f('drained').hidden,
    actions: !f('actions').hidden,
  };
});"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_status_live_and_drains_a_backend() {
    let Some(tools) = BrowserTools::find() else {
        return;
    };
    let started = Instant::now();

    // Two Forges: the second slow enough that a Flux generation takes a few seconds.
    let fast = crate::support::sim().await;
    let slow = crate::support::sim_with(|c| c.time_scale = 0.3).await;
    // Two cards of different sizes; SD 1.5 and SDXL go to the first, Flux to the second.
    let gpu = FakeGpu::new(12288);
    let devices = json!([
        {"uuid": "GPU-00000000-0000-4000-8000-0000000000a0", "name": "Simulated RTX 3060",
         "total_mib": 12288, "used_mib": 2400,
         "processes": [{"pid": 10, "used_mib": 1800}, {"pid": 11, "used_mib": 300}]},
        {"uuid": gpu.uuid, "name": "Simulated RTX 4090", "total_mib": 24576, "used_mib": 900},
    ]);
    std::fs::write(&gpu.path, devices.to_string()).unwrap();
    let dir = temp_dir("dashboard");
    let file = dir.join("config.toml");
    let config = format!(
        "[[backends]]\nurl = \"{}\"\ngpu = 0\nprofiles = [\"sd15\", \"sdxl\"]\n\n\
         [[backends]]\nurl = \"{}\"\ngpu = 1\nprofiles = [\"flux\"]\n",
        fast.url(),
        slow.url()
    );
    std::fs::write(&file, config).unwrap();
    let library = fake_nvml_library();
    let proxy = ProxyProcess::start_with_env(
        &[
            "--config",
            file.to_str().unwrap(),
            "--nvml-library",
            library.to_str().unwrap(),
        ],
        &[("FAKE_NVML_DEVICES", gpu.path.to_str().unwrap())],
    );
    // The first backend has a reading and a loaded profile before the page opens.
    let warm = generate(&proxy, txt2img_with(SD15), "browser-warm-up").await;
    assert_eq!(warm.status(), StatusCode::OK);

    let browser = Browser::start(&tools).await;
    browser.go(&proxy.url("/proxy/ui")).await;
    browser
        .wait_for("the stream live and both cards", |page| async move {
            let live = page
                .script("return document.getElementById('connection').dataset.state")
                .await;
            let cards = page.script(CARDS).await;
            (live == "live" && cards.as_array().is_some_and(|c| c.len() == 2)).then_some(())
        })
        .await;
    // Set once: still there at the end, so nothing below reloaded the page.
    browser
        .script("window.loadedOnce = true; return true")
        .await;

    // The page says what the status says.
    let status = get_json(proxy.url("/proxy/status")).await;
    let cards = browser.script(CARDS).await;
    for (i, backend) in status["backends"].as_array().unwrap().iter().enumerate() {
        let card = &cards[i];
        assert_eq!(card["url"], backend["url"], "card {i}: {card}");
        let total = backend["last_reading"]["total_mib"].as_u64();
        assert_eq!(
            card["card_total"]
                .as_str()
                .map(|t| t.parse::<u64>().unwrap()),
            total,
            "card {i}: {card}"
        );
        assert_eq!(card["profile"], backend["profile"].as_str().unwrap_or(""));
        assert_eq!(card["queue"], backend["queue"].as_array().unwrap().len());
        assert_eq!(card["actions"], true, "no keys: everyone is an admin");
    }
    assert_eq!(cards[0]["card_total_text"], "12,288 MiB");
    assert_eq!(cards[0]["profile"], "sd15");
    // Read through NVML from the start, before any generation.
    assert_eq!(cards[1]["card_total_text"], "24,576 MiB");

    // A Flux generation runs on the slow backend; a second one waits behind it.
    let flux = |id: &'static str| {
        let url = proxy.url("/sdapi/v1/txt2img");
        tokio::spawn(async move {
            client()
                .post(url)
                .header("content-type", "application/json")
                .header("x-request-id", id)
                .body(txt2img_with(FLUX))
                .send()
                .await
                .map(|r| r.status())
        })
    };
    let first = flux("browser-flux-1");
    browser
        .wait_for("flux running on backend 1", |page| async move {
            let cards = page.script(CARDS).await;
            (cards[1]["running"] == "running" && cards[1]["running_profile"] == "flux")
                .then_some(())
        })
        .await;
    let second = flux("browser-flux-2");
    browser
        .wait_for("one generation waiting on backend 1", |page| async move {
            let cards = page.script(CARDS).await;
            (cards[1]["running"] == "running" && cards[1]["queue"] == 1).then_some(())
        })
        .await;
    browser
        .wait_for("the first Flux decision in the table", |page| async move {
            let row = page
                .script(
                    "const r = document.querySelector('#decisions tr[data-request-id=\"browser-flux-1\"]');\
                     return r ? r.textContent : null",
                )
                .await;
            row.as_str()
                .is_some_and(|text| text.contains("flux") && text.contains("24,576"))
                .then_some(())
        })
        .await;
    let cards = browser.script(CARDS).await;
    assert_eq!(
        cards[1]["card_total_text"], "24,576 MiB",
        "read for the generation"
    );
    // The bars move in 0.4 s.
    tokio::time::sleep(Duration::from_millis(600)).await;
    browser
        .screenshot(&target_dir().join("dashboard.png"))
        .await;

    // Drain the first backend from its card, through the page's confirmation.
    browser
        .click("[data-backend=\"0\"] [data-action=\"drain\"]")
        .await;
    browser.click("#confirm [data-confirm=\"ok\"]").await;
    let drained = Instant::now() + Duration::from_secs(10);
    while get_json(proxy.url("/proxy/status")).await["backends"][0]["drained"] != true {
        assert!(Instant::now() < drained, "the status never said drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser
        .wait_for("backend 0 drained on the page, the action recorded", |page| async move {
            let cards = page.script(CARDS).await;
            let action = page
                .script(
                    "const r = document.querySelector('#decisions tr[data-kind=\"action\"][data-route=\"drain\"]');\
                     return r ? r.textContent : null",
                )
                .await;
            (cards[0]["drained"] == true
                && cards[0]["drained_badge"] == true
                && action.as_str().is_some_and(|a| a.contains("done")))
            .then_some(())
        })
        .await;
    assert_eq!(
        browser.script("return window.loadedOnce === true").await,
        true
    );

    // A phone's width: one column, nothing wider than the screen.
    browser.window(390, 844).await;
    browser
        .wait_for("the page within a phone's width", |page| async move {
            let fits = page
                .script("return document.documentElement.scrollWidth <= window.innerWidth && window.innerWidth <= 400")
                .await;
            (fits == true).then_some(())
        })
        .await;
    browser
        .screenshot(&target_dir().join("dashboard-phone.png"))
        .await;

    for generation in [first, second] {
        assert_eq!(generation.await.unwrap().unwrap(), StatusCode::OK);
    }
    browser.quit().await;
    std::fs::remove_dir_all(dir).unwrap();
    eprintln!("dashboard checked in {:?}", started.elapsed());
}

async fn generate(proxy: &ProxyProcess, body: String, request_id: &str) -> reqwest::Response {
    client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .header("content-type", "application/json")
        .header("x-request-id", request_id)
        .body(body)
        .send()
        .await
        .expect("txt2img")
}

/// Where cargo builds: the screenshots go there (`target/dashboard.png`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/debug/deps/integration-…
    exe.ancestors().nth(3).expect("target folder").to_path_buf()
}

fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!("fvp-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// chromedriver and the browser it drives.
struct BrowserTools {
    driver: PathBuf,
    chromium: PathBuf,
}

impl BrowserTools {
    /// Both found; else `None` after saying the test skipped, or a failure when CI requires
    /// the browser test.
    fn find() -> Option<BrowserTools> {
        let path = |var: &str, default: &str| {
            PathBuf::from(std::env::var_os(var).unwrap_or_else(|| default.into()))
        };
        let tools = BrowserTools {
            driver: path("CHROMEDRIVER", "/usr/bin/chromedriver"),
            chromium: path("CHROMIUM", "/usr/bin/chromium"),
        };
        let missing: Vec<String> = [&tools.driver, &tools.chromium]
            .into_iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if missing.is_empty() {
            return Some(tools);
        }
        let why = format!(
            "the browser test needs {} (Debian: apt-get install chromium chromium-driver; \
             or set CHROMEDRIVER and CHROMIUM)",
            missing.join(" and ")
        );
        if std::env::var("FORGE_TEST_BROWSER").as_deref() == Ok("required") {
            panic!("FORGE_TEST_BROWSER=required: {why}");
        }
        eprintln!("skipped: {why}");
        None
    }
}

/// One WebDriver session in headless Chromium. chromedriver runs in a process group of its
/// own, so whatever happens the browser goes with it.
struct Browser {
    driver: Child,
    session: String,
    base: String,
    http: reqwest::Client,
    profile: PathBuf,
}

impl Browser {
    async fn start(tools: &BrowserTools) -> Browser {
        use std::os::unix::process::CommandExt as _;
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let driver = Command::new(&tools.driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", tools.driver.display()));
        let profile = temp_dir("chromium");
        let mut browser = Browser {
            driver,
            session: String::new(),
            base: format!("http://127.0.0.1:{port}"),
            http: client(),
            profile,
        };
        let ready = Instant::now() + Duration::from_secs(20);
        loop {
            let answer = browser.http.get(format!("{}/status", browser.base)).send();
            if let Ok(answer) = answer.await {
                let body: Value = answer.json().await.unwrap_or_default();
                if body["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < ready, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The machine may have no network: nothing in the background may reach for one.
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--hide-scrollbars".to_owned(),
            format!("--user-data-dir={}", browser.profile.display()),
            "--window-size=1280,800".to_owned(),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": tools.chromium, "args": args},
        }}});
        let session = browser.call("POST", "/session", Some(capabilities)).await;
        browser.session = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"))
            .to_owned();
        browser
    }

    /// One WebDriver command; its `value`.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or_else(|| json!({}))),
        };
        let answer = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let ok = answer.status().is_success();
        let body: Value = answer.json().await.expect("WebDriver answers JSON");
        assert!(ok, "WebDriver {method} {path}: {body}");
        body["value"].clone()
    }

    fn at(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    async fn go(&self, url: &str) {
        self.call("POST", &self.at("/url"), Some(json!({"url": url})))
            .await;
    }

    async fn script(&self, script: &str) -> Value {
        let body = json!({"script": script, "args": []});
        self.call("POST", &self.at("/execute/sync"), Some(body))
            .await
    }

    /// A real click on the element `css` finds.
    async fn click(&self, css: &str) {
        let found = self
            .call(
                "POST",
                &self.at("/element"),
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        let id = found["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"));
        self.call("POST", &self.at(&format!("/element/{id}/click")), None)
            .await;
    }

    async fn window(&self, width: u32, height: u32) {
        let rect = json!({"width": width, "height": height});
        self.call("POST", &self.at("/window/rect"), Some(rect))
            .await;
    }

    async fn screenshot(&self, path: &Path) {
        let png = self.call("GET", &self.at("/screenshot"), None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64 PNG"))
            .expect("base64 PNG");
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }

    /// Polls `check` until it answers `Some`, for up to 30 s (the rest of the suite runs
    /// beside it).
    async fn wait_for<'a, T, F, Fut>(&'a self, what: &str, check: F) -> T
    where
        F: Fn(&'a Browser) -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(found) = check(self).await {
                return found;
            }
            if Instant::now() > deadline {
                let cards = self.script(CARDS).await;
                panic!("the page never showed {what}; its cards: {cards}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn quit(self) {
        self.call("DELETE", &self.at(""), None).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver's whole group: chromedriver and the browser it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
