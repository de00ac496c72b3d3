//! The monitoring files against the proxy itself: every metric that the Grafana dashboard
//! (`deploy/grafana/forge-vram-proxy.json`) and the alerting rules
//! (`deploy/prometheus/alerts.yml`) read is one the proxy exports, with the labels they
//! match on, so a renamed or misspelt metric fails here rather than leave a panel empty or
//! an alert that never fires. (`scripts/check-monitoring` and `promtool` check the same
//! files' syntax in CI.)
//!
//! The proxy runs as its binary: a configuration reload, which only `SIGHUP` makes, is the
//! one way to get `forge_proxy_config_reloads_total` exported.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;

use crate::support::{client, sim, txt2img_with, ProxyProcess, SD15, SDXL};

/// Series that Prometheus makes itself for every target, not the proxy.
const MADE_BY_PROMETHEUS: &[&str] = &["up"];

/// Labels a series gets from its scrape target rather than from the proxy: Prometheus'
/// `job` and `instance`, and `expected_vram_source`, which the operator sets on a target
/// whose proxy reads Forge's memory by design (see alerts.yml).
const TARGET_LABELS: &[&str] = &["job", "instance", "expected_vram_source"];

const KEY: &str = "monitoring-test-key-0123456789abcdef";

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_read_is_exported() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard = dashboard_selectors(&root.join("deploy/grafana/forge-vram-proxy.json"));
    let alerts = alert_selectors(&root.join("deploy/prometheus/alerts.yml"));
    assert!(
        !dashboard.is_empty(),
        "no expression found in the dashboard"
    );
    assert!(!alerts.is_empty(), "no expression found in alerts.yml");

    let exported = exported_after_one_of_everything().await;

    let mut problems = BTreeSet::new();
    for (file, selectors) in [("dashboard", &dashboard), ("alerts.yml", &alerts)] {
        for selector in selectors {
            if MADE_BY_PROMETHEUS.contains(&selector.name.as_str()) {
                continue;
            }
            let Some(labels) = exported.get(&selector.name) else {
                problems.insert(format!("{file}: {} is not exported", selector.name));
                continue;
            };
            for label in &selector.labels {
                if !labels.contains(label) && !TARGET_LABELS.contains(&label.as_str()) {
                    problems.insert(format!(
                        "{file}: {} has no label {label} (it has {labels:?})",
                        selector.name
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{problems:#?}\nexported: {:#?}",
        exported.keys().collect::<Vec<_>>()
    );
}

/// Every series name in `/proxy/metrics` with the label names its samples carry, once the
/// proxy has counted something in every family: generations of two profiles (a profile
/// switch), each with a client key, and a configuration reload.
async fn exported_after_one_of_everything() -> BTreeMap<String, BTreeSet<String>> {
    let sim = sim().await;
    let dir = TempDir::new("monitoring");
    let config = dir.0.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[[backends]]\nurl = \"{}\"\nvram_source = \"backend\"\n\n\
             [[access.keys]]\nname = \"ops\"\nkey = \"{KEY}\"\nrole = \"admin\"\n",
            sim.url()
        ),
    )
    .unwrap();
    let proxy = ProxyProcess::start(&["--config", config.to_str().unwrap()]);

    for checkpoint in [SD15, SDXL] {
        let response = client()
            .post(proxy.url("/sdapi/v1/txt2img"))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(txt2img_with(checkpoint))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "txt2img with {checkpoint}"
        );
    }
    proxy.signal("HUP");

    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let text = client()
            .get(proxy.url("/proxy/metrics"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("forge_proxy_config_reloads_total{") {
            return exported(&text);
        }
        assert!(
            Instant::now() < until,
            "no reload counted within 10 s:\n{text}\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Series names of a Prometheus text exposition (histograms as their `_bucket`, `_sum`
/// and `_count` series, as Prometheus stores them), each with its samples' label names.
fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        // A sample line is a selector followed by a value, which `selectors` passes over.
        for selector in selectors(line) {
            names
                .entry(selector.name)
                .or_default()
                .extend(selector.labels);
        }
    }
    names
}

/// A metric named in a PromQL expression, with the label names its matchers use.
#[derive(Debug, PartialEq)]
struct Selector {
    name: String,
    labels: Vec<String>,
}

/// The selectors of every panel query and every variable query (`label_values(SELECTOR,
/// LABEL)`) of a Grafana dashboard.
fn dashboard_selectors(path: &Path) -> Vec<Selector> {
    let text = std::fs::read_to_string(path).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut found = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            found.extend(selectors(target["expr"].as_str().unwrap()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"]
            .as_str()
            .or(variable["query"].as_str())
            .unwrap();
        let selector = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
            .map(|(selector, _label)| selector)
            .unwrap_or_else(|| panic!("not label_values(SELECTOR, LABEL): {query}"));
        found.extend(selectors(selector));
    }
    found
}

/// The selectors of every `expr:` of a Prometheus rules file: on the key's line, or a block
/// scalar (`expr: |`) on the lines indented below it. Plain line handling, as the rules
/// file is all the YAML the tests read.
fn alert_selectors(path: &Path) -> Vec<Selector> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        let expr = if rest.starts_with(['|', '>']) {
            let indent = line.len() - line.trim_start().len();
            lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .copied()
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            rest.trim_matches(['"', '\'']).to_owned()
        };
        found.extend(selectors(&expr));
    }
    found
}

/// Aggregations and keywords: words in an expression that are not metrics.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "atan2",
    "bool",
    "offset",
    "group_left",
    "group_right",
    "inf",
    "nan",
];

/// Words followed by a parenthesised list of label names, not expressions.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metrics a PromQL expression reads, in order: every name that is not a function
/// (followed by `(`), an aggregation or keyword, a label name (inside `{...}` or a `by
/// (...)` list), a string, a number or duration, a range (`[...]`) or a Grafana variable
/// (`$job`, `${job}`).
fn selectors(expr: &str) -> Vec<Selector> {
    let chars: Vec<char> = expr.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = after_string(&chars, i);
        } else if c == '[' {
            i = after(&chars, i, ']');
        } else if c == '{' {
            // A selector by label alone: nothing named.
            i = matchers(&chars, i).1;
        } else if c == '$' {
            i = if chars.get(i + 1) == Some(&'{') {
                after(&chars, i, '}')
            } else {
                after_word(&chars, i + 1)
            };
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers and durations: 0.95, 1e3, 15m, 1h30m.
            i = after_word(&chars, i);
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let end = after_word(&chars, i);
            let word: String = chars[i..end].iter().collect();
            let next = (end..chars.len())
                .find(|&j| !chars[j].is_whitespace())
                .unwrap_or(chars.len());
            i = end;
            if chars.get(next) == Some(&'(') {
                if LABEL_LISTS.contains(&word.as_str()) {
                    i = after(&chars, next, ')');
                }
                // Otherwise a function or an aggregation: its arguments follow.
            } else if !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                let labels = if chars.get(next) == Some(&'{') {
                    let (labels, end) = matchers(&chars, next);
                    i = end;
                    labels
                } else {
                    Vec::new()
                };
                found.push(Selector { name: word, labels });
            }
        } else {
            i += 1;
        }
    }
    found
}

/// The label names of the matchers opening at `open` (`{`), and the index after the `}`.
fn matchers(chars: &[char], open: usize) -> (Vec<String>, usize) {
    let mut labels = Vec::new();
    let mut i = open + 1;
    while i < chars.len() {
        let c = chars[i];
        if c == '}' {
            return (labels, i + 1);
        } else if matches!(c, '"' | '\'' | '`') {
            i = after_string(chars, i);
        } else if c.is_ascii_alphabetic() || c == '_' {
            let end = after_word(chars, i);
            labels.push(chars[i..end].iter().collect());
            i = end;
        } else {
            i += 1;
        }
    }
    (labels, i)
}

/// The index after the word (letters, digits, `_`, `:`, `.`) starting at `start`.
fn after_word(chars: &[char], start: usize) -> usize {
    (start..chars.len())
        .find(|&j| !(chars[j].is_ascii_alphanumeric() || matches!(chars[j], '_' | ':' | '.')))
        .unwrap_or(chars.len())
}

/// The index after the first `close` from `start`, strings passed over.
fn after(chars: &[char], start: usize, close: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            c if c == close => return i + 1,
            '"' | '\'' | '`' => i = after_string(chars, i),
            _ => i += 1,
        }
    }
    i
}

/// The index after the string opening at `open`; backslash escapes in `"` and `'` strings,
/// none in raw `` ` `` ones.
fn after_string(chars: &[char], open: usize) -> usize {
    let quote = chars[open];
    let mut i = open + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// A folder for this test's configuration, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("fvp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn selectors_are_metric_names_with_their_matchers_labels() {
    let expr = r#"histogram_quantile(0.95, sum by (le, profile) (rate(a_bucket{job=~"$job", x!="}"}[$__rate_interval])))
        / on (job) group_left b offset 5m > bool 2 or sum without(y) (c:rate5m) unless {__name__="d"} and Max(e{f="${g}"} @ 1e3)"#;
    let name = |name: &str, labels: &[&str]| Selector {
        name: name.to_owned(),
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
    };
    assert_eq!(
        selectors(expr),
        [
            name("a_bucket", &["job", "x"]),
            name("b", &[]),
            name("c:rate5m", &[]),
            name("e", &["f"]),
        ]
    );
}

#[test]
fn a_sample_line_is_its_series_name_and_labels() {
    let text = "# TYPE forge_proxy_x histogram\n\
                forge_proxy_x_bucket{backend=\"http://h:1\",le=\"+Inf\"} 3\n\
                forge_proxy_x_count{backend=\"http://h:1\"} 3\n\
                forge_proxy_y_total 0\n";
    let names = exported(text);
    let labels = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    assert_eq!(names["forge_proxy_x_bucket"], labels(&["backend", "le"]));
    assert_eq!(names["forge_proxy_x_count"], labels(&["backend"]));
    assert_eq!(names["forge_proxy_y_total"], labels(&[]));
    assert_eq!(names.len(), 3);
}
