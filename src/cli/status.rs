//! `forge-vram-proxy status`: the facts of `GET /proxy/status` as a compact table for a
//! terminal (an SSH session on the GPU host).
//!
//! [`render`] is a pure function of the status and the moment it is shown; [`run`] fetches
//! the status, once or every [`WATCH_EVERY`] until Ctrl-C, and its [`Verdict`] is the exit
//! status: 0 ready, 1 answering but not ready, 2 unreachable or unauthorized.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::Value;

use super::{Asked, Target};

/// How often `--watch` redraws.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);
/// How many of the last decisions are shown.
pub const DECISIONS_SHOWN: usize = 5;
/// The width of a card's memory bar, inside its brackets.
const BAR_WIDTH: usize = 40;
/// The longest a decision's reason for its profile, or its error, is shown.
const WHY_WIDTH: usize = 48;
/// Cursor home, then clear the screen: a redraw in place.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// Once, or again every [`WATCH_EVERY`] until Ctrl-C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Once,
    Watch,
}

/// What was found, and the exit status that says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// At least one backend is healthy.
    Ready,
    /// The proxy answers, but no backend is healthy.
    NotReady,
    /// No answer, or not one to show.
    Failed(Asked),
}

impl Verdict {
    pub fn exit_code(&self) -> u8 {
        match self {
            Verdict::Ready => 0,
            Verdict::NotReady => 1,
            Verdict::Failed(_) => 2,
        }
    }
}

/// Prints the status of the proxy at `target` (asked with `key`), once or until Ctrl-C.
/// A failure goes to standard error; when watching it is shown in place of the table too.
pub async fn run(target: &Target, key: Option<&str>, mode: Mode) -> Verdict {
    if mode == Mode::Once {
        let fetched = fetch(target, key).await;
        let verdict = verdict(&fetched);
        match fetched {
            Ok(status) => show(&render(&status, &frame(target))),
            Err(asked) => eprintln!("forge-vram-proxy: {asked}"),
        }
        return verdict;
    }
    let terminal = std::io::stdout().is_terminal();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut last = None;
    loop {
        let fetched = tokio::select! {
            fetched = fetch(target, key) => fetched,
            _ = &mut interrupted => break,
        };
        let mut text = String::new();
        if terminal {
            text.push_str(CLEAR_SCREEN);
        } else if last.is_some() {
            text.push('\n');
        }
        match &fetched {
            Ok(status) => text.push_str(&render(status, &frame(target))),
            Err(asked) => {
                let _ = writeln!(text, "forge-vram-proxy: {asked}");
                let _ = writeln!(text, "(asking again every {} s)", WATCH_EVERY.as_secs());
            }
        }
        show(&text);
        last = Some(verdict(&fetched));
        tokio::select! {
            () = tokio::time::sleep(WATCH_EVERY) => {}
            _ = &mut interrupted => break,
        }
    }
    let verdict = last.unwrap_or_else(|| {
        Verdict::Failed(Asked::Unreachable {
            url: target.base.clone(),
            why: "interrupted before an answer".to_owned(),
        })
    });
    if let Verdict::Failed(asked) = &verdict {
        eprintln!("forge-vram-proxy: {asked}");
    }
    verdict
}

fn frame(target: &Target) -> Frame<'_> {
    Frame {
        url: &target.base,
        now: SystemTime::now(),
    }
}

fn show(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

fn verdict(fetched: &Result<Status, Asked>) -> Verdict {
    match fetched {
        Ok(status) if status.ready() => Verdict::Ready,
        Ok(_) => Verdict::NotReady,
        Err(asked) => Verdict::Failed(asked.clone()),
    }
}

/// `GET /proxy/status`, read.
async fn fetch(target: &Target, key: Option<&str>) -> Result<Status, Asked> {
    let url = format!("{}/proxy/status", target.base);
    let (code, body) = target
        .get("/proxy/status", key)
        .await
        .map_err(|asked| match asked {
            Asked::Unreachable { url, why } => Asked::Unreachable {
                url,
                why: format!("{why} (the address: {})", target.found),
            },
            other => other,
        })?;
    if code == http::StatusCode::UNAUTHORIZED || code == http::StatusCode::FORBIDDEN {
        return Err(Asked::Unauthorized { url, status: code });
    }
    if !code.is_success() {
        return Err(Asked::Unexpected {
            url,
            why: format!("{code}: is it a forge-vram-proxy?"),
        });
    }
    serde_json::from_slice(&body).map_err(|e| Asked::Unexpected {
        url,
        why: format!("not the proxy's status ({e})"),
    })
}

/// The moment a status is shown, and where it came from.
#[derive(Debug, Clone)]
pub struct Frame<'a> {
    pub url: &'a str,
    pub now: SystemTime,
}

/// What the table shows of `/proxy/status` (every field optional: an older or newer proxy
/// still shows what it has).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Status {
    config: ConfigView,
    nvml: Nvml,
    backends: Vec<Backend>,
    decisions: Vec<Decision>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ConfigView {
    loaded_at: Option<String>,
    file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Nvml {
    available: bool,
    error: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Backend {
    url: String,
    gpu: String,
    vram_source: String,
    vram_source_why: Option<String>,
    last_reading: Option<Reading>,
    reading_error: Option<String>,
    /// Forge's own option values, as Forge gave them (a number may come as `4096.0`).
    checkpoint: Value,
    loaded_profile: Option<String>,
    inference_memory_mib: Value,
    healthy: bool,
    health: String,
    retired: bool,
    running: Option<Running>,
    queue: Vec<Waiting>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Reading {
    total_mib: u64,
    used_mib: u64,
    free_mib: u64,
    other_processes_mib: u64,
    gpu_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Running {
    work: String,
    profile: Option<String>,
    key: Option<String>,
    for_ms: u64,
    client_left: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Waiting {
    waited_ms: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Decision {
    at_ms: u64,
    key: Option<String>,
    route: String,
    backend: String,
    profile: String,
    why_profile: WhyProfile,
    computed: Option<Computed>,
    outcome: String,
    reason: String,
    error: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WhyProfile {
    source: String,
    value: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Computed {
    inference_mib: Option<u64>,
}

impl Backend {
    fn checkpoint(&self) -> Option<&str> {
        self.checkpoint.as_str()
    }

    fn inference_memory_mib(&self) -> Option<u64> {
        let mib = &self.inference_memory_mib;
        mib.as_u64()
            .or_else(|| mib.as_f64().filter(|f| *f >= 0.0).map(|f| f.round() as u64))
    }
}

impl Status {
    /// Ready as `/proxy/ready` says it: at least one backend in service is healthy.
    pub fn ready(&self) -> bool {
        self.backends.iter().any(|b| b.healthy && !b.retired)
    }
}

/// The status as text: a summary line, each backend with its card's memory, the last
/// [`DECISIONS_SHOWN`] decisions.
pub fn render(status: &Status, frame: &Frame<'_>) -> String {
    let mut out = String::new();
    let serving: Vec<&Backend> = status.backends.iter().filter(|b| !b.retired).collect();
    let healthy = serving.iter().filter(|b| b.healthy).count();
    let _ = writeln!(
        out,
        "forge-vram-proxy {}: {}, {healthy} of {} backends healthy; {}",
        frame.url,
        if status.ready() { "ready" } else { "NOT READY" },
        serving.len(),
        utc(frame.now).replace('T', " ").replace('Z', " UTC"),
    );
    let _ = writeln!(
        out,
        "config {}, loaded {}; NVML {}",
        status.config.file.as_deref().unwrap_or("(no file)"),
        status.config.loaded_at.as_deref().unwrap_or("-"),
        match (&status.nvml.available, &status.nvml.error) {
            (true, _) => "available".to_owned(),
            (false, Some(error)) => format!("unavailable: {error}"),
            (false, None) => "unavailable".to_owned(),
        }
    );
    for backend in &status.backends {
        out.push('\n');
        render_backend(&mut out, backend);
    }
    out.push('\n');
    render_decisions(&mut out, status);
    out
}

fn render_backend(out: &mut String, backend: &Backend) {
    let health = if backend.healthy {
        format!("healthy ({})", backend.health)
    } else {
        format!("UNHEALTHY ({})", backend.health)
    };
    let retired = if backend.retired {
        "retired (removed by a reload, finishing its work); "
    } else {
        ""
    };
    let _ = writeln!(out, "{}: {retired}{health}", backend.url);
    let name = backend
        .last_reading
        .as_ref()
        .and_then(|r| r.gpu_name.as_deref())
        .map(|name| format!(" ({name})"))
        .unwrap_or_default();
    let source = match (backend.vram_source.as_str(), &backend.vram_source_why) {
        ("nvml", _) => "memory read through NVML".to_owned(),
        (_, Some(why)) => format!("memory read from Forge's /sdapi/v1/memory: {why}"),
        (_, None) => "memory read from Forge's /sdapi/v1/memory".to_owned(),
    };
    let _ = writeln!(out, "  gpu      {}{name}, {source}", backend.gpu);
    match (&backend.last_reading, &backend.reading_error) {
        (Some(reading), error) => {
            let card = Card::of(reading, backend.inference_memory_mib());
            let _ = writeln!(out, "  memory   {}  {} MiB", card.bar(), reading.total_mib);
            let _ = writeln!(out, "           {}", card.legend());
            if let Some(error) = error {
                let _ = writeln!(out, "           the last reading failed: {error}");
            }
        }
        (None, Some(error)) => {
            let _ = writeln!(out, "  memory   no reading: {error}");
        }
        (None, None) => {
            let _ = writeln!(out, "  memory   no reading yet");
        }
    }
    let _ = writeln!(
        out,
        "  loaded   profile {}, checkpoint {}",
        backend.loaded_profile.as_deref().unwrap_or("-"),
        backend.checkpoint().unwrap_or("unknown"),
    );
    let running = match &backend.running {
        None => "nothing".to_owned(),
        Some(running) => {
            let mut line = match running.work.as_str() {
                "options" => "an options call".to_owned(),
                work => work.to_owned(),
            };
            if let Some(profile) = &running.profile {
                let _ = write!(line, " {profile}");
            }
            let _ = write!(line, " for {}", elapsed(running.for_ms));
            if let Some(key) = &running.key {
                let _ = write!(line, ", key {key}");
            }
            if running.client_left {
                line.push_str(", client left (Forge is finishing it)");
            }
            line
        }
    };
    let _ = writeln!(out, "  running  {running}");
    let queue = match backend.queue.iter().map(|w| w.waited_ms).max() {
        None => "empty".to_owned(),
        Some(oldest) => format!(
            "{} waiting, the oldest for {}",
            backend.queue.len(),
            elapsed(oldest)
        ),
    };
    let _ = writeln!(out, "  queue    {queue}");
}

fn render_decisions(out: &mut String, status: &Status) {
    let decisions = &status.decisions;
    if decisions.is_empty() {
        out.push_str("decisions: none yet\n");
        return;
    }
    let shown = &decisions[decisions.len().saturating_sub(DECISIONS_SHOWN)..];
    let _ = writeln!(
        out,
        "the last {} of {} decisions (times in UTC):",
        shown.len(),
        decisions.len()
    );
    let with_backend = status.backends.len() > 1;
    let with_key = shown.iter().any(|d| d.key.is_some());
    let mut rows = vec![Row::new(
        [
            "TIME",
            "BACKEND",
            "ROUTE",
            "KEY",
            "PROFILE",
            "WHY",
            "INFERENCE",
            "OUTCOME",
        ]
        .map(str::to_owned),
    )];
    for decision in shown {
        let why = match &decision.why_profile.value {
            Some(value) => format!("{} {value}", words(&decision.why_profile.source)),
            None => words(&decision.why_profile.source),
        };
        let mut outcome = format!("{} ({})", decision.outcome, words(&decision.reason));
        if let Some(error) = &decision.error {
            let _ = write!(outcome, ": {}", clip(error, WHY_WIDTH));
        }
        rows.push(Row::new([
            utc_time(decision.at_ms),
            decision.backend.clone(),
            decision.route.clone(),
            decision.key.clone().unwrap_or_else(|| "-".to_owned()),
            decision.profile.clone(),
            clip(&why, WHY_WIDTH),
            decision
                .computed
                .as_ref()
                .and_then(|c| c.inference_mib)
                .map_or_else(|| "-".to_owned(), |mib| format!("{mib} MiB")),
            outcome,
        ]));
    }
    let keep = [true, with_backend, true, with_key, true, true, true, true];
    let columns: Vec<usize> = (0..keep.len()).filter(|&c| keep[c]).collect();
    let widths: Vec<usize> = columns
        .iter()
        .map(|&c| {
            rows.iter()
                .map(|r| r.0[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &rows {
        let mut line = String::new();
        for (&c, &width) in columns.iter().zip(&widths) {
            let _ = write!(line, "  {:<width$}", row.0[c]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

struct Row([String; 8]);

impl Row {
    fn new(cells: [String; 8]) -> Self {
        Row(cells)
    }
}

/// A card's memory in four parts, from one reading and the inference memory Forge has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Card {
    /// Used by processes other than Forge (NVML only).
    others: u64,
    /// Used by Forge: its model's weights (and, while it generates, its working memory).
    weights: u64,
    /// The free part Forge keeps for inference (`forge_inference_memory`), as far as free.
    reserve: u64,
    /// `forge_inference_memory`; `None` when Forge's options are not known yet.
    reserve_set: Option<u64>,
    /// Free beyond the reserve.
    free: u64,
}

impl Card {
    fn of(reading: &Reading, inference_mib: Option<u64>) -> Self {
        let others = reading.other_processes_mib.min(reading.used_mib);
        let free = reading.free_mib;
        let reserve = inference_mib.unwrap_or(0).min(free);
        Card {
            others,
            weights: reading.used_mib - others,
            reserve,
            reserve_set: inference_mib,
            free: free - reserve,
        }
    }

    /// `[#####====----......]`: others, weights, reserve, free, in proportion.
    fn bar(&self) -> String {
        let parts = [
            (self.others, '#'),
            (self.weights, '='),
            (self.reserve, '-'),
            (self.free, '.'),
        ];
        let total: u64 = parts.iter().map(|(mib, _)| mib).sum();
        let mut bar = String::from("[");
        if total == 0 {
            bar.push_str(&" ".repeat(BAR_WIDTH));
        } else {
            // Each boundary rounded from the running sum, so the parts fill the bar exactly.
            let mut sum = 0u64;
            let mut drawn = 0usize;
            for (mib, mark) in parts {
                sum += mib;
                let until = usize::try_from(
                    (u128::from(sum) * BAR_WIDTH as u128 + u128::from(total) / 2)
                        / u128::from(total),
                )
                .unwrap_or(BAR_WIDTH);
                bar.extend(std::iter::repeat_n(mark, until - drawn));
                drawn = until;
            }
        }
        bar.push(']');
        bar
    }

    fn legend(&self) -> String {
        let reserve = match self.reserve_set {
            None => "- inference reserve unknown".to_owned(),
            Some(set) if set > self.reserve => {
                format!("- inference reserve {} of {set}", self.reserve)
            }
            Some(set) => format!("- inference reserve {set}"),
        };
        format!(
            "# others {}  = weights {}  {reserve}  . free {}  (MiB)",
            self.others, self.weights, self.free
        )
    }
}

/// `850 ms`, `12.3 s`, `4 min 05 s`, `2 h 03 min`.
fn elapsed(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min {:02} s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{} h {:02} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// `2026-12-08T00:00:45Z`.
fn utc(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// `00:00:45`, of milliseconds since the epoch.
fn utc_time(at_ms: u64) -> String {
    let text = utc(UNIX_EPOCH + Duration::from_millis(at_ms));
    text.get(11..19).unwrap_or(&text).to_owned()
}

/// `options_call_failed` as `options call failed`.
fn words(label: &str) -> String {
    label.replace('_', " ")
}

/// At most `width` characters, `..` ending one that was cut.
fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut clipped: String = text.chars().take(width.saturating_sub(2)).collect();
    clipped.push_str("..");
    clipped
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// 2026-12-08T00:00:45Z.
    const NOW_MS: u64 = 1_796_688_045_000;

    fn shown(status: Value) -> String {
        let status: Status = serde_json::from_value(status).unwrap();
        render(
            &status,
            &Frame {
                url: "http://127.0.0.1:7870",
                now: UNIX_EPOCH + Duration::from_millis(NOW_MS),
            },
        )
    }

    fn backend() -> Value {
        json!({
            "url": "http://127.0.0.1:7860",
            "gpu": "0",
            "vram_source": "nvml",
            "vram_source_why": null,
            "last_reading": {"source": "nvml", "total_mib": 12288, "used_mib": 7692,
                "free_mib": 4596, "other_processes_mib": 1024, "gpu_name": "RTX 3060"},
            "reading_error": null,
            "checkpoint": "flux1-dev-Q4_0.gguf [e9c9d702d0]",
            "profile": "flux",
            // As Forge gives its options: a float.
            "inference_memory_mib": 4096.0,
            "options_known": true,
            "generation_running": true,
            "queue_length": 2,
            "healthy": true,
            "health": "check answered 200 OK",
            "retired": false,
            "credentials": "accepted",
            "loaded_profile": "flux",
            "running": {"work": "generation", "profile": "flux", "key": "apps",
                "for_ms": 12_345, "client_left": true},
            "queue": [
                {"work": "generation", "profile": "sdxl", "waited_ms": 4_100, "bypassed": 0},
                {"work": "generation", "profile": "flux", "waited_ms": 900, "bypassed": 0}
            ],
            "serves": "all",
            "weight": 1.0
        })
    }

    fn decision(at_ms: u64, profile: &str, outcome: &str, reason: &str) -> Value {
        json!({
            "at_ms": at_ms,
            "request_id": "r",
            "route": "txt2img",
            "backend": "http://127.0.0.1:7860",
            "profile": profile,
            "why_profile": {"source": "override_checkpoint", "value": "flux1-dev-Q4_0.gguf [e9c9d702d0]"},
            "reading": null,
            "computed": {"inference_mib": 4096, "gpu_weights_mib": 8192, "usable_mib": 12288},
            "options_sent": {},
            "outcome": outcome,
            "reason": reason
        })
    }

    fn status(backends: Vec<Value>, decisions: Vec<Value>) -> Value {
        json!({
            "config": {"loaded_at": "2026-12-08T00:00:40Z", "file": "/etc/forge-vram-proxy/config.toml"},
            "nvml": {"available": true, "error": null},
            "backends": backends,
            "scheduler": {},
            "decisions": decisions,
        })
    }

    #[test]
    fn a_busy_backend_shows_its_card_profile_work_queue_and_decisions() {
        let text = shown(status(
            vec![backend()],
            vec![
                decision(NOW_MS - 45_000, "sd15", "skipped", "within_hysteresis"),
                decision(NOW_MS - 12_345, "flux", "applied", "changed"),
            ],
        ));
        let expected = "\
forge-vram-proxy http://127.0.0.1:7870: ready, 1 of 1 backends healthy; 2026-12-08 00:00:45 UTC
config /etc/forge-vram-proxy/config.toml, loaded 2026-12-08T00:00:40Z; NVML available

http://127.0.0.1:7860: healthy (check answered 200 OK)
  gpu      0 (RTX 3060), memory read through NVML
  memory   [###======================-------------..]  12288 MiB
           # others 1024  = weights 6668  - inference reserve 4096  . free 500  (MiB)
  loaded   profile flux, checkpoint flux1-dev-Q4_0.gguf [e9c9d702d0]
  running  generation flux for 12.3 s, key apps, client left (Forge is finishing it)
  queue    2 waiting, the oldest for 4.1 s

the last 2 of 2 decisions (times in UTC):
  TIME      ROUTE    PROFILE  WHY                                               INFERENCE  OUTCOME
  00:00:00  txt2img  sd15     override checkpoint flux1-dev-Q4_0.gguf [e9c9d..  4096 MiB   skipped (within hysteresis)
  00:00:32  txt2img  flux     override checkpoint flux1-dev-Q4_0.gguf [e9c9d..  4096 MiB   applied (changed)
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn no_healthy_backend_is_not_ready_and_says_why() {
        let mut down = backend();
        down["healthy"] = json!(false);
        down["health"] = json!("unreachable: connection refused");
        down["running"] = Value::Null;
        down["queue"] = json!([]);
        down["last_reading"] = Value::Null;
        down["reading_error"] = json!("connection refused");
        let value = status(vec![down], vec![]);
        let parsed: Status = serde_json::from_value(value.clone()).unwrap();
        assert!(!parsed.ready());
        let text = shown(value);
        assert!(
            text.starts_with(
                "forge-vram-proxy http://127.0.0.1:7870: NOT READY, 0 of 1 backends healthy;"
            ),
            "{text}"
        );
        for line in [
            "http://127.0.0.1:7860: UNHEALTHY (unreachable: connection refused)\n",
            "  memory   no reading: connection refused\n",
            "  running  nothing\n",
            "  queue    empty\n",
            "decisions: none yet\n",
        ] {
            assert!(text.contains(line), "{line:?} missing in\n{text}");
        }
    }

    #[test]
    fn a_retired_backend_does_not_make_the_proxy_ready() {
        let mut retired = backend();
        retired["retired"] = json!(true);
        let parsed: Status = serde_json::from_value(status(vec![retired], vec![])).unwrap();
        assert!(!parsed.ready());
    }

    #[test]
    fn several_backends_and_keys_get_their_columns_and_only_the_last_five_show() {
        let mut second = backend();
        second["url"] = json!("http://gpu-b:7860");
        let decisions: Vec<Value> = (0..7)
            .map(|i| {
                let mut d = decision(
                    NOW_MS - 1000 * (7 - i),
                    "sdxl",
                    "failed",
                    "options_call_failed",
                );
                d["key"] = json!("apps");
                d["error"] = json!("options call answered 500");
                d
            })
            .collect();
        let text = shown(status(vec![backend(), second], decisions));
        assert!(text.contains("the last 5 of 7 decisions"), "{text}");
        assert!(
            text.contains("  TIME      BACKEND                ROUTE    KEY   PROFILE"),
            "{text}"
        );
        assert!(
            text.contains("  00:00:40  http://127.0.0.1:7860  txt2img  apps  sdxl"),
            "{text}"
        );
        assert!(
            text.contains("failed (options call failed): options call answered 500\n"),
            "{text}"
        );
        assert!(!text.contains("00:00:38"), "{text}");
    }

    #[test]
    fn the_bar_fills_its_width_in_proportion() {
        let card = Card {
            others: 0,
            weights: 6144,
            reserve: 3072,
            reserve_set: Some(3072),
            free: 3072,
        };
        assert_eq!(
            card.bar(),
            format!("[{}{}{}]", "=".repeat(20), "-".repeat(10), ".".repeat(10))
        );
        let empty = Card {
            others: 0,
            weights: 0,
            reserve: 0,
            reserve_set: None,
            free: 0,
        };
        assert_eq!(empty.bar().chars().count(), BAR_WIDTH + 2);
    }

    #[test]
    fn a_reserve_larger_than_what_is_free_shows_what_is_left_of_it() {
        let reading = Reading {
            total_mib: 12288,
            used_mib: 10000,
            free_mib: 2288,
            other_processes_mib: 0,
            gpu_name: None,
        };
        let card = Card::of(&reading, Some(4096));
        assert_eq!(card.reserve, 2288);
        assert_eq!(card.free, 0);
        assert_eq!(
            card.legend(),
            "# others 0  = weights 10000  - inference reserve 2288 of 4096  . free 0  (MiB)"
        );
        let unknown = Card::of(&reading, None);
        assert!(unknown.legend().contains("inference reserve unknown"));
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(elapsed(850), "850 ms");
        assert_eq!(elapsed(12_345), "12.3 s");
        assert_eq!(elapsed(245_000), "4 min 05 s");
        assert_eq!(elapsed(7_380_000), "2 h 03 min");
    }

    #[test]
    fn the_exit_status_says_ready_not_ready_or_failed() {
        assert_eq!(Verdict::Ready.exit_code(), 0);
        assert_eq!(Verdict::NotReady.exit_code(), 1);
        let unreachable = Asked::Unreachable {
            url: "http://127.0.0.1:1/proxy/status".to_owned(),
            why: "Connection refused (os error 111)".to_owned(),
        };
        assert_eq!(Verdict::Failed(unreachable).exit_code(), 2);
    }
}
