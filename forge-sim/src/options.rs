//! Forge's settings (`shared.opts`, `modules/options.py`): the options it
//! registers, with their defaults, in its order; what it has stored
//! (`opts.data`); and how `GET /sdapi/v1/options` writes them.
//!
//! Three things decide what a client sees, as in Forge:
//! - `opts.data` starts almost empty: a fresh Forge (an empty `config.json`)
//!   holds only the options extensions add at start-up and the checkpoint it
//!   selected. An option not stored reads as its default (`opts.X`), but
//!   `set_config` compares a posted value with `opts.data.get(k)`, so posting
//!   a default to a fresh Forge is a change.
//! - A posted value is stored as sent (`62` stays an `int`).
//! - `GET /sdapi/v1/options` answers through the pydantic model
//!   `OptionsModel` (`modules/api/models.py`), built at start-up from the
//!   options registered then, in their order: each field typed after its
//!   default, `Optional[float]` for a number (`Options.typemap` maps `int` to
//!   `float`), `bool`, `str` or `list` otherwise, and `Any` when the default is
//!   falsy (`0`, `0.0`, `""`, `[]`, `False`, `None`). FastAPI validates the
//!   stored values against it in lax mode and writes the result, so every
//!   number of a number-typed option comes back as a float (`80.0`, also after
//!   posting `62`: `62.0`), `Any` options come back as stored, options
//!   registered after the model was built are left out, and a stored value
//!   the model cannot take (`"abc"` for `jpeg_quality`) makes every later GET
//!   a `500 ResponseValidationError`.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use serde_json::{json, Map, Value};

use crate::python::{as_number, py_eq, py_json_response, py_repr, write_json_response};

/// The keys whose change makes Forge run `refresh_memory_management_settings`
/// (and so reload every model).
pub const MEMORY_KEYS: [&str; 3] = [
    "forge_inference_memory",
    "forge_async_loading",
    "forge_pin_shared_memory",
];

/// Memory figures the simulator stores as floats. Forge stores them as sent;
/// no answer of Forge's shows the difference (GET writes every number of a
/// number-typed option as a float), and the simulator's journal reads them
/// alike whether `4096` or `4096.0` was posted.
const FLOAT_KEYS: [&str; 3] = ["forge_inference_memory", "flux_GPU_MB", "xl_GPU_MB"];

/// The options store. Keys outside it do not exist, as in Forge, where
/// setting one fails with a `KeyError`.
#[derive(Clone, Debug)]
pub struct Options {
    registry: Arc<Registry>,
    /// `opts.data`: what has been stored, in the order first stored.
    data: Map<String, Value>,
}

/// Forge's `opts.data_labels`: every option and its default.
#[derive(Debug)]
struct Registry {
    /// `OptionsModel`'s fields: what GET lists, in its order.
    listed: Map<String, Value>,
    /// Registered after `OptionsModel` was built: they can be set (and are
    /// read by Forge's code) but GET leaves them out.
    unlisted: Map<String, Value>,
}

impl Options {
    /// A fresh Forge's options on a card of `total_vram_mib` with `checkpoint`
    /// (a file name) selected. The checkpoint's hash is not known until a
    /// generation loads it: `sd_checkpoint_hash` is `""` until then.
    pub fn new(
        total_vram_mib: u64,
        checkpoint: Option<&str>,
        _checkpoint_sha256: Option<&str>,
    ) -> Options {
        let base = base();
        let mut listed = base.listed.clone();
        // `modules_forge/main_entry.py`: `OptionInfo(total_vram - 1024, ...)`, an int.
        let gpu_weights = json!(total_vram_mib.saturating_sub(1024));
        for key in ["xl_GPU_MB", "flux_GPU_MB"] {
            if let Some(value) = listed.get_mut(key) {
                *value = gpu_weights.clone();
            }
        }
        let mut unlisted = base.added.clone();
        unlisted.extend(base.unlisted.clone());
        // `opts.add_option` stores the default of an option added after
        // `config.json` was read; the start-up then stores the checkpoint.
        let mut data = base.added.clone();
        if let Some(checkpoint) = checkpoint {
            data.insert("sd_model_checkpoint".into(), json!(checkpoint));
        }
        Options {
            registry: Arc::new(Registry { listed, unlisted }),
            data,
        }
    }

    /// `opts.X`: the stored value, else the default.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.data
            .get(key)
            .or_else(|| self.registry.listed.get(key))
            .or_else(|| self.registry.unlisted.get(key))
    }

    /// `opts.data.get(k)`: the stored value only, `None` for an option never
    /// stored. `set_config` compares a posted value with this, and
    /// `process_images` restores only the overridden keys stored here.
    #[allow(dead_code, reason = "for `set_config` and the override restore")]
    pub fn stored(&self, key: &str) -> Option<&Value> {
        self.data.get(key)
    }

    /// `k in opts.data_labels`: the option exists.
    pub fn contains(&self, key: &str) -> bool {
        self.registry.listed.contains_key(key) || self.registry.unlisted.contains_key(key)
    }

    /// A memory figure as a number (Forge would fail on anything else).
    pub fn number(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(as_number)
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// `opts.set`: stores `value` unless it equals the stored one (Python
    /// `==` against `opts.data.get(key)`, so numbers compare as numbers and an
    /// option never stored compares as `None`). Returns the value stored, or
    /// `None` when skipped. The caller has checked that the key exists.
    pub fn set(&mut self, key: &str, value: &Value) -> Option<Value> {
        if py_eq(self.data.get(key).unwrap_or(&Value::Null), value) {
            return None;
        }
        let value = normalize(key, value);
        self.data.insert(key.to_owned(), value.clone());
        Some(value)
    }

    /// Stores a value Forge itself maintains (not a user's change), as its
    /// code does with `opts.data[key] = value`.
    pub fn set_internal(&mut self, key: &str, value: Value) {
        self.data.insert(key.to_owned(), value);
    }

    /// Every option GET lists, in its order, as Forge's code reads it
    /// (`opts.X`): the values as stored, before `OptionsModel` makes the
    /// numbers floats. GET's own answer is [`Options::to_json_bytes`].
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.registry
                .listed
                .iter()
                .map(|(key, default)| (key.clone(), self.data.get(key).unwrap_or(default).clone()))
                .collect(),
        )
    }

    /// `GET /sdapi/v1/options`'s body, byte for byte as Forge writes it: the
    /// listed options in order, each through its `OptionsModel` field
    /// (`jpeg_quality` `80.0`), without copying the values first. A value the
    /// model cannot take is written as stored; Forge answers
    /// [`Options::get_error`] instead.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(12 * 1024);
        out.push('{');
        for (i, (key, default)) in self.registry.listed.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_json_response(&Value::String(key.clone()), &mut out);
            out.push(':');
            let value = self.data.get(key).unwrap_or(default);
            match Field::of(default).take(value) {
                Ok(taken) => write_json_response(&taken, &mut out),
                Err(_) => write_json_response(value, &mut out),
            }
        }
        out.push('}');
        out.into_bytes()
    }

    /// The 500 body Forge answers `GET /sdapi/v1/options` with when a stored
    /// value does not fit its option's type, or `None` when GET succeeds:
    /// FastAPI's `ResponseValidationError` (`"body"` is `opts.data`, the
    /// message lists pydantic's errors in field order), or, for a string that
    /// reads as an infinite or NaN float, `json.dumps`' `ValueError`.
    #[allow(dead_code, reason = "for the GET handler")]
    pub fn get_error(&self) -> Option<Vec<u8>> {
        let mut errors = Vec::new();
        let mut out_of_range = false;
        for (key, default) in &self.registry.listed {
            // Only stored values are validated; pydantic takes a missing
            // field's default as it is.
            let Some(value) = self.data.get(key) else {
                continue;
            };
            match Field::of(default).take(value) {
                Ok(_) => {}
                Err(Refused::OutOfRange) => out_of_range = true,
                Err(Refused::Invalid(error)) => errors.push(error.describe(key, value)),
            }
        }
        if !errors.is_empty() {
            let mut message = format!("{} validation errors:\n", errors.len());
            for error in errors {
                message.push_str("  ");
                message.push_str(&error);
                message.push('\n');
            }
            let body = json!({
                "error": "ResponseValidationError",
                "detail": "",
                "body": Value::Object(self.data.clone()),
                "message": message,
            });
            return Some(py_json_response(&body));
        }
        out_of_range.then(|| {
            py_json_response(&json!({
                "error": "ValueError",
                "detail": "",
                "body": "",
                "message": "Out of range float values are not JSON compliant",
            }))
        })
    }
}

/// Memory figures are stored as floats (see [`FLOAT_KEYS`]).
fn normalize(key: &str, value: &Value) -> Value {
    match (FLOAT_KEYS.contains(&key), value.as_f64()) {
        (true, Some(f)) if value.is_number() => json!(f),
        _ => value.clone(),
    }
}

/// An `OptionsModel` field's type: `Optional[T]` with `T` after the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Float,
    Bool,
    Str,
    List,
    Dict,
    /// A falsy default (`0`, `0.0`, `""`, `[]`, `False`, `None`): anything.
    Any,
}

/// Why a stored value cannot be written by GET.
#[derive(Debug, PartialEq)]
enum Refused {
    /// pydantic's validation error.
    Invalid(Invalid),
    /// A string that reads as an infinite or NaN float: valid, but
    /// `json.dumps(allow_nan=False)` refuses it.
    OutOfRange,
}

/// The pydantic 2.8 (lax mode) errors a stored option can meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Invalid {
    FloatType,
    FloatParsing,
    BoolType,
    BoolParsing,
    StringType,
    ListType,
    DictType,
}

impl Field {
    /// `opts.typemap.get(type(default), type(default)) if default else Any`.
    fn of(default: &Value) -> Field {
        match default {
            Value::Bool(true) => Field::Bool,
            Value::Number(n) if n.as_f64() != Some(0.0) => Field::Float,
            Value::String(s) if !s.is_empty() => Field::Str,
            Value::Array(items) if !items.is_empty() => Field::List,
            Value::Object(map) if !map.is_empty() => Field::Dict,
            _ => Field::Any,
        }
    }

    /// What pydantic makes of a stored `value` for this field, in lax mode:
    /// numbers, booleans and numeric strings become floats for a float
    /// field; `0`/`1` and `"yes"`/`"off"`-like strings booleans for a bool
    /// field; `None` is always taken (`Optional`); nothing else is converted.
    fn take(self, value: &Value) -> Result<Cow<'_, Value>, Refused> {
        let taken = |value: Value| Ok(Cow::Owned(value));
        let refused = |error: Invalid| Err(Refused::Invalid(error));
        if value.is_null() {
            return Ok(Cow::Borrowed(value));
        }
        match (self, value) {
            (Field::Any, _)
            | (Field::Bool, Value::Bool(_))
            | (Field::Str, Value::String(_))
            | (Field::List, Value::Array(_))
            | (Field::Dict, Value::Object(_)) => Ok(Cow::Borrowed(value)),
            (Field::Float, Value::Number(n)) if n.is_f64() => Ok(Cow::Borrowed(value)),
            (Field::Float, Value::Number(n)) => taken(json!(n.as_f64().unwrap_or_default())),
            (Field::Float, Value::Bool(b)) => taken(json!(if *b { 1.0 } else { 0.0 })),
            (Field::Float, Value::String(s)) => match parse_float(s) {
                Some(f) if f.is_finite() => taken(json!(f)),
                Some(_) => Err(Refused::OutOfRange),
                None => refused(Invalid::FloatParsing),
            },
            (Field::Float, _) => refused(Invalid::FloatType),
            (Field::Bool, Value::Number(n)) => match n.as_f64() {
                Some(0.0) => taken(json!(false)),
                Some(1.0) => taken(json!(true)),
                _ => refused(Invalid::BoolParsing),
            },
            (Field::Bool, Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                "0" | "off" | "f" | "false" | "n" | "no" => taken(json!(false)),
                "1" | "on" | "t" | "true" | "y" | "yes" => taken(json!(true)),
                _ => refused(Invalid::BoolParsing),
            },
            (Field::Bool, _) => refused(Invalid::BoolType),
            (Field::Str, _) => refused(Invalid::StringType),
            (Field::List, _) => refused(Invalid::ListType),
            (Field::Dict, _) => refused(Invalid::DictType),
        }
    }
}

impl Invalid {
    /// One line of `ResponseValidationError`'s message: the error as the
    /// Python dict pydantic reports.
    fn describe(self, key: &str, input: &Value) -> String {
        let (kind, msg) = match self {
            Invalid::FloatType => ("float_type", "Input should be a valid number"),
            Invalid::FloatParsing => (
                "float_parsing",
                "Input should be a valid number, unable to parse string as a number",
            ),
            Invalid::BoolType => ("bool_type", "Input should be a valid boolean"),
            Invalid::BoolParsing => (
                "bool_parsing",
                "Input should be a valid boolean, unable to interpret input",
            ),
            Invalid::StringType => ("string_type", "Input should be a valid string"),
            Invalid::ListType => ("list_type", "Input should be a valid list"),
            Invalid::DictType => ("dict_type", "Input should be a valid dictionary"),
        };
        format!(
            "{{'type': '{kind}', 'loc': ('response', {}), 'msg': '{msg}', 'input': {}, 'url': 'https://errors.pydantic.dev/2.8/v/{kind}'}}",
            py_repr(&json!(key)),
            py_repr(input),
        )
    }
}

/// pydantic's string-to-float: surrounding whitespace ignored, `_` allowed
/// between digits, and Python's float syntax (`1e3`, `.5`, `5.`, `+5`, `inf`,
/// `nan`).
fn parse_float(text: &str) -> Option<f64> {
    let text = text.trim();
    let bytes = text.as_bytes();
    let digit_at = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_digit);
    let underscores_between_digits = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'_')
        .all(|(i, _)| i > 0 && digit_at(i - 1) && digit_at(i + 1));
    if !underscores_between_digits {
        return None;
    }
    text.replace('_', "").parse().ok()
}

/// The registry's parts that do not depend on the machine, read once.
struct Base {
    listed: Map<String, Value>,
    added: Map<String, Value>,
    unlisted: Map<String, Value>,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let read = |text: &str| -> Map<String, Value> {
            serde_json::from_str(text).expect("the option defaults are valid JSON")
        };
        Base {
            listed: read(LISTED),
            added: read(ADDED),
            unlisted: read(UNLISTED),
        }
    })
}

/// `OptionsModel`'s fields in Forge f2.0.1v1.10.1 (331, the order of
/// `opts.data_labels` when `modules/api/models.py` was imported), with
/// Forge's defaults as Python has them (`80` an int, `4.0` a float; GET
/// writes both as floats). `xl_GPU_MB` and `flux_GPU_MB` depend on the card
/// and are filled in by [`Options::new`].
const LISTED: &str = r##"{
    "samples_save": true,
    "samples_format": "png",
    "samples_filename_pattern": "",
    "save_images_add_number": true,
    "save_images_replace_action": "Replace",
    "grid_save": true,
    "grid_format": "png",
    "grid_extended_filename": false,
    "grid_only_if_multiple": true,
    "grid_prevent_empty_spots": false,
    "grid_zip_filename_pattern": "",
    "n_rows": -1,
    "font": "",
    "grid_text_active_color": "#000000",
    "grid_text_inactive_color": "#999999",
    "grid_background_color": "#ffffff",
    "save_images_before_face_restoration": false,
    "save_images_before_highres_fix": false,
    "save_images_before_color_correction": false,
    "save_mask": false,
    "save_mask_composite": false,
    "jpeg_quality": 80,
    "webp_lossless": false,
    "export_for_4chan": true,
    "img_downscale_threshold": 4.0,
    "target_side_length": 4000,
    "img_max_size_mp": 200,
    "use_original_name_batch": true,
    "use_upscaler_name_as_suffix": false,
    "save_selected_only": true,
    "save_write_log_csv": true,
    "save_init_img": false,
    "temp_dir": "",
    "clean_temp_dir_at_start": false,
    "save_incomplete_images": false,
    "notification_audio": true,
    "notification_volume": 100,
    "outdir_samples": "",
    "outdir_txt2img_samples": "outputs/txt2img-images",
    "outdir_img2img_samples": "outputs/img2img-images",
    "outdir_extras_samples": "outputs/extras-images",
    "outdir_grids": "",
    "outdir_txt2img_grids": "outputs/txt2img-grids",
    "outdir_img2img_grids": "outputs/img2img-grids",
    "outdir_save": "log/images",
    "outdir_init_images": "outputs/init-images",
    "save_to_dirs": true,
    "grid_save_to_dirs": true,
    "use_save_to_dirs_for_ui": false,
    "directories_filename_pattern": "[date]",
    "directories_max_prompt_words": 8,
    "ESRGAN_tile": 192,
    "ESRGAN_tile_overlap": 8,
    "realesrgan_enabled_models": ["R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B"],
    "dat_enabled_models": ["DAT x2", "DAT x3", "DAT x4"],
    "DAT_tile": 192,
    "DAT_tile_overlap": 8,
    "upscaler_for_img2img": null,
    "set_scale_by_when_changing_upscaler": false,
    "face_restoration": false,
    "face_restoration_model": "CodeFormer",
    "code_former_weight": 0.5,
    "face_restoration_unload": false,
    "auto_launch_browser": "Local",
    "enable_console_prompts": false,
    "show_warnings": false,
    "show_gradio_deprecation_warnings": true,
    "memmon_poll_rate": 8,
    "samples_log_stdout": false,
    "multiple_tqdm": true,
    "enable_upscale_progressbar": true,
    "print_hypernet_extra": false,
    "list_hidden_files": true,
    "disable_mmap_load_safetensors": false,
    "hide_ldm_prints": true,
    "dump_stacks_on_signal": false,
    "profiling_explanation": "Those settings allow you to enable torch profiler when generating pictures.\nProfiling allows you to see which code uses how much of computer's resources during generation.\nEach generation writes its own profile to one file, overwriting previous.\nThe file can be viewed in <a href=\"chrome:tracing\">Chrome</a>, or on a <a href=\"https://ui.perfetto.dev/\">Perfetto</a> web site.\nWarning: writing profile can take a lot of time, up to 30 seconds, and the file itelf can be around 500MB in size.",
    "profiling_enable": false,
    "profiling_activities": ["CPU"],
    "profiling_record_shapes": true,
    "profiling_profile_memory": true,
    "profiling_with_stack": true,
    "profiling_filename": "trace.json",
    "api_enable_requests": true,
    "api_forbid_local_requests": true,
    "api_useragent": "",
    "unload_models_when_training": false,
    "pin_memory": false,
    "save_optimizer_state": false,
    "save_training_settings_to_txt": true,
    "dataset_filename_word_regex": "",
    "dataset_filename_join_string": " ",
    "training_image_repeats_per_epoch": 1,
    "training_write_csv_every": 500,
    "training_xattention_optimizations": false,
    "training_enable_tensorboard": false,
    "training_tensorboard_save_images": false,
    "training_tensorboard_flush_every": 120,
    "sd_model_checkpoint": null,
    "sd_checkpoints_limit": 1,
    "sd_checkpoints_keep_in_cpu": true,
    "sd_checkpoint_cache": 0,
    "sd_unet": "Automatic",
    "enable_quantization": false,
    "emphasis": "Original",
    "enable_batch_seeds": true,
    "comma_padding_backtrack": 20,
    "sdxl_clip_l_skip": false,
    "CLIP_stop_at_last_layers": 1,
    "upcast_attn": false,
    "randn_source": "GPU",
    "tiling": false,
    "hires_fix_refiner_pass": "second pass",
    "sdxl_crop_top": 0,
    "sdxl_crop_left": 0,
    "sdxl_refiner_low_aesthetic_score": 2.5,
    "sdxl_refiner_high_aesthetic_score": 6.0,
    "sd3_enable_t5": false,
    "sd_vae_explanation": "<abbr title='Variational autoencoder'>VAE</abbr> is a neural network that transforms a standard <abbr title='red/green/blue'>RGB</abbr>\nimage into latent space representation and back. Latent space representation is what stable diffusion is working on during sampling\n(i.e. when the progress bar is between empty and full). For txt2img, VAE is used to create a resulting image after the sampling is finished.\nFor img2img, VAE is used to process user's input image before the sampling, and to create an image after sampling.",
    "sd_vae_checkpoint_cache": 0,
    "sd_vae": "Automatic",
    "sd_vae_overrides_per_model_preferences": true,
    "auto_vae_precision_bfloat16": false,
    "auto_vae_precision": true,
    "sd_vae_encode_method": "Full",
    "sd_vae_decode_method": "Full",
    "inpainting_mask_weight": 1.0,
    "initial_noise_multiplier": 1.0,
    "img2img_extra_noise": 0.0,
    "img2img_color_correction": false,
    "img2img_fix_steps": false,
    "img2img_background_color": "#ffffff",
    "img2img_sketch_default_brush_color": "#ffffff",
    "img2img_inpaint_mask_brush_color": "#ffffff",
    "img2img_inpaint_sketch_default_brush_color": "#ffffff",
    "img2img_inpaint_mask_high_contrast": true,
    "img2img_inpaint_mask_scribble_alpha": 75,
    "return_mask": false,
    "return_mask_composite": false,
    "img2img_batch_show_results_limit": 32,
    "overlay_inpaint": true,
    "img2img_autosize": false,
    "img2img_batch_use_original_name": false,
    "cross_attention_optimization": "Automatic",
    "s_min_uncond": 0.0,
    "s_min_uncond_all": false,
    "token_merging_ratio": 0.0,
    "token_merging_ratio_img2img": 0.0,
    "token_merging_ratio_hr": 0.0,
    "pad_cond_uncond": false,
    "pad_cond_uncond_v0": false,
    "persistent_cond_cache": true,
    "batch_cond_uncond": true,
    "fp8_storage": "Disable",
    "cache_fp16_weight": false,
    "forge_try_reproduce": "None",
    "auto_backcompat": true,
    "use_old_emphasis_implementation": false,
    "use_old_karras_scheduler_sigmas": false,
    "no_dpmpp_sde_batch_determinism": false,
    "use_old_hires_fix_width_height": false,
    "hires_fix_use_firstpass_conds": false,
    "use_old_scheduling": false,
    "use_downcasted_alpha_bar": false,
    "refiner_switch_by_sample_steps": false,
    "interrogate_keep_models_in_memory": false,
    "interrogate_return_ranks": false,
    "interrogate_clip_num_beams": 1,
    "interrogate_clip_min_length": 24,
    "interrogate_clip_max_length": 48,
    "interrogate_clip_dict_limit": 1500,
    "interrogate_clip_skip_categories": [],
    "interrogate_deepbooru_score_threshold": 0.5,
    "deepbooru_sort_alpha": true,
    "deepbooru_use_spaces": true,
    "deepbooru_escape": true,
    "deepbooru_filter_tags": "",
    "extra_networks_show_hidden_directories": true,
    "extra_networks_dir_button_function": false,
    "extra_networks_hidden_models": "When searched",
    "extra_networks_default_multiplier": 1.0,
    "extra_networks_card_width": 0,
    "extra_networks_card_height": 0,
    "extra_networks_card_text_scale": 1.0,
    "extra_networks_card_show_desc": true,
    "extra_networks_card_description_is_html": false,
    "extra_networks_card_order_field": "Path",
    "extra_networks_card_order": "Ascending",
    "extra_networks_tree_view_style": "Dirs",
    "extra_networks_tree_view_default_enabled": true,
    "extra_networks_tree_view_default_width": 180,
    "extra_networks_add_text_separator": " ",
    "ui_extra_networks_tab_reorder": "",
    "textual_inversion_print_at_load": false,
    "textual_inversion_add_hashes_to_infotext": true,
    "sd_hypernetwork": "None",
    "keyedit_precision_attention": 0.1,
    "keyedit_precision_extra": 0.05,
    "keyedit_delimiters": ".,\\/!?%^*;:{}=`~() ",
    "keyedit_delimiters_whitespace": ["Tab", "Carriage Return", "Line Feed"],
    "keyedit_move": true,
    "disable_token_counters": false,
    "include_styles_into_token_counters": true,
    "return_grid": true,
    "do_not_show_images": false,
    "js_modal_lightbox": true,
    "js_modal_lightbox_initially_zoomed": true,
    "js_modal_lightbox_gamepad": false,
    "js_modal_lightbox_gamepad_repeat": 250,
    "sd_webui_modal_lightbox_icon_opacity": 1,
    "sd_webui_modal_lightbox_toolbar_opacity": 0.9,
    "gallery_height": "",
    "open_dir_button_choice": "Subdirectory",
    "hires_button_gallery_insert": false,
    "compact_prompt_box": false,
    "samplers_in_dropdown": true,
    "dimensions_and_batch_together": true,
    "sd_checkpoint_dropdown_use_short": false,
    "hires_fix_show_sampler": false,
    "hires_fix_show_prompts": false,
    "txt2img_settings_accordion": false,
    "img2img_settings_accordion": false,
    "interrupt_after_current": true,
    "localization": "None",
    "quick_setting_list": [],
    "ui_tab_order": [],
    "hidden_tabs": [],
    "tabs_without_quick_settings_bar": ["Spaces"],
    "ui_reorder_list": [],
    "gradio_theme": "Default",
    "gradio_themes_cache": true,
    "show_progress_in_title": true,
    "send_seed": true,
    "send_size": true,
    "enable_reloading_ui_scripts": false,
    "infotext_explanation": "Infotext is what this software calls the text that contains generation parameters and can be used to generate the same picture again.\nIt is displayed in UI below the image. To use infotext, paste it into the prompt and click the ↙️ paste button.",
    "enable_pnginfo": true,
    "stealth_pnginfo_option": "Alpha",
    "save_txt": false,
    "add_model_name_to_info": true,
    "add_model_hash_to_info": true,
    "add_vae_name_to_info": true,
    "add_vae_hash_to_info": true,
    "add_user_name_to_info": false,
    "add_version_to_infotext": true,
    "disable_weights_auto_swap": true,
    "infotext_skip_pasting": [],
    "infotext_styles": "Apply if any",
    "show_progressbar": true,
    "live_previews_enable": true,
    "live_previews_image_format": "png",
    "show_progress_grid": true,
    "show_progress_every_n_steps": 10,
    "show_progress_type": "Approx NN",
    "live_preview_allow_lowvram_full": false,
    "live_preview_content": "Prompt",
    "live_preview_refresh_period": 1000,
    "live_preview_fast_interrupt": false,
    "js_live_preview_in_modal_lightbox": false,
    "prevent_screen_sleep_during_generation": true,
    "hide_samplers": [],
    "eta_ddim": 0.0,
    "eta_ancestral": 1.0,
    "ddim_discretize": "uniform",
    "s_churn": 0.0,
    "s_tmin": 0.0,
    "s_tmax": 0.0,
    "s_noise": 1.0,
    "sigma_min": 0.0,
    "sigma_max": 0.0,
    "rho": 0.0,
    "eta_noise_seed_delta": 0,
    "always_discard_next_to_last_sigma": false,
    "sgm_noise_multiplier": false,
    "uni_pc_variant": "bh1",
    "uni_pc_skip_type": "time_uniform",
    "uni_pc_order": 3,
    "uni_pc_lower_order_final": true,
    "sd_noise_schedule": "Default",
    "skip_early_cond": 0.0,
    "beta_dist_alpha": 0.6,
    "beta_dist_beta": 0.6,
    "postprocessing_enable_in_main_ui": [],
    "postprocessing_disable_in_extras": [],
    "postprocessing_operation_order": [],
    "upscaling_max_images_in_cache": 5,
    "postprocessing_existing_caption_action": "Ignore",
    "disabled_extensions": [],
    "disable_all_extensions": "none",
    "restore_config_state_file": "",
    "sd_checkpoint_hash": "",
    "forge_unet_storage_dtype": "Automatic",
    "forge_inference_memory": 1024,
    "forge_async_loading": "Queue",
    "forge_pin_shared_memory": "CPU",
    "forge_preset": "sd",
    "forge_additional_modules": [],
    "forge_canvas_plain": false,
    "forge_canvas_toolbar_always": false,
    "enable_prompt_comments": true,
    "sd_t2i_width": 512,
    "sd_t2i_height": 640,
    "sd_t2i_cfg": 7,
    "sd_t2i_hr_cfg": 7,
    "sd_i2i_width": 512,
    "sd_i2i_height": 512,
    "sd_i2i_cfg": 7,
    "xl_t2i_width": 896,
    "xl_t2i_height": 1152,
    "xl_t2i_cfg": 5,
    "xl_t2i_hr_cfg": 5,
    "xl_i2i_width": 1024,
    "xl_i2i_height": 1024,
    "xl_i2i_cfg": 5,
    "xl_GPU_MB": null,
    "flux_t2i_width": 896,
    "flux_t2i_height": 1152,
    "flux_t2i_cfg": 1,
    "flux_t2i_hr_cfg": 1,
    "flux_t2i_d_cfg": 3.5,
    "flux_t2i_hr_d_cfg": 3.5,
    "flux_i2i_width": 1024,
    "flux_i2i_height": 1024,
    "flux_i2i_cfg": 1,
    "flux_i2i_d_cfg": 3.5,
    "flux_GPU_MB": null,
    "settings_in_ui": "This page allows you to add some settings to the main interface of txt2img and img2img tabs.",
    "extra_options_txt2img": [],
    "extra_options_img2img": [],
    "extra_options_cols": 1,
    "extra_options_accordion": false
}"##;

/// Options extensions add with `opts.add_option` at start-up (ScuNET,
/// SwinIR, ControlNet): stored in `opts.data` at once, but not listed by GET.
const ADDED: &str = r##"{
    "SCUNET_tile": 256,
    "SCUNET_tile_overlap": 8,
    "SWIN_tile": 192,
    "SWIN_tile_overlap": 8,
    "SWIN_torch_compile": false,
    "control_net_detectedmap_dir": "detected_maps",
    "control_net_models_path": "",
    "control_net_modules_path": "",
    "control_net_unit_count": 3,
    "control_net_model_cache_size": 5,
    "control_net_no_detectmap": false,
    "control_net_detectmap_autosaving": false,
    "control_net_allow_script_control": false,
    "control_net_sync_field_args": true,
    "controlnet_show_batch_images_in_ui": false,
    "controlnet_increment_seed_during_batch": false,
    "controlnet_disable_openpose_edit": false,
    "controlnet_disable_photopea_edit": false,
    "controlnet_photopea_warning": true,
    "controlnet_input_thumbnail": true
}"##;

/// Options registered after `OptionsModel` was built and not stored until
/// set (the Lora extension's, the sampler defaults per UI preset): they can
/// be set, but GET does not list them.
const UNLISTED: &str = r##"{
    "sd_lora": "None",
    "lora_preferred_name": "Alias from file",
    "lora_add_hashes_to_infotext": true,
    "lora_bundled_ti_to_infotext": true,
    "lora_filter_disabled": true,
    "lora_in_memory_limit": 0,
    "lora_not_found_warning_console": false,
    "lora_not_found_gradio_warning": false,
    "lora_functional": false,
    "sd_t2i_sampler": "Euler a",
    "sd_t2i_scheduler": "Automatic",
    "sd_i2i_sampler": "Euler a",
    "sd_i2i_scheduler": "Automatic",
    "xl_t2i_sampler": "DPM++ 2M SDE",
    "xl_t2i_scheduler": "Karras",
    "xl_i2i_sampler": "DPM++ 2M SDE",
    "xl_i2i_scheduler": "Karras",
    "flux_t2i_sampler": "Euler",
    "flux_t2i_scheduler": "Simple",
    "flux_i2i_sampler": "Euler",
    "flux_i2i_scheduler": "Simple"
}"##;

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(options: &Options) -> Map<String, Value> {
        serde_json::from_slice(&options.to_json_bytes()).unwrap()
    }

    #[test]
    fn fresh_options_look_like_forge() {
        let options = Options::new(12288, Some("v1-5.safetensors"), Some("ab"));
        assert_eq!(options.str("sd_model_checkpoint"), Some("v1-5.safetensors"));
        assert_eq!(options.get("forge_inference_memory"), Some(&json!(1024)));
        assert_eq!(options.get("sd_checkpoint_hash"), Some(&json!("")));
        assert_eq!(options.get("forge_additional_modules"), Some(&json!([])));
        let get = listed(&options);
        assert_eq!(get.len(), 331);
        assert_eq!(get.keys().next().map(String::as_str), Some("samples_save"));
        assert_eq!(
            get.keys().next_back().map(String::as_str),
            Some("extra_options_accordion")
        );
        assert_eq!(get["flux_GPU_MB"], json!(11264.0));
        assert_eq!(options.to_json().as_object().unwrap().len(), 331);
        assert!(options.get_error().is_none());
    }

    #[test]
    fn get_writes_numbers_of_number_options_as_floats() {
        let options = Options::new(12288, None, None);
        let text = String::from_utf8(options.to_json_bytes()).unwrap();
        for expected in [
            r#""jpeg_quality":80.0,"#,
            r#""n_rows":-1.0,"#,
            r#""forge_inference_memory":1024.0,"#,
            r#""CLIP_stop_at_last_layers":1.0,"#,
            r#""img_downscale_threshold":4.0,"#,
            r#""xl_GPU_MB":11264.0,"#,
            // Falsy defaults make `Any` fields: written as they are.
            r#""sd_checkpoint_cache":0,"#,
            r#""eta_ddim":0.0,"#,
            r#""sd_model_checkpoint":null,"#,
            r#""extra_networks_card_width":0,"#,
        ] {
            assert!(text.contains(expected), "{expected}");
        }
    }

    #[test]
    fn a_posted_int_is_stored_as_sent_and_read_back_as_a_float() {
        let mut options = Options::new(12288, None, None);
        assert_eq!(options.set("jpeg_quality", &json!(62)), Some(json!(62)));
        assert_eq!(options.get("jpeg_quality"), Some(&json!(62)));
        assert_eq!(listed(&options)["jpeg_quality"], json!(62.0));
        options.set("sd_checkpoint_cache", &json!(3));
        options.set("samples_save", &json!(0));
        options.set("CLIP_stop_at_last_layers", &json!(" 2 "));
        let get = listed(&options);
        assert_eq!(get["sd_checkpoint_cache"], json!(3));
        assert_eq!(get["samples_save"], json!(false));
        assert_eq!(get["CLIP_stop_at_last_layers"], json!(2.0));
    }

    #[test]
    fn unchanged_value_is_skipped_numbers_as_numbers() {
        let mut options = Options::new(12288, None, None);
        assert_eq!(options.set("jpeg_quality", &json!(90)), Some(json!(90)));
        assert_eq!(options.set("jpeg_quality", &json!(90.0)), None);
        assert_eq!(
            options.set("samples_format", &json!("png")),
            Some(json!("png"))
        );
        assert_eq!(options.set("samples_format", &json!("png")), None);
    }

    #[test]
    fn a_default_never_stored_compares_as_none() {
        let mut options = Options::new(12288, Some("v1-5.safetensors"), None);
        assert_eq!(options.stored("jpeg_quality"), None);
        assert_eq!(options.set("jpeg_quality", &json!(80)), Some(json!(80)));
        assert_eq!(options.stored("jpeg_quality"), Some(&json!(80)));
        // `None == opts.data.get(k)`: skipped.
        assert_eq!(options.set("upscaler_for_img2img", &json!(null)), None);
        // Stored at start-up: the extensions' options and the checkpoint.
        assert_eq!(options.set("control_net_unit_count", &json!(3)), None);
        assert_eq!(
            options.set("sd_model_checkpoint", &json!("v1-5.safetensors")),
            None
        );
    }

    #[test]
    fn unlisted_options_exist_but_get_leaves_them_out() {
        let mut options = Options::new(12288, None, None);
        for key in ["sd_lora", "control_net_unit_count", "xl_t2i_sampler"] {
            assert!(options.contains(key), "{key}");
            assert!(!listed(&options).contains_key(key), "{key}");
        }
        assert!(!options.contains("quicksettings_list"));
        assert_eq!(options.str("sd_lora"), Some("None"));
        assert_eq!(options.set("sd_lora", &json!("x")), Some(json!("x")));
    }

    #[test]
    fn memory_figures_are_stored_as_floats() {
        let mut options = Options::new(12288, None, None);
        assert_eq!(
            options.set("forge_inference_memory", &json!(4096)),
            Some(json!(4096.0))
        );
        assert_eq!(options.get("forge_inference_memory"), Some(&json!(4096.0)));
        assert_eq!(options.set("forge_inference_memory", &json!(4096)), None);
    }

    #[test]
    fn a_value_the_model_refuses_fails_get() {
        let mut options = Options::new(12288, None, None);
        options.set("samples_save", &json!(2));
        options.set("jpeg_quality", &json!("abc"));
        let error: Value = serde_json::from_slice(&options.get_error().unwrap()).unwrap();
        assert_eq!(error["error"], "ResponseValidationError");
        assert_eq!(error["detail"], "");
        assert_eq!(error["body"]["jpeg_quality"], "abc");
        assert_eq!(
            error["message"],
            "2 validation errors:\n  \
             {'type': 'bool_parsing', 'loc': ('response', 'samples_save'), 'msg': 'Input should be a valid boolean, unable to interpret input', 'input': 2, 'url': 'https://errors.pydantic.dev/2.8/v/bool_parsing'}\n  \
             {'type': 'float_parsing', 'loc': ('response', 'jpeg_quality'), 'msg': 'Input should be a valid number, unable to parse string as a number', 'input': 'abc', 'url': 'https://errors.pydantic.dev/2.8/v/float_parsing'}\n"
        );
        let text = String::from_utf8(options.to_json_bytes()).unwrap();
        assert!(text.contains(r#""jpeg_quality":"abc","#));

        options.set("samples_save", &json!("Yes"));
        options.set("jpeg_quality", &json!("inf"));
        let error: Value = serde_json::from_slice(&options.get_error().unwrap()).unwrap();
        assert_eq!(error["error"], "ValueError");
        options.set("jpeg_quality", &json!("1_000"));
        assert!(options.get_error().is_none());
        assert_eq!(listed(&options)["jpeg_quality"], json!(1000.0));
        assert_eq!(listed(&options)["samples_save"], json!(true));
    }

    #[test]
    fn strings_read_as_floats_as_pydantic_reads_them() {
        for (text, expected) in [
            (" 63 ", Some(63.0)),
            ("1_000", Some(1000.0)),
            ("1e3", Some(1000.0)),
            ("+5", Some(5.0)),
            (".5", Some(0.5)),
            ("5.", Some(5.0)),
            ("0x10", None),
            ("", None),
            ("_1", None),
            ("1__0", None),
        ] {
            assert_eq!(parse_float(text), expected, "{text:?}");
        }
    }
}
