//! The simulated Forge's mutable state and its rules: `set_config` (POST
//! options and `override_settings`), the runtime memory settings, which
//! model is loaded where, and what `/sdapi/v1/memory` reads.
//!
//! No I/O and no locks here: the HTTP layer holds a `Mutex<Backend>` for the
//! few microseconds each call takes.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::checkpoint::{Catalog, Checkpoint};
use crate::error::ApiError;
use crate::memory::{self, GpuSetting, OutOfMemory, Placement, CPU_TOTAL_MIB, CUDA_CONTEXT_MIB};
use crate::options::{Options, MEMORY_KEYS};
use crate::python::{as_number, py_eq, py_repr, py_type_name};

const MIB: f64 = 1024.0 * 1024.0;
/// System RAM of the simulated machine.
const RAM_TOTAL_MIB: f64 = 65536.0;
/// RAM the Forge process uses before any weights sit in it.
const RAM_BASE_MIB: f64 = 3072.0;

/// What to do with an `sd_model_checkpoint` that names no checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownCheckpoint {
    /// POST options: fail with 500 and apply nothing.
    Reject,
    /// `override_settings`: drop that key silently.
    Drop,
}

/// What one `set_config` did: the keys whose stored value changed, and the
/// memory refresh line when the refresh ran.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigChange {
    pub changed: Map<String, Value>,
    pub gpu_setting: Option<GpuSetting>,
}

impl ConfigChange {
    /// Nothing changed and no refresh ran: Forge did nothing observable.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.gpu_setting.is_none()
    }
}

/// Forge's `model_data.forge_loading_parameters`: what the next generation
/// loads. When it differs from what is loaded, the model is read from its
/// file again (`sd_models.forge_model_reload`).
#[derive(Clone, Debug, PartialEq)]
struct LoadKey {
    checkpoint: String,
    additional_modules: Value,
    unet_storage_dtype: Value,
}

#[derive(Clone, Debug)]
struct LoadedModel {
    key: LoadKey,
    weights_mib: u64,
    placement: Placement,
    /// Its weights were moved off the card (`unload-checkpoint`) and go back at
    /// the next generation.
    offloaded: bool,
}

/// How a generation got its model onto the card.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// Already there, as placed.
    None,
    /// Moved back from RAM: after a memory refresh (`need_global_unload`:
    /// `memory_management.unload_all_models()` in
    /// `processing.manage_model_and_prompt_cache`) or `unload-checkpoint`.
    /// The file is not read again.
    FromRam,
    /// Read from the checkpoint file: the first generation, or the loading
    /// parameters changed (`sd_models.forge_model_reload`).
    FromDisk,
}

impl Load {
    pub fn as_str(self) -> &'static str {
        match self {
            Load::None => "none",
            Load::FromRam => "ram",
            Load::FromDisk => "disk",
        }
    }
}

/// The model a generation runs with, and the memory settings in effect.
#[derive(Clone, Debug)]
pub struct LoadReport {
    pub checkpoint: Checkpoint,
    /// How the model got onto the card for this generation.
    pub load: Load,
    /// `forge_inference_memory` in effect (MiB).
    pub inference_mib: f64,
    /// The "GPU Weights" slider: total - inference (MiB).
    pub gpu_weights_setting_mib: f64,
    pub low_vram: bool,
    pub placement: Placement,
}

/// The simulated Forge process.
#[derive(Debug)]
pub struct Backend {
    /// The card's MiB; 0 = no GPU.
    vram_mib: u64,
    catalog: Arc<Catalog>,
    options: Options,
    /// `memory_management.current_inference_memory`, set only by the refresh.
    inference_mib: f64,
    /// `processing.need_global_unload`.
    need_global_unload: bool,
    /// What the next generation loads.
    loading: LoadKey,
    loaded: Option<LoadedModel>,
    /// Memory the running sampling pass holds (MiB).
    compute_mib: f64,
    peak_mib: f64,
    oom_events: u64,
}

impl Backend {
    pub fn new(vram_mib: u64, catalog: Arc<Catalog>) -> Backend {
        let initial = catalog.initial();
        let options = Options::new(
            forge_total(vram_mib),
            initial.map(|c| c.name.as_str()),
            initial.map(|c| c.sha256.as_str()),
        );
        Backend {
            vram_mib,
            inference_mib: options.number("forge_inference_memory").unwrap_or(1024.0),
            loading: loading_parameters(&options, &catalog),
            catalog,
            options,
            need_global_unload: false,
            loaded: None,
            compute_mib: 0.0,
            peak_mib: 0.0,
            oom_events: 0,
        }
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Forge's `set_config` (`modules/sysinfo.py`). Returns what changed, and
    /// the error to answer with if the call failed.
    ///
    /// Keys are taken in the order sent, each skipped when it equals the
    /// stored value (`if v == shared.opts.data.get(k): continue`), so a
    /// failure midway (an unknown checkpoint, an unknown key) leaves the keys
    /// before it applied. Memory keys are collected and applied together after
    /// the loop, by `refresh_memory_management_settings`: only when one of them
    /// changed, and not at all when the call failed first.
    pub fn set_config(
        &mut self,
        request: &Map<String, Value>,
        unknown_checkpoint: UnknownCheckpoint,
    ) -> (ConfigChange, Option<ApiError>) {
        let mut change = ConfigChange::default();
        if let Some(value) = request.get("forge_inference_memory") {
            if as_number(value).is_none() {
                let error = ApiError::Exception {
                    error: "TypeError",
                    message: format!(
                        "unsupported operand type(s) for -: 'int' and '{}'",
                        py_type_name(value)
                    ),
                };
                return (change, Some(error));
            }
        }

        let mut memory_changes = Map::new();
        let mut refresh_loading = false;
        for (key, value) in request {
            // `opts.data.get(k)`: what is stored, not the default. A fresh Forge stores
            // almost nothing, so posting a default is a change; `null` for a key never
            // stored (even an unknown one) is skipped.
            if py_eq(self.options.stored(key).unwrap_or(&Value::Null), value) {
                continue;
            }
            match key.as_str() {
                // `sd_model_checkpoint = None` falls through Forge's alias check and changes
                // nothing a client can observe; the simulator skips it.
                "sd_model_checkpoint" if value.is_null() => {}
                "sd_model_checkpoint" => match self.set_checkpoint(value, unknown_checkpoint) {
                    Ok(changed) => {
                        if changed {
                            change.changed.insert(key.clone(), value.clone());
                            refresh_loading = true;
                        }
                    }
                    Err(error) => return (change, Some(error)),
                },
                "forge_additional_modules" => {
                    if let Some(stored) = self.options.set(key, value) {
                        change.changed.insert(key.clone(), stored);
                        refresh_loading = true;
                    }
                }
                key if MEMORY_KEYS.contains(&key) => {
                    memory_changes.insert(key.to_owned(), value.clone());
                }
                _ if !self.options.contains(key) => {
                    let error = ApiError::Exception {
                        error: "KeyError",
                        message: py_repr(&json!(key)),
                    };
                    return (change, Some(error));
                }
                _ => {
                    if let Some(stored) = self.options.set(key, value) {
                        change.changed.insert(key.clone(), stored);
                    }
                }
            }
        }
        if !memory_changes.is_empty() {
            for (key, value) in &memory_changes {
                if let Some(stored) = self.options.set(key, value) {
                    change.changed.insert(key.clone(), stored);
                }
            }
            change.gpu_setting = Some(self.refresh_memory_management_settings());
            refresh_loading = true;
        }
        if refresh_loading {
            self.refresh_model_loading_parameters();
        }
        (change, None)
    }

    /// A posted `sd_model_checkpoint`: whether it changes the selected model (stored as
    /// the alias was sent); an unknown name is an error, or skipped as `unknown` says.
    fn set_checkpoint(
        &mut self,
        value: &Value,
        unknown: UnknownCheckpoint,
    ) -> Result<bool, ApiError> {
        let Some(new) = value.as_str().and_then(|alias| self.catalog.resolve(alias)) else {
            return match unknown {
                UnknownCheckpoint::Drop => Ok(false),
                UnknownCheckpoint::Reject => Err(ApiError::runtime(format!(
                    "model {} not found",
                    py_repr(value)
                ))),
            };
        };
        // `main_entry.checkpoint_change`: another alias of the selected model changes
        // nothing, not even the stored string; a new model is stored as the alias was sent.
        let current = self
            .options
            .str("sd_model_checkpoint")
            .and_then(|alias| self.catalog.resolve(alias));
        if current.map(|c| &c.name) == Some(&new.name) {
            return Ok(false);
        }
        self.options
            .set_internal("sd_model_checkpoint", value.clone());
        Ok(true)
    }

    /// Forge's `refresh_model_loading_parameters`: the checkpoint, modules and
    /// UNet dtype the next generation loads, taken from the options *now*.
    /// A dtype posted on its own is stored but not taken until something
    /// else runs this (the option has no `onchange` in
    /// `modules_forge/shared_options.py`). Also sets `need_global_unload`.
    fn refresh_model_loading_parameters(&mut self) {
        self.loading = loading_parameters(&self.options, &self.catalog);
        self.need_global_unload = true;
    }

    /// Forge's `refresh_memory_management_settings`: takes the stored memory
    /// options into effect and makes the next generation reload everything.
    fn refresh_memory_management_settings(&mut self) -> GpuSetting {
        let inference = self
            .options
            .number("forge_inference_memory")
            .unwrap_or(self.inference_mib);
        self.inference_mib = inference;
        self.options
            .set_internal("forge_inference_memory", json!(inference));
        // It `opts.set`s all three, so from now on each is stored.
        for key in ["forge_async_loading", "forge_pin_shared_memory"] {
            if let Some(value) = self.options.get(key).cloned() {
                self.options.set_internal(key, value);
            }
        }
        self.need_global_unload = true;

        let setting = memory::gpu_setting(self.total_mib(), inference);
        tracing::info!(
            "Environment vars changed: {{'stream': {}, 'inference_memory': {:.1}, 'pin_shared_memory': {}}}",
            py_bool(self.options.str("forge_async_loading") == Some("Async")),
            inference,
            py_bool(self.options.str("forge_pin_shared_memory") == Some("Shared")),
        );
        if setting.low_vram {
            tracing::info!("------------------");
            tracing::info!("{}", setting.line);
            tracing::info!("[Low VRAM Warning] This may cause slow speed or out of memory errors.");
            tracing::info!("[Low VRAM Warning] Make sure that you know what you are testing.");
            tracing::info!("------------------");
        } else {
            tracing::info!("{}", setting.line);
        }
        setting
    }

    /// The `total_vram` Forge counts with (MiB).
    pub fn total_mib(&self) -> f64 {
        forge_total(self.vram_mib) as f64
    }

    /// The checkpoints as Forge lists them now.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.clone()
    }

    /// The catalog built again (`refresh-checkpoints`); what is selected and loaded stays.
    pub fn set_catalog(&mut self, catalog: Arc<Catalog>) {
        self.catalog = catalog;
    }

    /// Puts the model the loading parameters name on the card for a
    /// generation: from its file when those parameters changed since it was
    /// loaded, from RAM after a memory refresh or an unload, else not at all.
    pub fn load_for_generation(&mut self) -> Result<LoadReport, ApiError> {
        let checkpoint = self
            .catalog
            .resolve(&self.loading.checkpoint)
            .cloned()
            .ok_or_else(|| ApiError::Exception {
                error: "FileNotFoundError",
                message: "No checkpoints found. When searching for checkpoints, looked at:\n - file /forge/models/Stable-diffusion".into(),
            })?;
        let load = match &self.loaded {
            Some(loaded) if loaded.key == self.loading => {
                if self.need_global_unload || loaded.offloaded {
                    Load::FromRam
                } else {
                    Load::None
                }
            }
            _ => Load::FromDisk,
        };
        if load != Load::None {
            let placement =
                memory::place(self.vram_mib, self.inference_mib, checkpoint.weights_mib);
            self.loaded = Some(LoadedModel {
                key: self.loading.clone(),
                weights_mib: checkpoint.weights_mib,
                placement,
                offloaded: false,
            });
            if load == Load::FromDisk {
                self.options
                    .set_internal("sd_checkpoint_hash", json!(checkpoint.sha256));
            }
            self.note_peak();
        }
        self.need_global_unload = false;
        let placement = self
            .loaded
            .as_ref()
            .map(|loaded| loaded.placement)
            .unwrap_or_else(|| {
                memory::place(self.vram_mib, self.inference_mib, checkpoint.weights_mib)
            });
        let total = self.total_mib();
        Ok(LoadReport {
            checkpoint,
            load,
            inference_mib: self.inference_mib,
            gpu_weights_setting_mib: total - self.inference_mib,
            low_vram: memory::is_low_vram(total, self.inference_mib),
            placement,
        })
    }

    /// A sampling pass that needs `need_mib` of working memory starts; fails
    /// like CUDA when it does not fit next to the weights.
    pub fn begin_pass(&mut self, placement: &Placement, need_mib: f64) -> Result<(), OutOfMemory> {
        if let Err(oom) = memory::check_fits(self.vram_mib, placement, need_mib) {
            self.oom_events += 1;
            return Err(oom);
        }
        self.compute_mib = if self.vram_mib == 0 { 0.0 } else { need_mib };
        self.note_peak();
        Ok(())
    }

    /// The sampling pass released its working memory.
    pub fn end_pass(&mut self) {
        self.compute_mib = 0.0;
    }

    /// `/sdapi/v1/unload-checkpoint` (`sd_models.unload_model_weights`):
    /// `unload_all_models()` moves the weights off the card; the model stays
    /// loaded in RAM and goes back at the next generation.
    pub fn unload(&mut self) {
        if let Some(loaded) = &mut self.loaded {
            loaded.offloaded = true;
        }
    }

    fn allocated_mib(&self) -> f64 {
        self.loaded
            .as_ref()
            .filter(|loaded| !loaded.offloaded)
            .map_or(0.0, |loaded| loaded.placement.gpu_weights_mib)
            + self.compute_mib
    }

    fn note_peak(&mut self) {
        self.peak_mib = self.peak_mib.max(self.allocated_mib());
    }

    /// `GET /sdapi/v1/memory`: RAM figures as floats and CUDA figures as
    /// byte counts, like Forge's `psutil` / `torch.cuda` readings.
    pub fn memory_json(&self) -> Value {
        let cpu_weights = self.loaded.as_ref().map_or(0.0, |loaded| {
            let on_gpu = if loaded.offloaded {
                0.0
            } else {
                loaded.placement.gpu_weights_mib
            };
            loaded.weights_mib as f64 - on_gpu
        });
        let ram_total = RAM_TOTAL_MIB * MIB;
        let ram_used = ((RAM_BASE_MIB + cpu_weights) * MIB).round();
        let ram =
            json!({ "free": ram_total - ram_used, "used": ram_used as u64, "total": ram_total });
        if self.vram_mib == 0 {
            return json!({ "ram": ram, "cuda": { "error": "unavailable" } });
        }
        let bytes = |mib: f64| (mib * MIB).round() as u64;
        let total = bytes(self.vram_mib as f64);
        let allocated = bytes(self.allocated_mib());
        let used = (bytes(CUDA_CONTEXT_MIB) + allocated).min(total);
        let peak = bytes(self.peak_mib);
        json!({
            "ram": ram,
            "cuda": {
                "system": { "free": total - used, "used": used, "total": total },
                "active": { "current": allocated, "peak": peak },
                "allocated": { "current": allocated, "peak": peak },
                "reserved": { "current": allocated, "peak": peak },
                "inactive": { "current": 0, "peak": 0 },
                "events": { "retries": 0, "oom": self.oom_events },
            }
        })
    }
}

/// The loading parameters the options name now: the checkpoint as its file
/// name, whichever alias the option holds (an unknown one is kept as is and
/// fails at load).
fn loading_parameters(options: &Options, catalog: &Catalog) -> LoadKey {
    let alias = options.str("sd_model_checkpoint").unwrap_or_default();
    LoadKey {
        checkpoint: catalog
            .resolve(alias)
            .map_or(alias, |checkpoint| checkpoint.name.as_str())
            .to_owned(),
        additional_modules: options
            .get("forge_additional_modules")
            .cloned()
            .unwrap_or(Value::Null),
        // `forge_unet_storage_dtype_options`: the "(fp16 LoRA)" variants load the same
        // weights and only change how LoRAs apply.
        unet_storage_dtype: match options.get("forge_unet_storage_dtype") {
            Some(Value::String(dtype)) => {
                Value::String(dtype.trim_end_matches(" (fp16 LoRA)").to_owned())
            }
            other => other.cloned().unwrap_or(Value::Null),
        },
    }
}

/// Forge's `total_vram`: the card, or system RAM when running on the CPU.
fn forge_total(vram_mib: u64) -> u64 {
    if vram_mib == 0 {
        CPU_TOTAL_MIB
    } else {
        vram_mib
    }
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SimConfig;

    fn backend(vram_mib: u64) -> Backend {
        let catalog = Arc::new(Catalog::new(&SimConfig::default().checkpoints));
        Backend::new(vram_mib, catalog)
    }

    fn request(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn unknown_checkpoint_is_rejected_and_nothing_applied() {
        let mut b = backend(12288);
        let (change, error) = b.set_config(
            &request(json!({"sd_model_checkpoint": "nope", "jpeg_quality": 90})),
            UnknownCheckpoint::Reject,
        );
        assert!(change.is_empty());
        assert!(
            matches!(error, Some(ApiError::Exception { error: "RuntimeError", ref message }) if message == "model 'nope' not found")
        );
        assert_eq!(b.options().get("jpeg_quality"), Some(&json!(80)));
    }

    #[test]
    fn null_for_a_key_never_stored_is_skipped_even_when_unknown() {
        let mut b = backend(12288);
        let (change, error) = b.set_config(
            &request(json!({"no_such_option": null})),
            UnknownCheckpoint::Reject,
        );
        assert!(change.is_empty());
        assert!(error.is_none());
    }

    #[test]
    fn unknown_checkpoint_in_override_is_dropped() {
        let mut b = backend(12288);
        let (change, error) = b.set_config(
            &request(json!({"sd_model_checkpoint": "nope", "jpeg_quality": 90})),
            UnknownCheckpoint::Drop,
        );
        assert!(error.is_none());
        assert_eq!(change.changed, request(json!({"jpeg_quality": 90})));
    }

    #[test]
    fn checkpoint_is_stored_as_the_alias_sent() {
        let mut b = backend(12288);
        let flux = b.catalog.resolve("flux1-dev-Q4_0.gguf").unwrap().clone();
        let (change, _) = b.set_config(
            &request(json!({"sd_model_checkpoint": flux.short_hash})),
            UnknownCheckpoint::Reject,
        );
        assert_eq!(
            change.changed["sd_model_checkpoint"],
            json!(flux.short_hash)
        );
        // Another alias of the same model changes nothing, not even the string.
        let (again, _) = b.set_config(
            &request(json!({"sd_model_checkpoint": "flux1-dev-Q4_0.gguf"})),
            UnknownCheckpoint::Reject,
        );
        assert!(again.is_empty());
        assert_eq!(
            b.options().str("sd_model_checkpoint"),
            Some(flux.short_hash.as_str())
        );
        assert_eq!(b.load_for_generation().unwrap().checkpoint.name, flux.name);
    }

    #[test]
    fn unchanged_memory_key_is_skipped_without_a_refresh() {
        let mut b = backend(12288);
        // A fresh Forge has not stored its default: the first post is a change.
        let (first, _) = b.set_config(
            &request(json!({"forge_inference_memory": 1024})),
            UnknownCheckpoint::Reject,
        );
        assert!(first.gpu_setting.is_some());
        b.load_for_generation().unwrap();
        let (change, _) = b.set_config(
            &request(json!({"forge_inference_memory": 1024.0})),
            UnknownCheckpoint::Reject,
        );
        assert!(change.is_empty());
        assert_eq!(b.load_for_generation().unwrap().load, Load::None);
    }

    #[test]
    fn memory_change_moves_weights_back_from_ram_and_a_checkpoint_change_reads_the_file() {
        let mut b = backend(12288);
        assert_eq!(b.load_for_generation().unwrap().load, Load::FromDisk);
        let (change, _) = b.set_config(
            &request(json!({"forge_inference_memory": 4096})),
            UnknownCheckpoint::Reject,
        );
        assert!(change.gpu_setting.is_some());
        assert_eq!(b.load_for_generation().unwrap().load, Load::FromRam);
        assert_eq!(b.load_for_generation().unwrap().load, Load::None);
        b.set_config(
            &request(json!({"sd_model_checkpoint": "flux1-dev-Q4_0.gguf"})),
            UnknownCheckpoint::Reject,
        );
        assert_eq!(b.load_for_generation().unwrap().load, Load::FromDisk);
        b.unload();
        assert_eq!(b.load_for_generation().unwrap().load, Load::FromRam);
    }

    #[test]
    fn keys_apply_in_order_until_one_fails_and_memory_is_then_left_alone() {
        let mut b = backend(12288);
        let body: Map<String, Value> = serde_json::from_str(
            r#"{"jpeg_quality": 62, "forge_inference_memory": 4096, "aaa_unknown": 1}"#,
        )
        .unwrap();
        let (change, error) = b.set_config(&body, UnknownCheckpoint::Reject);
        assert!(matches!(
            error,
            Some(ApiError::Exception {
                error: "KeyError",
                ..
            })
        ));
        assert_eq!(change.changed, request(json!({"jpeg_quality": 62})));
        assert!(change.gpu_setting.is_none());
        assert_eq!(b.options().number("forge_inference_memory"), Some(1024.0));

        let body: Map<String, Value> =
            serde_json::from_str(r#"{"jpeg_quality": 70, "sd_model_checkpoint": "nope"}"#).unwrap();
        let (change, error) = b.set_config(&body, UnknownCheckpoint::Reject);
        assert!(matches!(
            error,
            Some(ApiError::Exception {
                error: "RuntimeError",
                ..
            })
        ));
        assert_eq!(change.changed, request(json!({"jpeg_quality": 70})));
    }

    #[test]
    fn unknown_option_is_a_key_error_after_the_keys_before_it() {
        let mut b = backend(12288);
        let (change, error) = b.set_config(
            &request(json!({"aaa_unknown": 1, "jpeg_quality": 90})),
            UnknownCheckpoint::Reject,
        );
        assert!(change.is_empty());
        assert!(
            matches!(error, Some(ApiError::Exception { error: "KeyError", ref message }) if message == "'aaa_unknown'")
        );
    }

    #[test]
    fn non_numeric_inference_memory_is_a_type_error() {
        let mut b = backend(12288);
        let (_, error) = b.set_config(
            &request(json!({"forge_inference_memory": "4096"})),
            UnknownCheckpoint::Reject,
        );
        assert!(matches!(
            error,
            Some(ApiError::Exception {
                error: "TypeError",
                ..
            })
        ));
    }

    #[test]
    fn module_change_reloads_but_changing_back_does_not() {
        let mut b = backend(12288);
        assert_eq!(
            b.load_for_generation().unwrap().load,
            Load::FromDisk,
            "first load"
        );
        b.set_config(
            &request(json!({"forge_additional_modules": ["ae.safetensors"]})),
            UnknownCheckpoint::Reject,
        );
        assert_eq!(b.load_for_generation().unwrap().load, Load::FromDisk);
        b.set_config(
            &request(json!({"forge_additional_modules": []})),
            UnknownCheckpoint::Reject,
        );
        b.set_config(
            &request(json!({"forge_additional_modules": ["ae.safetensors"]})),
            UnknownCheckpoint::Reject,
        );
        // Unchanged parameters, but each change set `need_global_unload`.
        assert_eq!(b.load_for_generation().unwrap().load, Load::FromRam);
    }

    #[test]
    fn dtype_alone_is_stored_and_taken_at_the_next_loading_refresh() {
        let mut b = backend(12288);
        b.load_for_generation().unwrap();
        b.set_config(
            &request(json!({"forge_unet_storage_dtype": "bnb-nf4"})),
            UnknownCheckpoint::Reject,
        );
        assert_eq!(b.options().str("forge_unet_storage_dtype"), Some("bnb-nf4"));
        assert_eq!(b.load_for_generation().unwrap().load, Load::None);
        b.set_config(
            &request(json!({"forge_inference_memory": 2048})),
            UnknownCheckpoint::Reject,
        );
        assert_eq!(b.load_for_generation().unwrap().load, Load::FromDisk);
    }

    #[test]
    fn memory_reading_follows_the_loaded_weights() {
        let mut b = backend(12288);
        let before = b.memory_json();
        assert_eq!(
            before["cuda"]["system"]["used"],
            json!(300u64 * 1024 * 1024)
        );
        b.load_for_generation().unwrap();
        let after = b.memory_json();
        assert_eq!(
            after["cuda"]["system"]["used"],
            json!(2300u64 * 1024 * 1024)
        );
        assert_eq!(
            after["cuda"]["system"]["total"],
            json!(12288u64 * 1024 * 1024)
        );
    }

    #[test]
    fn no_gpu_reports_cuda_unavailable() {
        assert_eq!(
            backend(0).memory_json()["cuda"],
            json!({"error": "unavailable"})
        );
    }
}
