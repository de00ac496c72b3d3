//! The whole decision for one generation, from data gathered beforehand: which profile,
//! what memory, which options to send, what to change in the body. Pure: the generation's
//! prepare stage, a client's checkpoint change and `/proxy/plan/*` all call it.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::backend::catalog::Catalog;
use crate::backend::forge::key;
use crate::backend::vram::VramReading;
use crate::config::{Config, Profile};
use crate::decide::body::{BodyEdits, GenerationBody};
use crate::decide::client_memory::{ClientMemory, Place, Rejected};
use crate::decide::policy::{self, Change, MemoryDecision, MemoryPolicy, RequestSize};
use crate::decide::profile::{self, Hints, ProfileId, Reason, UnknownProfile};

/// Forge's option for the memory kept free for computation (MiB).
pub const INFERENCE_MEMORY: &str = key::INFERENCE_MEMORY;
/// Memory options whose mere presence in an options call makes Forge reload the model.
pub const RELOAD_ON_PRESENCE: [&str; 2] = [key::ASYNC_LOADING, key::PIN_SHARED_MEMORY];

/// Whether the proxy sent Forge an options call for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    Skipped,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
        }
    }
}

/// Why the options call was sent, or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// The memory value changes.
    Changed,
    /// Only the profile's other options change.
    OptionsChanged,
    /// Forge already has every value.
    Same,
    /// The memory value differs by less than `min_change_mib`: not worth a reload.
    WithinHysteresis,
    /// No VRAM reading, and the policy needs one.
    NoVramReading,
    /// The client's own memory value (`client_memory_options = "honor"`).
    ClientValue,
    /// The options call failed: the generation was not sent.
    OptionsCallFailed,
    /// Forge will refuse the request: nothing is changed for it.
    ForgeRefuses,
    /// A client's checkpoint change names no checkpoint Forge has: Forge answers it.
    UnknownCheckpoint,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Changed => "changed",
            Why::OptionsChanged => "options_changed",
            Why::Same => "same",
            Why::WithinHysteresis => "within_hysteresis",
            Why::NoVramReading => "no_vram_reading",
            Why::ClientValue => "client_value",
            Why::OptionsCallFailed => "options_call_failed",
            Why::ForgeRefuses => "forge_refuses",
            Why::UnknownCheckpoint => "unknown_checkpoint",
        }
    }
}

/// What the proxy will do for one generation.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    #[serde(skip)]
    pub profile: ProfileId,
    #[serde(rename = "profile")]
    pub profile_name: String,
    pub why_profile: Reason,
    /// A checkpoint name the request gave that Forge does not know: Forge ignores it and
    /// runs the model it has, and so the profile comes from that model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_checkpoint: Option<String>,
    /// The computed split (absent without a reading, unless the policy is fixed).
    pub computed: Option<MemoryDecision>,
    /// The `forge_inference_memory` the generation runs with.
    pub inference_memory_mib: Option<u64>,
    /// Forge's `forge_inference_memory` before (as the proxy knew it).
    pub inference_before_mib: Option<u64>,
    /// GPU Weights as Forge's slider shows it: total - inference.
    pub gpu_weights_mib: Option<u64>,
    /// Options the proxy sends first (empty: none needed).
    pub options: Map<String, Value>,
    pub outcome: Outcome,
    pub reason: Why,
    #[serde(skip)]
    pub edits: BodyEdits,
    /// For the plan endpoint: fields added to the body and override keys removed.
    pub added_fields: Map<String, Value>,
    pub removed_override_settings: Vec<String>,
}

/// The decision's inputs besides the config.
pub struct Inputs<'a> {
    /// `X-Forge-Model-Type`, when sent.
    pub model_type: Option<&'a str>,
    pub body: &'a GenerationBody<'a>,
    /// The backend's current options (possibly only the keys the proxy tracks).
    pub current: &'a Map<String, Value>,
    /// The backend's checkpoints, to resolve names as Forge does; `None` when it could not
    /// be read (names are then matched as spelled).
    pub catalog: Option<&'a Catalog>,
    pub reading: Option<&'a VramReading>,
}

/// A checkpoint name resolved as Forge resolves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// One of the backend's checkpoints: its title.
    Checkpoint(String),
    /// No alias of any of them.
    Unknown,
    /// No catalog to tell: the name as spelled.
    AsSpelled(String),
}

impl Named {
    pub fn resolve(catalog: Option<&Catalog>, name: &str) -> Named {
        match catalog {
            Some(catalog) => catalog
                .resolve(name)
                .map_or(Named::Unknown, |c| Named::Checkpoint(c.title.clone())),
            None => Named::AsSpelled(name.to_owned()),
        }
    }

    /// The name to match profile patterns on, if any.
    pub fn matchable(&self) -> Option<&str> {
        match self {
            Named::Checkpoint(title) | Named::AsSpelled(title) => Some(title),
            Named::Unknown => None,
        }
    }
}

/// Why no plan can be made: the request itself is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    UnknownModelType(#[from] UnknownProfile),
    #[error("{0}")]
    ClientMemoryOptions(#[from] Rejected),
}

pub fn plan(config: &Config, inputs: &Inputs<'_>) -> Result<Plan, PlanError> {
    let overrides = inputs.body.override_settings();
    let chosen = choose_profile(config, inputs, &overrides)?;
    let profile = config.profile(chosen.profile);
    let client = from_client(config, &overrides)?;
    let memory = memory(config, profile, inputs, client.value);
    let options = options_to_send(profile, inputs, &memory);
    let added_fields: Map<String, Value> = profile
        .request_defaults
        .iter()
        .filter(|(key, _)| !inputs.body.has(key))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let (outcome, reason) = outcome(&options, memory.change, client.value);
    Ok(Plan {
        profile: chosen.profile,
        profile_name: profile.name.clone(),
        why_profile: chosen.why,
        unknown_checkpoint: chosen.unknown_checkpoint,
        computed: memory.computed,
        inference_memory_mib: memory.in_effect,
        inference_before_mib: inputs
            .current
            .get(key::INFERENCE_MEMORY)
            .and_then(Value::as_f64)
            .map(|mib| mib.max(0.0) as u64),
        gpu_weights_mib: memory.gpu_weights,
        options,
        outcome,
        reason,
        edits: BodyEdits {
            added: added_fields.clone(),
            removed_overrides: client.removed.clone(),
        },
        added_fields,
        removed_override_settings: client.removed,
    })
}

/// The profile, why, and an override checkpoint name Forge does not know.
struct Chosen {
    profile: ProfileId,
    why: Reason,
    unknown_checkpoint: Option<String>,
}

/// Resolves the request's and the backend's checkpoint names as Forge does, then the profile.
fn choose_profile(
    config: &Config,
    inputs: &Inputs<'_>,
    overrides: &Map<String, Value>,
) -> Result<Chosen, PlanError> {
    let text = |map: &Map<String, Value>, key: &str| {
        map.get(key).and_then(Value::as_str).map(str::to_owned)
    };
    let override_name = text(overrides, key::CHECKPOINT);
    let override_checkpoint = override_name
        .as_deref()
        .map(|name| Named::resolve(inputs.catalog, name));
    let unknown_checkpoint = override_name.filter(|_| override_checkpoint == Some(Named::Unknown));
    let override_preset = text(overrides, key::PRESET);
    // Forge stores the name as posted (a hash, a title): resolved like any other; a name
    // the catalog does not know (a removed file) is matched as spelled.
    let backend_checkpoint =
        text(inputs.current, key::CHECKPOINT).map(|name| {
            match Named::resolve(inputs.catalog, &name) {
                Named::Unknown => Named::AsSpelled(name),
                named => named,
            }
        });
    let hints = Hints {
        header: inputs.model_type,
        override_checkpoint: override_checkpoint.as_ref().and_then(Named::matchable),
        override_preset: override_preset.as_deref(),
        backend_checkpoint: backend_checkpoint.as_ref().and_then(Named::matchable),
    };
    let (profile, why) = profile::resolve(&config.profiles, config.default_profile, &hints)?;
    Ok(Chosen {
        profile,
        why,
        unknown_checkpoint,
    })
}

/// The client's own memory keys in `override_settings`: those taken out of the body, and
/// the value honoured. An honoured value is applied through the proxy's own options call, so
/// Forge does not set and restore it around the generation (two reloads).
struct FromClient {
    value: Option<u64>,
    removed: Vec<String>,
}

fn from_client(config: &Config, overrides: &Map<String, Value>) -> Result<FromClient, Rejected> {
    let rule = config.memory.client_memory_options;
    let judged = ClientMemory::judge(rule, overrides, Place::OverrideSettings)?;
    let mut removed = judged.stripped().to_vec();
    if judged.honoured && overrides.contains_key(INFERENCE_MEMORY) {
        removed.push(INFERENCE_MEMORY.to_owned());
    }
    Ok(FromClient {
        value: judged.honoured_value(overrides),
        removed,
    })
}

/// The memory decision for the generation.
struct Memory {
    computed: Option<MemoryDecision>,
    /// The value to set, when it changes (hysteresis applied).
    target: Option<u64>,
    change: Option<Change>,
    /// The value the generation runs with.
    in_effect: Option<u64>,
    /// GPU Weights as Forge's slider shows it.
    gpu_weights: Option<u64>,
    /// Changes smaller than this are not worth a reload.
    min_change: u64,
}

fn memory(
    config: &Config,
    profile: &Profile,
    inputs: &Inputs<'_>,
    client_value: Option<u64>,
) -> Memory {
    let size = inputs.body.size();
    let computed = client_value
        .is_none()
        .then(|| compute(config, profile, inputs.reading, &size))
        .flatten();
    let target = client_value.or(computed.as_ref().map(|d| d.inference_mib));
    let current = inputs.current.get(INFERENCE_MEMORY).and_then(Value::as_f64);
    let min_change = if client_value.is_some() {
        1
    } else {
        config.memory.min_change_mib
    };
    let change = target.map(|t| policy::change_needed(current, t, min_change));
    let in_effect = match change {
        Some(Change::Apply) => target,
        _ => current.map(|v| v.round() as u64).or(target),
    };
    let gpu_weights = match (inputs.reading.map(|r| r.total_mib), in_effect) {
        (Some(total), Some(inference)) => Some(total.saturating_sub(inference)),
        _ => None,
    };
    Memory {
        computed,
        target: target.filter(|_| change == Some(Change::Apply)),
        change,
        in_effect,
        gpu_weights,
        min_change,
    }
}

/// The options that differ from Forge's: the memory value, the preset's GPU Weights kept in
/// step with it, and the profile's options.
fn options_to_send(profile: &Profile, inputs: &Inputs<'_>, memory: &Memory) -> Map<String, Value> {
    let mut options = Map::new();
    if let Some(target) = memory.target {
        options.insert(INFERENCE_MEMORY.to_owned(), Value::from(target));
    }
    if let (Some(key), Some(weights)) = (profile.preset_weights_key(), memory.gpu_weights) {
        // The same hysteresis: a page reload landing a few MiB off costs nothing.
        let stored = inputs.current.get(key).and_then(Value::as_f64);
        if policy::change_needed(stored, weights, memory.min_change) == Change::Apply
            || (memory.target.is_some() && stored != Some(weights as f64))
        {
            options.insert(key.to_owned(), Value::from(weights));
        }
    }
    for (key, value) in &profile.options {
        let same = match (key.as_str(), inputs.current.get(key)) {
            // Another alias of the checkpoint Forge has is the same checkpoint.
            (key::CHECKPOINT, Some(Value::String(now))) => {
                same_checkpoint(inputs.catalog, now, value)
            }
            (_, Some(now)) => same_value(now, value),
            (_, None) => false,
        };
        if !same {
            options.insert(key.clone(), value.clone());
        }
    }
    options
}

/// Whether an options call goes out, and why.
fn outcome(
    options: &Map<String, Value>,
    change: Option<Change>,
    client_value: Option<u64>,
) -> (Outcome, Why) {
    match (
        options.contains_key(INFERENCE_MEMORY),
        options.is_empty(),
        change,
    ) {
        (true, _, _) if client_value.is_some() => (Outcome::Applied, Why::ClientValue),
        (true, _, _) => (Outcome::Applied, Why::Changed),
        (false, false, _) => (Outcome::Applied, Why::OptionsChanged),
        (false, true, Some(Change::WithinHysteresis)) => (Outcome::Skipped, Why::WithinHysteresis),
        (false, true, Some(_)) => (Outcome::Skipped, Why::Same),
        (false, true, None) => (Outcome::Skipped, Why::NoVramReading),
    }
}

/// Whether a profile's `sd_model_checkpoint` names the checkpoint Forge has (`now`, as
/// Forge stored it): the same alias, or another alias of the same checkpoint.
fn same_checkpoint(catalog: Option<&Catalog>, now: &str, wanted: &Value) -> bool {
    let Some(wanted) = wanted.as_str() else {
        return false;
    };
    if now == wanted {
        return true;
    }
    match catalog.map(|c| (c.resolve(now), c.resolve(wanted))) {
        Some((Some(a), Some(b))) => a == b,
        _ => false,
    }
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
            source: crate::backend::vram::ReadingSource::Nvml,
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
        run_with(config, header, body, current, total, None)
    }

    fn run_with(
        config: &Config,
        header: Option<&str>,
        body: &str,
        current: &Map<String, Value>,
        total: Option<u64>,
        catalog: Option<&Catalog>,
    ) -> Plan {
        let body = GenerationBody::parse(body.as_bytes()).unwrap();
        let reading = total.map(reading);
        plan(
            config,
            &Inputs {
                model_type: header,
                body: &body,
                current,
                catalog,
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
        assert_eq!(
            (plan.outcome, plan.reason),
            (Outcome::Applied, Why::Changed)
        );
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
        assert_eq!((plan.outcome, plan.reason), (Outcome::Skipped, Why::Same));
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
            (Outcome::Skipped, Why::WithinHysteresis)
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
                model_type: header,
                body,
                current,
                catalog: None,
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
        assert_eq!(strip.edits.removed_overrides, ["forge_inference_memory"]);

        let honor = from_toml_str("[memory]\nclient_memory_options = \"honor\"\n").unwrap();
        let plan = run(&honor, None, body, &now, Some(12288));
        assert_eq!(plan.options[INFERENCE_MEMORY], json!(2000));
        assert_eq!(
            (plan.outcome, plan.reason),
            (Outcome::Applied, Why::ClientValue)
        );
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
        assert_eq!(
            (plan.outcome, plan.reason),
            (Outcome::Skipped, Why::NoVramReading)
        );
        assert!(!plan.options.contains_key(INFERENCE_MEMORY));
        let fixed = from_toml_str(
            "[[profiles]]\nname = \"sd15\"\npatterns = [\"*\"]\ninference_memory_mib = 9000\n",
        )
        .unwrap();
        let plan = run(&fixed, None, r#"{}"#, &now, None);
        assert_eq!(plan.options[INFERENCE_MEMORY], json!(9000));
        assert_eq!(plan.gpu_weights_mib, None);
    }

    fn catalog() -> Catalog {
        Catalog::from_sd_models(&json!([
            {"title": "v1-5-pruned-emaonly.safetensors [6ce0161689]", "hash": "6ce0161689",
             "sha256": "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
             "model_name": "v1-5-pruned-emaonly", "filename": "/m/v1-5-pruned-emaonly.safetensors"},
            {"title": "flux1-dev-Q4_0.gguf [e9c9d702d0]", "hash": "e9c9d702d0",
             "sha256": "e9c9d702d0aa11bb22cc33dd44ee55ff66007788990011223344556677889900",
             "model_name": "flux1-dev-Q4_0", "filename": "/m/flux1-dev-Q4_0.gguf"},
        ]))
        .unwrap()
    }

    #[test]
    fn an_override_checkpoint_is_resolved_through_the_catalog() {
        let config = Config::default();
        let catalog = catalog();
        let now = current("v1-5-pruned-emaonly.safetensors", 10240.0, "sd");
        // The short hash says nothing to a pattern; the catalog says it is Flux.
        for name in [
            "e9c9d702d0",
            "e9c9d702d0aa11bb22cc33dd44ee55ff66007788990011223344556677889900",
        ] {
            let body = format!(r#"{{"override_settings": {{"sd_model_checkpoint": "{name}"}}}}"#);
            let plan = run_with(&config, None, &body, &now, Some(12288), Some(&catalog));
            assert_eq!(plan.profile_name, "flux", "{name}");
            assert_eq!(
                plan.why_profile,
                Reason::OverrideCheckpoint("flux1-dev-Q4_0.gguf [e9c9d702d0]".into())
            );
            assert_eq!(plan.options[INFERENCE_MEMORY], json!(4096));
            assert_eq!(plan.unknown_checkpoint, None);
        }
    }

    #[test]
    fn an_unknown_override_checkpoint_leaves_the_model_forge_has() {
        let config = Config::default();
        let catalog = catalog();
        // Forge has Flux (stored by its hash, as posted) at Flux's memory.
        let mut now = current("e9c9d702d0", 4096.0, "flux");
        now.insert("flux_GPU_MB".into(), json!(8192.0));
        for name in ["nope.safetensors", "FLUX1-DEV-Q4_0.GGUF", "v1-5-pruned"] {
            let body = format!(r#"{{"override_settings": {{"sd_model_checkpoint": "{name}"}}}}"#);
            let plan = run_with(&config, None, &body, &now, Some(12288), Some(&catalog));
            assert_eq!(plan.profile_name, "flux", "{name}");
            assert_eq!(
                plan.why_profile,
                Reason::BackendCheckpoint("flux1-dev-Q4_0.gguf [e9c9d702d0]".into())
            );
            assert_eq!(plan.unknown_checkpoint.as_deref(), Some(name));
            assert_eq!(
                (plan.outcome, plan.reason),
                (Outcome::Skipped, Why::Same),
                "{name}"
            );
        }
        // Without a catalog the name is matched as spelled, as before.
        let body = r#"{"override_settings": {"sd_model_checkpoint": "nope.safetensors"}}"#;
        let plan = run_with(&config, None, body, &now, Some(12288), None);
        assert_eq!(plan.profile_name, "sd15");
    }

    #[test]
    fn a_profile_checkpoint_forge_has_under_another_alias_is_not_sent_again() {
        let config = from_toml_str(
            "[[profiles]]\nname = \"flux\"\npatterns = [\"*flux*\"]\ninference_memory_mib = 4096\n[profiles.options]\nsd_model_checkpoint = \"flux1-dev-Q4_0.gguf\"\n",
        )
        .unwrap();
        let catalog = catalog();
        let now = current("e9c9d702d0", 4096.0, "flux");
        let plan = run_with(
            &config,
            Some("flux"),
            "{}",
            &now,
            Some(12288),
            Some(&catalog),
        );
        assert!(
            !plan.options.contains_key("sd_model_checkpoint"),
            "{:?}",
            plan.options
        );
        let sd = current("v1-5-pruned-emaonly", 4096.0, "flux");
        let plan = run_with(
            &config,
            Some("flux"),
            "{}",
            &sd,
            Some(12288),
            Some(&catalog),
        );
        assert_eq!(plan.options["sd_model_checkpoint"], "flux1-dev-Q4_0.gguf");
    }

    #[test]
    fn numbers_compare_as_numbers() {
        assert!(same_value(&json!(4096), &json!(4096.0)));
        assert!(same_value(&json!([1, "a"]), &json!([1.0, "a"])));
        assert!(!same_value(&json!("4096"), &json!(4096)));
    }
}
