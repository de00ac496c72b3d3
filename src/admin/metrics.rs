//! The proxy's Prometheus metrics: what it forwarded, how long generations took, which
//! memory decisions it made and what the GPUs looked like when it made them.
//!
//! Handlers record through [`Metrics`]; `/proxy/metrics` serves [`Metrics::render`] with
//! [`CONTENT_TYPE`]. The text is the classic Prometheus format (0.0.4) rather than
//! OpenMetrics, because every scraper reads it and it has no `# EOF` terminator or
//! `_created` series that simpler parsers trip over.

use std::borrow::Cow;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

use crate::backend::vram::ReadingSource;
use crate::decide::plan::{Outcome, Why};
use crate::forward::pool::ConnectionFigures;

/// The `Content-Type` to serve [`Metrics::render`]'s text with: the Prometheus text
/// format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Every metric's name starts with this, so the proxy's series stand apart from Forge's
/// or the node exporter's on the same dashboard.
const PREFIX: &str = "forge_proxy";

/// Upper bounds (seconds) of the generation-duration buckets. A generation takes from
/// under a second (a small SD 1.5 image on a fast card) to several minutes (Flux at high
/// resolution, or a first load from disk), so the buckets grow roughly exponentially up
/// to the ten minutes after which a generation is as good as stuck.
const GENERATION_BUCKETS: [f64; 14] = [
    0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0,
];

/// A memory value as a gauge: `u64` so a MiB count is stored as it is, with no
/// conversion to saturate.
type MibGauge = Gauge<u64, AtomicU64>;

/// A histogram family needs a constructor because histograms have no `Default`; a plain
/// function pointer keeps the type nameable.
type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// Borrowed for the fixed route names: no allocation per request.
    route: Cow<'static, str>,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyRequestLabels {
    key: String,
    route: Cow<'static, str>,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GenerationLabels {
    backend: String,
    profile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OptionsCallLabels {
    backend: String,
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GpuLabels {
    /// The backend whose card it is: two remote Forges may both be GPU 0 of their hosts.
    backend: String,
    gpu: String,
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionStateLabels {
    backend: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionDroppedLabels {
    backend: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProfileSwitchLabels {
    backend: String,
    from: String,
    to: String,
}

/// The proxy's Prometheus metrics, shared by every handler (cheap to clone: `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

/// The registry and handles to its families: recording goes through the handles, and
/// the registry only exists to encode them all at once.
struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    key_requests: Family<KeyRequestLabels, Counter>,
    generation_duration: HistogramFamily<GenerationLabels>,
    options_calls: Family<OptionsCallLabels, Counter>,
    vram_total: Family<GpuLabels, MibGauge>,
    vram_used: Family<GpuLabels, MibGauge>,
    inference_memory: Family<BackendLabels, MibGauge>,
    profile_switches: Family<ProfileSwitchLabels, Counter>,
    queue_length: Family<BackendLabels, MibGauge>,
    in_rotation: Family<BackendLabels, MibGauge>,
    queue_wait: HistogramFamily<BackendLabels>,
    reloads_avoided: Family<BackendLabels, Counter>,
    retries: Counter,
    left_to_forge: Counter,
    clients_gone: Counter,
    connections_refused: Counter,
    inspect_refused: Counter,
    config_reloads: Family<ReloadLabels, Counter>,
    connections: Family<ConnectionStateLabels, Gauge>,
    connections_opened: Family<BackendLabels, Counter>,
    connections_reused: Family<BackendLabels, Counter>,
    connections_dropped: Family<ConnectionDroppedLabels, Counter>,
    connection_retries: Family<BackendLabels, Counter>,
}

fn generation_histogram() -> Histogram {
    Histogram::new(GENERATION_BUCKETS)
}

/// A family of generation-length histograms, one per label set.
fn histogram_family<S: Clone + std::hash::Hash + Eq>() -> HistogramFamily<S> {
    Family::new_with_constructor(generation_histogram)
}

/// Registers `metric` under `name` (prefixed) and keeps a handle to record through.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    /// A fresh set of metrics, all series empty until something is recorded.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix(PREFIX);
        let inner = Inner {
            requests: registered(&mut r, "requests", "Finished requests by route and response status", Family::default()),
            key_requests: registered(&mut r, "client_requests", "Finished requests by client key (access.keys), route and response status", Family::default()),
            generation_duration: registered(&mut r, "generation_duration_seconds", "Time from a generation getting its backend to its response headers", histogram_family()),
            options_calls: registered(&mut r, "options_calls", "Options decisions before a generation or a checkpoint change, by outcome and reason", Family::default()),
            vram_total: registered(&mut r, "vram_total_mib", "Total memory of a GPU in MiB at its latest reading", Family::default()),
            vram_used: registered(&mut r, "vram_used_mib", "Used memory of a GPU in MiB at its latest reading", Family::default()),
            inference_memory: registered(&mut r, "inference_memory_mib", "The backend's forge_inference_memory in MiB as the proxy last set or read it", Family::default()),
            profile_switches: registered(&mut r, "profile_switches", "Moves of a backend from one profile to another, each a model reload", Family::default()),
            queue_length: registered(&mut r, "queue_length", "Generations waiting in the proxy for a backend", Family::default()),
            queue_wait: registered(&mut r, "queue_wait_seconds", "Time a generation waited in the proxy before its backend took it", histogram_family()),
            reloads_avoided: registered(&mut r, "reloads_avoided", "Generations taken ahead of older ones because their profile was already loaded", Family::default()),
            retries: registered(&mut r, "retries", "Generations moved to another backend: the first failed before the request was sent, or went unhealthy while they waited", Counter::default()),
            left_to_forge: registered(&mut r, "left_to_forge", "Generations Forge refuses (a body it cannot read, a field its model does not validate), forwarded untouched with nothing changed for them", Counter::default()),
            clients_gone: registered(&mut r, "clients_gone", "Generations whose client went away before Forge answered; the backend stayed held until it had", Counter::default()),
            connections_refused: registered(&mut r, "connections_refused", "Client connections refused at limits.max_connections", Counter::default()),
            inspect_refused: registered(&mut r, "inspect_refused", "Request bodies refused at limits.max_inspected_total (503 Busy)", Counter::default()),
            config_reloads: registered(&mut r, "config_reloads", "Configuration reloads on SIGHUP, by result: ok, or error (the running configuration stayed)", Family::default()),
            connections: registered(&mut r, "backend_connections", "Connections to the backend open now, by state: in_use (a request on it) or idle (kept for the next); their sum is what is open", Family::default()),
            connections_opened: registered(&mut r, "backend_connections_opened", "Connections opened to the backend", Family::default()),
            connections_reused: registered(&mut r, "backend_connections_reused", "Requests sent on a kept connection rather than a new one", Family::default()),
            connections_dropped: registered(&mut r, "backend_connections_dropped", "Idle connections left without being used again, by reason: closed (by the backend: stale) or expired (idle past 4 s, below uvicorn's 5 s keep-alive)", Family::default()),
            connection_retries: registered(&mut r, "backend_connection_retries", "Requests sent again on a fresh connection because the kept one was found closed before any byte was written", Family::default()),
            in_rotation: registered(&mut r, "backend_in_rotation", "1 while the backend takes new work; 0 while failed health checks, an admin's drain or a reload that removed it keep it out", Family::default()),
            registry: r,
        };
        // Counted from zero, so the first of each shows in rate() and increase().
        for result in ["ok", "error"] {
            let _ = inner.config_reloads.get_or_create(&ReloadLabels { result });
        }
        Self {
            inner: Arc::new(inner),
        }
    }

    /// One finished request: `route` is "txt2img", "img2img", "options", "pass_through"
    /// or "proxy" (the proxy's own routes).
    /// Generations waiting for `backend` now.
    /// Whether `backend` takes new work now.
    pub fn in_rotation(&self, backend: &str, in_rotation: bool) {
        self.inner
            .in_rotation
            .get_or_create(&BackendLabels {
                backend: backend.to_owned(),
            })
            .set(u64::from(in_rotation));
    }

    pub fn queue_length(&self, backend: &str, waiting: u64) {
        self.inner
            .queue_length
            .get_or_create(&BackendLabels {
                backend: backend.to_owned(),
            })
            .set(waiting);
    }

    /// How long a generation waited before `backend` took it.
    pub fn queue_wait(&self, backend: &str, seconds: f64) {
        let seconds = if seconds.is_finite() {
            seconds.max(0.0)
        } else {
            0.0
        };
        self.inner
            .queue_wait
            .get_or_create(&BackendLabels {
                backend: backend.to_owned(),
            })
            .observe(seconds);
    }

    /// `backend` took a generation of its loaded profile ahead of an older one.
    pub fn reload_avoided(&self, backend: &str) {
        self.inner
            .reloads_avoided
            .get_or_create(&BackendLabels {
                backend: backend.to_owned(),
            })
            .inc();
    }

    /// A generation moved to another backend.
    pub fn retry(&self) {
        self.inner.retries.inc();
    }

    /// A generation Forge will refuse went to it untouched.
    pub fn left_to_forge(&self) {
        self.inner.left_to_forge.inc();
    }

    /// A client connection refused at `limits.max_connections`.
    pub fn connection_refused(&self) {
        self.inner.connections_refused.inc();
    }

    /// A body refused at `limits.max_inspected_total`.
    pub fn inspect_refused(&self) {
        self.inner.inspect_refused.inc();
    }

    /// Handles on `backend`'s connection-pool series, each at zero until something happens.
    pub fn backend_connections(&self, backend: &str) -> ConnectionFigures {
        let one = |family: &Family<BackendLabels, Counter>| {
            family
                .get_or_create(&BackendLabels {
                    backend: backend.to_owned(),
                })
                .clone()
        };
        let state = |state| {
            self.inner
                .connections
                .get_or_create(&ConnectionStateLabels {
                    backend: backend.to_owned(),
                    state,
                })
                .clone()
        };
        let dropped = |reason| {
            self.inner
                .connections_dropped
                .get_or_create(&ConnectionDroppedLabels {
                    backend: backend.to_owned(),
                    reason,
                })
                .clone()
        };
        ConnectionFigures {
            idle: state("idle"),
            in_use: state("in_use"),
            opened: one(&self.inner.connections_opened),
            reused: one(&self.inner.connections_reused),
            retried: one(&self.inner.connection_retries),
            dropped_closed: dropped("closed"),
            dropped_expired: dropped("expired"),
        }
    }

    /// A configuration reload: `ok`, or `error` (nothing changed).
    pub fn config_reload(&self, result: &'static str) {
        self.inner
            .config_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    /// A generation's client went away before Forge answered.
    pub fn client_gone(&self) {
        self.inner.clients_gone.inc();
    }

    /// A finished request; with keys configured, also counted under the key's name.
    pub fn request(&self, route: impl Into<Cow<'static, str>>, key: Option<String>, status: u16) {
        let route = route.into();
        if let Some(key) = key {
            self.inner
                .key_requests
                .get_or_create(&KeyRequestLabels {
                    key,
                    route: route.clone(),
                    status,
                })
                .inc();
        }
        self.inner
            .requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
    }

    /// A generation's duration from the moment it got its backend to its response
    /// headers, per profile. Negative or NaN durations count as zero, so one bad clock
    /// reading cannot poison the histogram's sum.
    pub fn generation_seconds(&self, backend: &str, profile: &str, seconds: f64) {
        self.inner
            .generation_duration
            .get_or_create(&GenerationLabels {
                backend: backend.to_owned(),
                profile: profile.to_owned(),
            })
            .observe(seconds.max(0.0));
    }

    /// An options decision before a generation or a client's checkpoint change: outcome
    /// "applied" | "skipped" | "failed"; reason e.g. "changed", "same",
    /// "within_hysteresis", "no_vram_reading", "options_call_failed".
    pub fn options_call(&self, backend: &str, outcome: Outcome, reason: Why) {
        self.inner
            .options_calls
            .get_or_create(&OptionsCallLabels {
                backend: backend.to_owned(),
                outcome: outcome.as_str(),
                reason: reason.as_str(),
            })
            .inc();
    }

    /// The latest VRAM reading of a GPU (label: e.g. "0" or the UUID), with its source.
    pub fn vram(
        &self,
        backend: &str,
        gpu: &str,
        source: ReadingSource,
        total_mib: u64,
        used_mib: u64,
    ) {
        let labels = GpuLabels {
            backend: backend.to_owned(),
            gpu: gpu.to_owned(),
            source: source.as_str(),
        };
        self.inner.vram_total.get_or_create(&labels).set(total_mib);
        self.inner.vram_used.get_or_create(&labels).set(used_mib);
    }

    /// The backend's current `forge_inference_memory` (as the proxy knows it).
    pub fn inference_memory(&self, backend: &str, mib: u64) {
        self.inner
            .inference_memory
            .get_or_create(&BackendLabels {
                backend: backend.to_owned(),
            })
            .set(mib);
    }

    /// The backend moved from one profile to another (a model reload).
    pub fn profile_switch(&self, backend: &str, from: &str, to: &str) {
        self.inner
            .profile_switches
            .get_or_create(&ProfileSwitchLabels {
                backend: backend.to_owned(),
                from: from.to_owned(),
                to: to.to_owned(),
            })
            .inc();
    }

    /// Every metric in the Prometheus text format (0.0.4), to serve with
    /// [`CONTENT_TYPE`].
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail and no label value refuses to encode, so an
        // error here is a bug in the encoder: log it and serve what was written.
        if let Err(err) = prometheus_text::encode(&mut text, &self.inner.registry) {
            tracing::error!(%err, "encoding the metrics failed");
        }
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_parse::{Sample, Scrape, Value};

    fn scrape(metrics: &Metrics) -> Scrape {
        let text = metrics.render();
        Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))
            .unwrap_or_else(|err| panic!("render's text does not parse: {err}\n{text}"))
    }

    /// The one sample named `name` whose labels are exactly `labels`.
    fn sample<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> &'a Sample {
        let matching: Vec<&Sample> = scrape
            .samples
            .iter()
            .filter(|s| {
                s.metric == name
                    && s.labels.len() == labels.len()
                    && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "expected one {name}{labels:?}, found {matching:?} among {:?}",
            scrape.samples
        );
        matching[0]
    }

    fn counter(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        match sample(scrape, name, labels).value {
            Value::Counter(v) => v,
            ref other => panic!("{name} is not a counter: {other:?}"),
        }
    }

    fn gauge(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        match sample(scrape, name, labels).value {
            Value::Gauge(v) => v,
            ref other => panic!("{name} is not a gauge: {other:?}"),
        }
    }

    /// `_count` and `_sum` of a histogram come back untyped from prometheus-parse.
    fn untyped(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        match sample(scrape, name, labels).value {
            Value::Untyped(v) => v,
            ref other => panic!("{name} is not untyped: {other:?}"),
        }
    }

    #[test]
    fn requests_are_counted_per_route_and_status() {
        let metrics = Metrics::new();
        metrics.request("txt2img", None, 200);
        metrics.request("txt2img", None, 200);
        metrics.request("txt2img", None, 502);
        metrics.request("pass_through", None, 200);

        let scrape = scrape(&metrics);
        let name = "forge_proxy_requests_total";
        assert_eq!(
            counter(&scrape, name, &[("route", "txt2img"), ("status", "200")]),
            2.0
        );
        assert_eq!(
            counter(&scrape, name, &[("route", "txt2img"), ("status", "502")]),
            1.0
        );
        assert_eq!(
            counter(
                &scrape,
                name,
                &[("route", "pass_through"), ("status", "200")]
            ),
            1.0
        );
    }

    #[test]
    fn generation_durations_land_in_their_buckets_per_profile() {
        let metrics = Metrics::new();
        metrics.generation_seconds("forge", "sdxl", 0.25);
        metrics.generation_seconds("forge", "sdxl", 12.5);
        metrics.generation_seconds("forge", "sdxl", 900.0);
        metrics.generation_seconds("forge", "flux", 45.0);

        let scrape = scrape(&metrics);
        let sdxl = [("backend", "forge"), ("profile", "sdxl")];
        let name = "forge_proxy_generation_duration_seconds";
        assert_eq!(untyped(&scrape, &format!("{name}_count"), &sdxl), 3.0);
        assert_eq!(untyped(&scrape, &format!("{name}_sum"), &sdxl), 912.75);

        let Value::Histogram(buckets) = &sample(&scrape, name, &sdxl).value else {
            panic!("{name} is not a histogram");
        };
        let le = |bound: f64| {
            buckets
                .iter()
                .find(|b| b.less_than == bound)
                .unwrap_or_else(|| panic!("no bucket le={bound} in {buckets:?}"))
                .count
        };
        assert_eq!(le(0.5), 1.0);
        assert_eq!(le(10.0), 1.0);
        assert_eq!(le(15.0), 2.0);
        assert_eq!(le(600.0), 2.0);
        assert_eq!(le(f64::INFINITY), 3.0);

        let flux = [("backend", "forge"), ("profile", "flux")];
        assert_eq!(untyped(&scrape, &format!("{name}_count"), &flux), 1.0);
    }

    #[test]
    fn generation_buckets_span_half_a_second_to_ten_minutes_in_order() {
        assert_eq!(GENERATION_BUCKETS.first(), Some(&0.5));
        assert_eq!(GENERATION_BUCKETS.last(), Some(&600.0));
        assert!(GENERATION_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_negative_generation_duration_counts_as_zero() {
        let metrics = Metrics::new();
        metrics.generation_seconds("forge", "sd15", -3.0);

        let scrape = scrape(&metrics);
        let labels = [("backend", "forge"), ("profile", "sd15")];
        let name = "forge_proxy_generation_duration_seconds";
        assert_eq!(untyped(&scrape, &format!("{name}_sum"), &labels), 0.0);
        assert_eq!(untyped(&scrape, &format!("{name}_count"), &labels), 1.0);
    }

    #[test]
    fn options_calls_are_counted_per_outcome_and_reason() {
        let metrics = Metrics::new();
        metrics.options_call("forge", Outcome::Applied, Why::Changed);
        metrics.options_call("forge", Outcome::Skipped, Why::Same);
        metrics.options_call("forge", Outcome::Skipped, Why::Same);
        metrics.options_call("forge", Outcome::Failed, Why::OptionsCallFailed);

        let scrape = scrape(&metrics);
        let name = "forge_proxy_options_calls_total";
        let labels = |outcome, reason| {
            [
                ("backend", "forge"),
                ("outcome", outcome),
                ("reason", reason),
            ]
        };
        assert_eq!(counter(&scrape, name, &labels("applied", "changed")), 1.0);
        assert_eq!(counter(&scrape, name, &labels("skipped", "same")), 2.0);
        assert_eq!(
            counter(&scrape, name, &labels("failed", "options_call_failed")),
            1.0
        );
    }

    #[test]
    fn vram_gauges_show_the_latest_reading() {
        let metrics = Metrics::new();
        metrics.vram("http://a:7860", "0", ReadingSource::Nvml, 24_576, 1_000);
        metrics.vram("http://a:7860", "0", ReadingSource::Nvml, 24_576, 18_432);
        metrics.vram(
            "http://b:7860",
            "GPU-abc",
            ReadingSource::Backend,
            12_288,
            512,
        );
        // Another host's GPU 0: a series of its own.
        metrics.vram("http://c:7860", "0", ReadingSource::Backend, 8_192, 100);

        let scrape = scrape(&metrics);
        let gpu0 = [
            ("backend", "http://a:7860"),
            ("gpu", "0"),
            ("source", "nvml"),
        ];
        assert_eq!(
            gauge(&scrape, "forge_proxy_vram_total_mib", &gpu0),
            24_576.0
        );
        assert_eq!(gauge(&scrape, "forge_proxy_vram_used_mib", &gpu0), 18_432.0);
        let other = [
            ("backend", "http://b:7860"),
            ("gpu", "GPU-abc"),
            ("source", "backend"),
        ];
        assert_eq!(
            gauge(&scrape, "forge_proxy_vram_total_mib", &other),
            12_288.0
        );
        assert_eq!(gauge(&scrape, "forge_proxy_vram_used_mib", &other), 512.0);
        let third = [
            ("backend", "http://c:7860"),
            ("gpu", "0"),
            ("source", "backend"),
        ];
        assert_eq!(
            gauge(&scrape, "forge_proxy_vram_total_mib", &third),
            8_192.0
        );
    }

    #[test]
    fn inference_memory_gauge_shows_the_last_value_set() {
        let metrics = Metrics::new();
        metrics.inference_memory("forge", 1024);
        metrics.inference_memory("forge", 4096);

        let scrape = scrape(&metrics);
        assert_eq!(
            gauge(
                &scrape,
                "forge_proxy_inference_memory_mib",
                &[("backend", "forge")]
            ),
            4096.0
        );
    }

    #[test]
    fn profile_switches_are_counted_per_direction() {
        let metrics = Metrics::new();
        metrics.profile_switch("forge", "sdxl", "flux");
        metrics.profile_switch("forge", "flux", "sdxl");
        metrics.profile_switch("forge", "sdxl", "flux");

        let scrape = scrape(&metrics);
        let name = "forge_proxy_profile_switches_total";
        let labels = |from, to| [("backend", "forge"), ("from", from), ("to", to)];
        assert_eq!(counter(&scrape, name, &labels("sdxl", "flux")), 2.0);
        assert_eq!(counter(&scrape, name, &labels("flux", "sdxl")), 1.0);
    }

    #[test]
    fn clones_record_into_the_same_metrics() {
        let metrics = Metrics::default();
        let clone = metrics.clone();
        clone.request("proxy", None, 200);
        metrics.request("proxy", None, 200);

        let scrape = scrape(&metrics);
        assert_eq!(
            counter(
                &scrape,
                "forge_proxy_requests_total",
                &[("route", "proxy"), ("status", "200")]
            ),
            2.0
        );
    }

    #[test]
    fn rendered_text_is_prometheus_0_0_4_without_openmetrics_extras() {
        let metrics = Metrics::new();
        metrics.request("txt2img", None, 200);
        metrics.generation_seconds("forge", "sdxl", 1.0);
        let text = metrics.render();

        assert_eq!(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
        assert!(!text.contains("# EOF"), "{text}");
        assert!(!text.contains("_created"), "{text}");
        assert!(!text.contains("# UNIT"), "{text}");
        assert!(
            text.contains("# TYPE forge_proxy_requests_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE forge_proxy_generation_duration_seconds histogram\n"),
            "{text}"
        );
    }

    #[test]
    fn every_metric_is_described_under_its_prefixed_name() {
        let metrics = Metrics::new();
        metrics.request("txt2img", None, 200);
        metrics.generation_seconds("forge", "sdxl", 1.0);
        metrics.options_call("forge", Outcome::Applied, Why::Changed);
        metrics.vram("forge", "0", ReadingSource::Nvml, 1, 1);
        metrics.inference_memory("forge", 1);
        metrics.profile_switch("forge", "sdxl", "flux");
        metrics.queue_length("forge", 3);
        metrics.queue_wait("forge", 0.2);
        metrics.reload_avoided("forge");
        metrics.retry();
        metrics.left_to_forge();
        metrics.client_gone();
        metrics.request("txt2img", Some("discord-bot".to_owned()), 200);
        metrics.connection_refused();
        metrics.inspect_refused();
        metrics.in_rotation("forge", true);

        let scrape = scrape(&metrics);
        let mut documented: Vec<&str> = scrape.docs.keys().map(String::as_str).collect();
        documented.sort_unstable();
        assert_eq!(
            documented,
            [
                "forge_proxy_backend_in_rotation",
                "forge_proxy_client_requests_total",
                "forge_proxy_clients_gone_total",
                "forge_proxy_config_reloads_total",
                "forge_proxy_connections_refused_total",
                "forge_proxy_generation_duration_seconds",
                "forge_proxy_inference_memory_mib",
                "forge_proxy_inspect_refused_total",
                "forge_proxy_left_to_forge_total",
                "forge_proxy_options_calls_total",
                "forge_proxy_profile_switches_total",
                "forge_proxy_queue_length",
                "forge_proxy_queue_wait_seconds",
                "forge_proxy_reloads_avoided_total",
                "forge_proxy_requests_total",
                "forge_proxy_retries_total",
                "forge_proxy_vram_total_mib",
                "forge_proxy_vram_used_mib",
            ]
        );
    }
}
