//! Forge's settings dictionary (`shared.opts`): the defaults of a fresh
//! Forge, and `opts.set`'s rule that an unchanged value is skipped.

use serde_json::{json, Map, Value};

use crate::python::{as_number, py_eq};

/// The keys whose mere presence in a request makes Forge run
/// `refresh_memory_management_settings` (and so reload every model).
pub const MEMORY_KEYS: [&str; 3] = [
    "forge_inference_memory",
    "forge_async_loading",
    "forge_pin_shared_memory",
];

/// Memory figures Forge hands back as floats once set (`4096.0`).
const FLOAT_KEYS: [&str; 3] = ["forge_inference_memory", "flux_GPU_MB", "xl_GPU_MB"];

/// The settings store. Keys outside it do not exist, as in Forge, where
/// setting one fails with a `KeyError`.
#[derive(Clone, Debug)]
pub struct Options {
    values: Map<String, Value>,
}

impl Options {
    /// A fresh Forge's options on a card of `total_vram_mib` with `checkpoint`
    /// (a file name) selected.
    pub fn new(
        total_vram_mib: u64,
        checkpoint: Option<&str>,
        checkpoint_sha256: Option<&str>,
    ) -> Options {
        Options {
            values: defaults(total_vram_mib, checkpoint, checkpoint_sha256),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// A memory figure as a number (Forge would fail on anything else).
    pub fn number(&self, key: &str) -> Option<f64> {
        self.values.get(key).and_then(as_number)
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.values.get(key).and_then(Value::as_str)
    }

    /// `opts.set`: stores `value` unless it equals the stored one (Python
    /// `==`, so numbers compare as numbers). Returns the value stored, or
    /// `None` when skipped. The caller has checked that the key exists.
    pub fn set(&mut self, key: &str, value: &Value) -> Option<Value> {
        if self.values.get(key).is_some_and(|old| py_eq(old, value)) {
            return None;
        }
        let value = normalize(key, value);
        self.values.insert(key.to_owned(), value.clone());
        Some(value)
    }

    /// Stores a value Forge itself maintains (not a user's change).
    pub fn set_internal(&mut self, key: &str, value: Value) {
        self.values.insert(key.to_owned(), value);
    }

    /// All options, as `GET /sdapi/v1/options` returns them.
    pub fn to_json(&self) -> Value {
        Value::Object(self.values.clone())
    }

    /// The same as JSON text, written without copying the ~250 values first.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.values).unwrap_or_default()
    }
}

/// Memory figures are stored as floats, as Forge returns them.
fn normalize(key: &str, value: &Value) -> Value {
    match (FLOAT_KEYS.contains(&key), value.as_f64()) {
        (true, Some(f)) if value.is_number() => json!(f),
        _ => value.clone(),
    }
}

/// The options of a fresh Forge (a representative subset of its ~330 keys,
/// with Forge's defaults).
fn defaults(
    total_vram_mib: u64,
    checkpoint: Option<&str>,
    sha256: Option<&str>,
) -> Map<String, Value> {
    let mut values: Map<String, Value> =
        serde_json::from_str(DEFAULTS).expect("the default options are valid JSON");
    let gpu_weights = total_vram_mib.saturating_sub(1024) as f64;
    values.insert("sd_model_checkpoint".into(), json!(checkpoint));
    values.insert("sd_checkpoint_hash".into(), json!(sha256.unwrap_or("")));
    values.insert("flux_GPU_MB".into(), json!(gpu_weights));
    values.insert("xl_GPU_MB".into(), json!(gpu_weights));
    values
}

/// Forge's defaults for the options that do not depend on the card or the
/// checkpoint list.
const DEFAULTS: &str = r##"{
    "sd_vae": "Automatic",
    "sd_vae_overrides_per_model_preferences": true,
    "sd_checkpoint_cache": 0,
    "sd_vae_checkpoint_cache": 0,
    "sd_unet": "Automatic",
    "sd_checkpoints_limit": 1,
    "sd_checkpoints_keep_in_cpu": true,
    "sd_checkpoint_dropdown_use_short": false,
    "CLIP_stop_at_last_layers": 1,
    "enable_quantization": false,
    "emphasis": "Original",
    "enable_batch_seeds": true,
    "comma_padding_backtrack": 20,
    "upcast_attn": false,
    "randn_source": "GPU",
    "tiling": false,
    "hires_fix_refiner_pass": "second pass",
    "forge_preset": "sd",
    "forge_additional_modules": [],
    "forge_unet_storage_dtype": "Automatic",
    "forge_inference_memory": 1024,
    "forge_async_loading": "Queue",
    "forge_pin_shared_memory": "CPU",
    "forge_try_reproduce": "None",
    "forge_canvas_plain": false,
    "forge_canvas_toolbar_always": false,
    "show_progress_every_n_steps": 10,
    "show_progress_type": "Approx NN",
    "live_previews_enable": true,
    "live_previews_image_format": "png",
    "live_preview_content": "Prompt",
    "live_preview_refresh_period": 1000,
    "live_preview_fast_interrupt": false,
    "js_live_preview_in_modal_lightbox": false,
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
    "img2img_fix_steps": false,
    "img2img_background_color": "#ffffff",
    "img2img_color_correction": false,
    "initial_noise_multiplier": 1.0,
    "img2img_extra_noise": 0.0,
    "inpainting_mask_weight": 1.0,
    "hires_fix_show_sampler": false,
    "hires_fix_show_prompts": false,
    "hires_fix_use_firstpass_conds": false,
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
    "target_side_length": 4000.0,
    "img_max_size_mp": 200.0,
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
    "outdir_txt2img_samples": "output/txt2img-images",
    "outdir_img2img_samples": "output/img2img-images",
    "outdir_extras_samples": "output/extras-images",
    "outdir_grids": "",
    "outdir_txt2img_grids": "output/txt2img-grids",
    "outdir_img2img_grids": "output/img2img-grids",
    "outdir_save": "log/images",
    "outdir_init_images": "output/init-images",
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
    "training_write_csv_every": 500.0,
    "training_xattention_optimizations": false,
    "training_enable_tensorboard": false,
    "training_tensorboard_save_images": false,
    "training_tensorboard_flush_every": 120.0,
    "extra_networks_show_hidden_directories": true,
    "extra_networks_dir_button_function": false,
    "extra_networks_hidden_models": "When searched",
    "extra_networks_default_multiplier": 1.0,
    "extra_networks_card_width": 0.0,
    "extra_networks_card_height": 0.0,
    "extra_networks_card_text_scale": 1.0,
    "extra_networks_card_show_desc": true,
    "extra_networks_card_description_is_html": false,
    "extra_networks_card_order_field": "Path",
    "extra_networks_card_order": "Ascending",
    "extra_networks_tree_view_style": "Dirs",
    "extra_networks_tree_view_default_enabled": true,
    "extra_networks_tree_view_default_width": 180.0,
    "extra_networks_add_text_separator": " ",
    "ui_extra_networks_tab_reorder": "",
    "textual_inversion_print_at_load": false,
    "textual_inversion_add_hashes_to_infotext": true,
    "sd_hypernetwork": "None",
    "sd_lora": "None",
    "lora_preferred_name": "Alias from file",
    "lora_add_hashes_to_infotext": true,
    "lora_show_all": false,
    "lora_hide_unknown_for_versions": [],
    "lora_in_memory_limit": 0,
    "lora_not_found_warning_console": false,
    "lora_not_found_gradio_warning": false,
    "localization": "None",
    "quicksettings_list": ["sd_model_checkpoint"],
    "ui_tab_order": [],
    "hidden_tabs": [],
    "ui_reorder_list": [],
    "gradio_theme": "Default",
    "gradio_themes_cache": true,
    "show_progress_in_title": true,
    "send_seed": true,
    "send_size": true,
    "js_modal_lightbox": true,
    "js_modal_lightbox_initially_zoomed": true,
    "js_modal_lightbox_gamepad": false,
    "js_modal_lightbox_gamepad_repeat": 250.0,
    "sd_webui_modal_lightbox_icon_opacity": 1.0,
    "sd_webui_modal_lightbox_toolbar_opacity": 0.9,
    "gallery_height": "",
    "open_dir_button_choice": "Subdirectory",
    "enable_pnginfo": true,
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
    "return_grid": true,
    "do_not_show_images": false,
    "compact_prompt_box": false,
    "samplers_in_dropdown": true,
    "dimensions_and_batch_together": true,
    "keyedit_precision_attention": 0.1,
    "keyedit_precision_extra": 0.05,
    "keyedit_delimiters": ".,\\/!?%^*;:{}=`~() ",
    "keyedit_delimiters_whitespace": ["Tab", "Carriage Return", "Line Feed"],
    "keyedit_move": true,
    "disable_token_counters": false,
    "include_styles_into_token_counters": true,
    "extra_options_txt2img": [],
    "extra_options_img2img": [],
    "extra_options_cols": 1,
    "extra_options_accordion": false,
    "interrogate_keep_models_in_memory": false,
    "interrogate_return_ranks": false,
    "interrogate_clip_num_beams": 1,
    "interrogate_clip_min_length": 24,
    "interrogate_clip_max_length": 48,
    "interrogate_clip_dict_limit": 1500.0,
    "interrogate_clip_skip_categories": [],
    "interrogate_deepbooru_score_threshold": 0.5,
    "deepbooru_sort_alpha": true,
    "deepbooru_use_spaces": true,
    "deepbooru_escape": true,
    "deepbooru_filter_tags": "",
    "postprocessing_enable_in_main_ui": [],
    "postprocessing_disable_in_extras": [],
    "postprocessing_operation_order": [],
    "upscaling_max_images_in_cache": 5,
    "postprocessing_existing_caption_action": "Ignore",
    "disabled_extensions": [],
    "disable_all_extensions": "none",
    "restore_config_state_file": ""
}"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_options_look_like_forge() {
        let options = Options::new(12288, Some("v1-5.safetensors"), Some("ab"));
        assert_eq!(options.str("sd_model_checkpoint"), Some("v1-5.safetensors"));
        assert_eq!(options.get("forge_inference_memory"), Some(&json!(1024)));
        assert_eq!(options.get("flux_GPU_MB"), Some(&json!(11264.0)));
        assert_eq!(options.get("forge_additional_modules"), Some(&json!([])));
        assert!(options.to_json().as_object().unwrap().len() > 200);
    }

    #[test]
    fn unchanged_value_is_skipped_numbers_as_numbers() {
        let mut options = Options::new(12288, None, None);
        assert_eq!(options.set("forge_inference_memory", &json!(1024.0)), None);
        assert_eq!(options.set("samples_format", &json!("png")), None);
        assert_eq!(options.set("jpeg_quality", &json!(90)), Some(json!(90)));
        assert_eq!(options.set("jpeg_quality", &json!(90)), None);
    }

    #[test]
    fn memory_figures_are_stored_as_floats() {
        let mut options = Options::new(12288, None, None);
        assert_eq!(
            options.set("forge_inference_memory", &json!(4096)),
            Some(json!(4096.0))
        );
        assert_eq!(options.get("forge_inference_memory"), Some(&json!(4096.0)));
        assert!(options.get("forge_inference_memory").unwrap().is_f64());
    }
}
