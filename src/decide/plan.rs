//! The whole decision for one generation, from data gathered beforehand: which profile,
//! what memory, which options to send, what to change in the body. Pure: the generation
//! handler and `/proxy/plan/*` both call it.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::backend::vram::VramReading;
use crate::config::{ClientMemoryOptions, Config, Profile};
use crate::decide::body::{BodyEdits, GenerationBody};
use crate::decide::policy::{self, Change, MemoryDecision, MemoryPolicy, RequestSize};
use crate::decide::profile::{self, Hints, Reason};
use crate::error::ProxyError;

/// Forge's option for the memory kept free for computation (MiB).
pub const INFERENCE_MEMORY: &str = "forge_inference_memory";
/// Options the proxy owns: its memory value and the per-preset "GPU Weights" it keeps in
/// step with it.
pub const PROXY_OWNED: [&str; 3] = [INFERENCE_MEMORY, "flux_GPU_MB", "xl_GPU_MB"];
/// Memory options whose mere presence in an options call makes Forge reload the model.
pub const RELOAD_ON_PRESENCE: [&str; 2] = ["forge_async_loading", "forge_pin_shared_memory"];

/// What the proxy will do for one generation.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    #[serde(skip)]
    pub profile: usize,
    #[serde(rename = "profile")]
    pub profile_name: String,
    pub why_profile: Reason,
    /// The computed split (absent without a reading, unless the policy is fixed).
    pub computed: Option<MemoryDecision>,
    /// The `forge_inference_memory` the generation runs with.
    pub inference_memory_mib: Option<u64>,
    /// GPU Weights as Forge's slider shows it: total - inference.
    pub gpu_weights_mib: Option<u64>,
    /// Options the proxy sends first (empty: none needed).
    pub options: Map<String, Value>,
    /// `applied` (options sent) or `skipped`.
    pub outcome: &'static str,
    /// `changed`, `options_changed`, `same`, `within_hysteresis`, `no_vram_reading`, `client_value`.
    pub reason: &'static str,
    #[serde(skip)]
    pub edits: BodyEdits,
    /// For the plan endpoint: fields added to the body and override keys removed.
    pub added_fields: Map<String, Value>,
    pub removed_override_settings: Vec<String>,
}

/// The decision's inputs besides the config.
pub struct Inputs<'a> {
    /// `X-Forge-Model-Type`, when sent.
    pub header: Option<&'a str>,
    pub body: &'a GenerationBody<'a>,
    /// The backend's current options (possibly only the keys the proxy tracks).
    pub current: &'a Map<String, Value>,
    pub reading: Option<&'a VramReading>,
}

pub fn plan(config: &Config, inputs: &Inputs<'_>) -> Result<Plan, ProxyError> {
    let overrides = inputs.body.override_settings();
    let text = |map: &Map<String, Value>, key: &str| {
        map.get(key).and_then(Value::as_str).map(str::to_owned)
    };
    let override_checkpoint = text(&overrides, "sd_model_checkpoint");
    let override_preset = text(&overrides, "forge_preset");
    let backend_checkpoint = text(inputs.current, "sd_model_checkpoint");
    let hints = Hints {
        header: inputs.header,
        override_checkpoint: override_checkpoint.as_deref(),
        override_preset: override_preset.as_deref(),
        backend_checkpoint: backend_checkpoint.as_deref(),
    };
    let (index, why_profile) = profile::resolve(&config.profiles, config.default_profile, &hints)
        .map_err(ProxyError::UnknownModelType)?;
    let profile = &config.profiles[index];

    // The client's own memory keys in override_settings.
    let owned_in_overrides: Vec<String> = PROXY_OWNED
        .iter()
        .filter(|key| overrides.contains_key(**key))
        .map(|key| (*key).to_owned())
        .collect();
    let mut client_value = None;
    let mut removed_override_settings = Vec::new();
    match config.memory.client_memory_options {
        _ if owned_in_overrides.is_empty() => {}
        ClientMemoryOptions::Reject => {
            return Err(ProxyError::ClientMemoryOptions {
                keys: owned_in_overrides,
                place: "override_settings",
            })
        }
        ClientMemoryOptions::Strip => removed_override_settings = owned_in_overrides,
        ClientMemoryOptions::Honor => {
            // Applied through the proxy's own options call, so Forge does not set and
            // restore it around the generation (two reloads).
            if overrides.contains_key(INFERENCE_MEMORY) {
                client_value = overrides
                    .get(INFERENCE_MEMORY)
                    .and_then(Value::as_f64)
                    .map(|v| v.max(0.0).round() as u64);
                removed_override_settings.push(INFERENCE_MEMORY.to_owned());
            }
        }
    }

    let size = inputs.body.size();
    let computed = client_value
        .is_none()
        .then(|| compute(config, profile, inputs.reading, &size))
        .flatten();
    let target = client_value.or(computed.as_ref().map(|d| d.inference_mib));
    let current_memory = inputs.current.get(INFERENCE_MEMORY).and_then(Value::as_f64);
    let min_change = if client_value.is_some() {
        1
    } else {
        config.memory.min_change_mib
    };

    let mut options = Map::new();
    let change = target.map(|t| policy::change_needed(current_memory, t, min_change));
    if let (Some(target), Some(Change::Apply)) = (target, change) {
        options.insert(INFERENCE_MEMORY.to_owned(), Value::from(target));
    }
    let in_effect = match change {
        Some(Change::Apply) => target,
        _ => current_memory.map(|v| v.round() as u64).or(target),
    };
    let total = inputs.reading.map(|r| r.total_mib);
    let gpu_weights_mib = match (total, in_effect) {
        (Some(total), Some(inference)) => Some(total.saturating_sub(inference)),
        _ => None,
    };
    if let (Some(key), Some(weights)) = (profile.preset_weights_key(), gpu_weights_mib) {
        // The same hysteresis: a page reload landing a few MiB off costs nothing.
        let stored = inputs.current.get(key).and_then(Value::as_f64);
        if policy::change_needed(stored, weights, min_change) == Change::Apply
            || (options.contains_key(INFERENCE_MEMORY) && stored != Some(weights as f64))
        {
            options.insert(key.to_owned(), Value::from(weights));
        }
    }
    for (key, value) in &profile.options {
        if !inputs
            .current
            .get(key)
            .is_some_and(|v| same_value(v, value))
        {
            options.insert(key.clone(), value.clone());
        }
    }

    let added_fields: Map<String, Value> = profile
        .request_defaults
        .iter()
        .filter(|(key, _)| !inputs.body.has(key))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let override_edit = (!removed_override_settings.is_empty()).then(|| {
        let mut kept = overrides.clone();
        for key in &removed_override_settings {
            kept.remove(key);
        }
        kept
    });

    let memory_applied = options.contains_key(INFERENCE_MEMORY);
    let (outcome, reason) = match (memory_applied, options.is_empty(), change) {
        (true, _, _) if client_value.is_some() => ("applied", "client_value"),
        (true, _, _) => ("applied", "changed"),
        (false, false, _) => ("applied", "options_changed"),
        (false, true, Some(Change::WithinHysteresis)) => ("skipped", "within_hysteresis"),
        (false, true, Some(_)) => ("skipped", "same"),
        (false, true, None) => ("skipped", "no_vram_reading"),
    };
    Ok(Plan {
        profile: index,
        profile_name: profile.name.clone(),
        why_profile,
        computed,
        inference_memory_mib: in_effect,
        gpu_weights_mib,
        options,
        outcome,
        reason,
        edits: BodyEdits {
            added: added_fields.clone(),
            override_settings: override_edit,
        },
        added_fields,
        removed_override_settings,
    })
}

/// The policy's answer for this reading; without a reading only a fixed policy can answer.
fn compute(
    config: &Config,
    profile: &Profile,
    reading: Option<&VramReading>,
    size: &RequestSize,
) -> Option<MemoryDecision> {
    match (reading, &profile.policy) {
        (Some(reading), policy) => {
            let other = if config.memory.count_other_processes {
                reading.other_processes_mib
            } else {
                0
            };
            Some(policy::decide(policy, reading.total_mib, other, size))
        }
        (None, MemoryPolicy::Fixed { inference_mib }) => Some(MemoryDecision {
            inference_mib: *inference_mib,
            gpu_weights_mib: 0,
            usable_mib: 0,
            reserve_mib: None,
            clamped: None,
        }),
        (None, _) => None,
    }
}

/// JSON equality with numbers compared as numbers (Forge returns `4096.0` for `4096`).
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() < 1e-9,
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_toml_str;
    use serde_json::json;

    fn reading(total: u64) -> VramReading {
        VramReading {
            source: "nvml",
            total_mib: total,
            used_mib: 1000,
            free_mib: total - 1000,
            other_processes_mib: 0,
            gpu_name: None,
        }
    }

    fn current(checkpoint: &str, memory: f64, preset: &str) -> Map<String, Value> {
        json!({"sd_model_checkpoint": checkpoint, "forge_inference_memory": memory,
               "forge_preset": preset, "flux_GPU_MB": 11264.0, "xl_GPU_MB": 11264.0})
        .as_object()
        .cloned()
        .unwrap()
    }

    fn run(
        config: &Config,
        header: Option<&str>,
        body: &str,
        current: &Map<String, Value>,
        total: Option<u64>,
    ) -> Plan {
        let body = GenerationBody::parse(body.as_bytes()).unwrap();
        let reading = total.map(reading);
        plan(
            config,
            &Inputs {
                header,
                body: &body,
                current,
                reading: reading.as_ref(),
            },
        )
        .unwrap()
    }

    #[test]
    fn flux_checkpoint_switch_sends_memory_preset_and_weights_and_fills_defaults() {
        let config = Config::default();
        let now = current("v1-5-pruned-emaonly.safetensors", 1024.0, "sd");
        let body = r#"{"prompt": "x", "cfg_scale": 2, "override_settings": {"sd_model_checkpoint": "flux1-dev-Q4_0.gguf"}}"#;
        let plan = run(&config, None, body, &now, Some(12288));
        assert_eq!(plan.profile_name, "flux");
        assert_eq!(
            plan.why_profile,
            Reason::OverrideCheckpoint("flux1-dev-Q4_0.gguf".into())
        );
        assert_eq!(
            Value::Object(plan.options.clone()),
            json!({"forge_inference_memory": 4096, "flux_GPU_MB": 8192, "forge_preset": "flux"})
        );
        assert_eq!((plan.outcome, plan.reason), ("applied", "changed"));
        assert_eq!(
            (plan.inference_memory_mib, plan.gpu_weights_mib),
            (Some(4096), Some(8192))
        );
        // cfg_scale was set by the client: kept; the others filled.
        assert_eq!(
            Value::Object(plan.added_fields),
            json!({"distilled_cfg_scale": 3.5, "scheduler": "Simple"})
        );
    }

    #[test]
    fn nothing_to_change_sends_nothing() {
        let config = Config::default();
        let now = current("v1-5-pruned-emaonly.safetensors", 10240.0, "sd");
        let plan = run(&config, None, r#"{"prompt": "x"}"#, &now, Some(12288));
        assert!(plan.options.is_empty(), "{:?}", plan.options);
        assert_eq!((plan.outcome, plan.reason), ("skipped", "same"));
        assert!(plan.edits.is_empty());
        assert_eq!(plan.inference_memory_mib, Some(10240));
    }

    #[test]
    fn small_differences_stay_within_hysteresis() {
        let config = Config::default();
        let now = current("v1-5-pruned-emaonly.safetensors", 10100.0, "sd");
        let plan = run(&config, None, r#"{}"#, &now, Some(12288));
        assert_eq!(
            (plan.outcome, plan.reason),
            ("skipped", "within_hysteresis")
        );
        assert_eq!(plan.inference_memory_mib, Some(10100));
    }

    #[test]
    fn header_picks_the_profile_and_unknown_header_is_an_error() {
        let config = Config::default();
        let now = current("v1-5-pruned-emaonly.safetensors", 1024.0, "sd");
        let plan = run(&config, Some("sdxl"), r#"{}"#, &now, Some(12288));
        assert_eq!(plan.profile_name, "sdxl");
        assert_eq!(plan.options[INFERENCE_MEMORY], json!(5632));
        assert_eq!(plan.options["xl_GPU_MB"], json!(6656));
        let body = GenerationBody::parse(b"{}").unwrap();
        let err = plan_err(&config, Some("sd9"), &body, &now);
        assert_eq!(
            err,
            "unknown model type \"sd9\" in X-Forge-Model-Type: known profiles are flux, sdxl, sd15"
        );
    }

    fn plan_err(
        config: &Config,
        header: Option<&str>,
        body: &GenerationBody<'_>,
        current: &Map<String, Value>,
    ) -> String {
        plan(
            config,
            &Inputs {
                header,
                body,
                current,
                reading: None,
            },
        )
        .unwrap_err()
        .to_string()
    }

    #[test]
    fn client_memory_in_overrides_is_stripped_honored_or_rejected() {
        let body = r#"{"override_settings": {"forge_inference_memory": 2000, "CLIP_stop_at_last_layers": 2}}"#;
        let now = current("v1-5-pruned-emaonly.safetensors", 10240.0, "sd");
        let strip = run(&Config::default(), None, body, &now, Some(12288));
        assert_eq!(strip.removed_override_settings, ["forge_inference_memory"]);
        assert!(strip.options.is_empty());
        assert_eq!(
            strip.edits.override_settings,
            Some(Map::from_iter([(
                "CLIP_stop_at_last_layers".to_owned(),
                json!(2)
            )]))
        );

        let honor = from_toml_str("[memory]\nclient_memory_options = \"honor\"\n").unwrap();
        let plan = run(&honor, None, body, &now, Some(12288));
        assert_eq!(plan.options[INFERENCE_MEMORY], json!(2000));
        assert_eq!((plan.outcome, plan.reason), ("applied", "client_value"));
        assert_eq!(plan.removed_override_settings, ["forge_inference_memory"]);

        let reject = from_toml_str("[memory]\nclient_memory_options = \"reject\"\n").unwrap();
        let parsed = GenerationBody::parse(body.as_bytes()).unwrap();
        assert_eq!(
            plan_err(&reject, None, &parsed, &now),
            "the proxy sets forge_inference_memory itself; remove it from override_settings (memory.client_memory_options = \"reject\")"
        );
    }

    #[test]
    fn without_a_reading_only_fixed_policies_apply() {
        let now = current("v1-5-pruned-emaonly.safetensors", 1024.0, "sd");
        let plan = run(&Config::default(), None, r#"{}"#, &now, None);
        assert_eq!((plan.outcome, plan.reason), ("skipped", "no_vram_reading"));
        assert!(!plan.options.contains_key(INFERENCE_MEMORY));
        let fixed = from_toml_str(
            "[[profiles]]\nname = \"sd15\"\npatterns = [\"*\"]\ninference_memory_mib = 9000\n",
        )
        .unwrap();
        let plan = run(&fixed, None, r#"{}"#, &now, None);
        assert_eq!(plan.options[INFERENCE_MEMORY], json!(9000));
        assert_eq!(plan.gpu_weights_mib, None);
    }

    #[test]
    fn numbers_compare_as_numbers() {
        assert!(same_value(&json!(4096), &json!(4096.0)));
        assert!(same_value(&json!([1, "a"]), &json!([1.0, "a"])));
        assert!(!same_value(&json!("4096"), &json!(4096)));
    }
}
