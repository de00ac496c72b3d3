//! GET /sdapi/v1/options: which options Forge lists, in which order, and how it writes their
//! values (`modules/api/models.py` `OptionsModel`, `modules/options.py`, `modules/sysinfo.py`).
//!
//! Forge answers through a pydantic model built from its options at start-up: one field per
//! option, typed after the option's default, with `int` widened to `float`
//! (`Options.typemap`) and `Any` for a falsy default. So the numbers of a number-typed option
//! come back as floats (`"jpeg_quality":80.0`), also right after an int was posted, while an
//! `Any` option comes back as stored. Each case sets what it relies on first.

use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::Target;

/// The options Forge f2.0.1v1.10.1 lists (with its built-in extensions only), in its order.
const FORGE_KEYS: [&str; 331] = [
    "samples_save",
    "samples_format",
    "samples_filename_pattern",
    "save_images_add_number",
    "save_images_replace_action",
    "grid_save",
    "grid_format",
    "grid_extended_filename",
    "grid_only_if_multiple",
    "grid_prevent_empty_spots",
    "grid_zip_filename_pattern",
    "n_rows",
    "font",
    "grid_text_active_color",
    "grid_text_inactive_color",
    "grid_background_color",
    "save_images_before_face_restoration",
    "save_images_before_highres_fix",
    "save_images_before_color_correction",
    "save_mask",
    "save_mask_composite",
    "jpeg_quality",
    "webp_lossless",
    "export_for_4chan",
    "img_downscale_threshold",
    "target_side_length",
    "img_max_size_mp",
    "use_original_name_batch",
    "use_upscaler_name_as_suffix",
    "save_selected_only",
    "save_write_log_csv",
    "save_init_img",
    "temp_dir",
    "clean_temp_dir_at_start",
    "save_incomplete_images",
    "notification_audio",
    "notification_volume",
    "outdir_samples",
    "outdir_txt2img_samples",
    "outdir_img2img_samples",
    "outdir_extras_samples",
    "outdir_grids",
    "outdir_txt2img_grids",
    "outdir_img2img_grids",
    "outdir_save",
    "outdir_init_images",
    "save_to_dirs",
    "grid_save_to_dirs",
    "use_save_to_dirs_for_ui",
    "directories_filename_pattern",
    "directories_max_prompt_words",
    "ESRGAN_tile",
    "ESRGAN_tile_overlap",
    "realesrgan_enabled_models",
    "dat_enabled_models",
    "DAT_tile",
    "DAT_tile_overlap",
    "upscaler_for_img2img",
    "set_scale_by_when_changing_upscaler",
    "face_restoration",
    "face_restoration_model",
    "code_former_weight",
    "face_restoration_unload",
    "auto_launch_browser",
    "enable_console_prompts",
    "show_warnings",
    "show_gradio_deprecation_warnings",
    "memmon_poll_rate",
    "samples_log_stdout",
    "multiple_tqdm",
    "enable_upscale_progressbar",
    "print_hypernet_extra",
    "list_hidden_files",
    "disable_mmap_load_safetensors",
    "hide_ldm_prints",
    "dump_stacks_on_signal",
    "profiling_explanation",
    "profiling_enable",
    "profiling_activities",
    "profiling_record_shapes",
    "profiling_profile_memory",
    "profiling_with_stack",
    "profiling_filename",
    "api_enable_requests",
    "api_forbid_local_requests",
    "api_useragent",
    "unload_models_when_training",
    "pin_memory",
    "save_optimizer_state",
    "save_training_settings_to_txt",
    "dataset_filename_word_regex",
    "dataset_filename_join_string",
    "training_image_repeats_per_epoch",
    "training_write_csv_every",
    "training_xattention_optimizations",
    "training_enable_tensorboard",
    "training_tensorboard_save_images",
    "training_tensorboard_flush_every",
    "sd_model_checkpoint",
    "sd_checkpoints_limit",
    "sd_checkpoints_keep_in_cpu",
    "sd_checkpoint_cache",
    "sd_unet",
    "enable_quantization",
    "emphasis",
    "enable_batch_seeds",
    "comma_padding_backtrack",
    "sdxl_clip_l_skip",
    "CLIP_stop_at_last_layers",
    "upcast_attn",
    "randn_source",
    "tiling",
    "hires_fix_refiner_pass",
    "sdxl_crop_top",
    "sdxl_crop_left",
    "sdxl_refiner_low_aesthetic_score",
    "sdxl_refiner_high_aesthetic_score",
    "sd3_enable_t5",
    "sd_vae_explanation",
    "sd_vae_checkpoint_cache",
    "sd_vae",
    "sd_vae_overrides_per_model_preferences",
    "auto_vae_precision_bfloat16",
    "auto_vae_precision",
    "sd_vae_encode_method",
    "sd_vae_decode_method",
    "inpainting_mask_weight",
    "initial_noise_multiplier",
    "img2img_extra_noise",
    "img2img_color_correction",
    "img2img_fix_steps",
    "img2img_background_color",
    "img2img_sketch_default_brush_color",
    "img2img_inpaint_mask_brush_color",
    "img2img_inpaint_sketch_default_brush_color",
    "img2img_inpaint_mask_high_contrast",
    "img2img_inpaint_mask_scribble_alpha",
    "return_mask",
    "return_mask_composite",
    "img2img_batch_show_results_limit",
    "overlay_inpaint",
    "img2img_autosize",
    "img2img_batch_use_original_name",
    "cross_attention_optimization",
    "s_min_uncond",
    "s_min_uncond_all",
    "token_merging_ratio",
    "token_merging_ratio_img2img",
    "token_merging_ratio_hr",
    "pad_cond_uncond",
    "pad_cond_uncond_v0",
    "persistent_cond_cache",
    "batch_cond_uncond",
    "fp8_storage",
    "cache_fp16_weight",
    "forge_try_reproduce",
    "auto_backcompat",
    "use_old_emphasis_implementation",
    "use_old_karras_scheduler_sigmas",
    "no_dpmpp_sde_batch_determinism",
    "use_old_hires_fix_width_height",
    "hires_fix_use_firstpass_conds",
    "use_old_scheduling",
    "use_downcasted_alpha_bar",
    "refiner_switch_by_sample_steps",
    "interrogate_keep_models_in_memory",
    "interrogate_return_ranks",
    "interrogate_clip_num_beams",
    "interrogate_clip_min_length",
    "interrogate_clip_max_length",
    "interrogate_clip_dict_limit",
    "interrogate_clip_skip_categories",
    "interrogate_deepbooru_score_threshold",
    "deepbooru_sort_alpha",
    "deepbooru_use_spaces",
    "deepbooru_escape",
    "deepbooru_filter_tags",
    "extra_networks_show_hidden_directories",
    "extra_networks_dir_button_function",
    "extra_networks_hidden_models",
    "extra_networks_default_multiplier",
    "extra_networks_card_width",
    "extra_networks_card_height",
    "extra_networks_card_text_scale",
    "extra_networks_card_show_desc",
    "extra_networks_card_description_is_html",
    "extra_networks_card_order_field",
    "extra_networks_card_order",
    "extra_networks_tree_view_style",
    "extra_networks_tree_view_default_enabled",
    "extra_networks_tree_view_default_width",
    "extra_networks_add_text_separator",
    "ui_extra_networks_tab_reorder",
    "textual_inversion_print_at_load",
    "textual_inversion_add_hashes_to_infotext",
    "sd_hypernetwork",
    "keyedit_precision_attention",
    "keyedit_precision_extra",
    "keyedit_delimiters",
    "keyedit_delimiters_whitespace",
    "keyedit_move",
    "disable_token_counters",
    "include_styles_into_token_counters",
    "return_grid",
    "do_not_show_images",
    "js_modal_lightbox",
    "js_modal_lightbox_initially_zoomed",
    "js_modal_lightbox_gamepad",
    "js_modal_lightbox_gamepad_repeat",
    "sd_webui_modal_lightbox_icon_opacity",
    "sd_webui_modal_lightbox_toolbar_opacity",
    "gallery_height",
    "open_dir_button_choice",
    "hires_button_gallery_insert",
    "compact_prompt_box",
    "samplers_in_dropdown",
    "dimensions_and_batch_together",
    "sd_checkpoint_dropdown_use_short",
    "hires_fix_show_sampler",
    "hires_fix_show_prompts",
    "txt2img_settings_accordion",
    "img2img_settings_accordion",
    "interrupt_after_current",
    "localization",
    "quick_setting_list",
    "ui_tab_order",
    "hidden_tabs",
    "tabs_without_quick_settings_bar",
    "ui_reorder_list",
    "gradio_theme",
    "gradio_themes_cache",
    "show_progress_in_title",
    "send_seed",
    "send_size",
    "enable_reloading_ui_scripts",
    "infotext_explanation",
    "enable_pnginfo",
    "stealth_pnginfo_option",
    "save_txt",
    "add_model_name_to_info",
    "add_model_hash_to_info",
    "add_vae_name_to_info",
    "add_vae_hash_to_info",
    "add_user_name_to_info",
    "add_version_to_infotext",
    "disable_weights_auto_swap",
    "infotext_skip_pasting",
    "infotext_styles",
    "show_progressbar",
    "live_previews_enable",
    "live_previews_image_format",
    "show_progress_grid",
    "show_progress_every_n_steps",
    "show_progress_type",
    "live_preview_allow_lowvram_full",
    "live_preview_content",
    "live_preview_refresh_period",
    "live_preview_fast_interrupt",
    "js_live_preview_in_modal_lightbox",
    "prevent_screen_sleep_during_generation",
    "hide_samplers",
    "eta_ddim",
    "eta_ancestral",
    "ddim_discretize",
    "s_churn",
    "s_tmin",
    "s_tmax",
    "s_noise",
    "sigma_min",
    "sigma_max",
    "rho",
    "eta_noise_seed_delta",
    "always_discard_next_to_last_sigma",
    "sgm_noise_multiplier",
    "uni_pc_variant",
    "uni_pc_skip_type",
    "uni_pc_order",
    "uni_pc_lower_order_final",
    "sd_noise_schedule",
    "skip_early_cond",
    "beta_dist_alpha",
    "beta_dist_beta",
    "postprocessing_enable_in_main_ui",
    "postprocessing_disable_in_extras",
    "postprocessing_operation_order",
    "upscaling_max_images_in_cache",
    "postprocessing_existing_caption_action",
    "disabled_extensions",
    "disable_all_extensions",
    "restore_config_state_file",
    "sd_checkpoint_hash",
    "forge_unet_storage_dtype",
    "forge_inference_memory",
    "forge_async_loading",
    "forge_pin_shared_memory",
    "forge_preset",
    "forge_additional_modules",
    "forge_canvas_plain",
    "forge_canvas_toolbar_always",
    "enable_prompt_comments",
    "sd_t2i_width",
    "sd_t2i_height",
    "sd_t2i_cfg",
    "sd_t2i_hr_cfg",
    "sd_i2i_width",
    "sd_i2i_height",
    "sd_i2i_cfg",
    "xl_t2i_width",
    "xl_t2i_height",
    "xl_t2i_cfg",
    "xl_t2i_hr_cfg",
    "xl_i2i_width",
    "xl_i2i_height",
    "xl_i2i_cfg",
    "xl_GPU_MB",
    "flux_t2i_width",
    "flux_t2i_height",
    "flux_t2i_cfg",
    "flux_t2i_hr_cfg",
    "flux_t2i_d_cfg",
    "flux_t2i_hr_d_cfg",
    "flux_i2i_width",
    "flux_i2i_height",
    "flux_i2i_cfg",
    "flux_i2i_d_cfg",
    "flux_GPU_MB",
    "settings_in_ui",
    "extra_options_txt2img",
    "extra_options_img2img",
    "extra_options_cols",
    "extra_options_accordion",
];

/// `GET /sdapi/v1/options` as its raw text and as an object that keeps the key order.
async fn options_text(target: &Target) -> (String, Map<String, Value>) {
    let answer = target.get("/sdapi/v1/options").await;
    assert_eq!(answer.status, 200, "GET options: {:?}", answer.bytes);
    let text = String::from_utf8(answer.bytes.to_vec()).expect("UTF-8");
    let object = serde_json::from_str(&text).expect("a JSON object");
    (text, object)
}

/// The text of a scalar value (number, boolean, null) in the raw answer: `80.0` for
/// `"jpeg_quality":80.0`.
fn raw_value<'a>(text: &'a str, key: &str) -> &'a str {
    let needle = format!("\"{key}\":");
    let start = text
        .find(&needle)
        .unwrap_or_else(|| panic!("{key} is in the answer"))
        + needle.len();
    let rest = &text[start..];
    &rest[..rest.find([',', '}']).unwrap_or(rest.len())]
}

/// A number written as Python writes a float: with a decimal point or an exponent.
fn is_float_text(text: &str) -> bool {
    text.parse::<f64>().is_ok() && text.contains(['.', 'e', 'E'])
}

#[tokio::test]
async fn get_lists_forges_options_in_forges_order() {
    let target = Target::open().await;
    let (_, options) = options_text(&target).await;
    let keys: Vec<&str> = options.keys().map(String::as_str).collect();
    assert_eq!(
        keys[..8],
        [
            "samples_save",
            "samples_format",
            "samples_filename_pattern",
            "save_images_add_number",
            "save_images_replace_action",
            "grid_save",
            "grid_format",
            "grid_extended_filename",
        ]
    );
    assert_eq!(keys.len(), 331);
    for key in FORGE_KEYS {
        assert!(options.contains_key(key), "{key} is listed");
    }
    assert_eq!(keys, FORGE_KEYS, "Forge's order");
    // Options registered after the model was built (the Lora extension's, the ControlNet
    // ones added at start-up) can be set but are not listed.
    for key in [
        "sd_lora",
        "control_net_unit_count",
        "SCUNET_tile",
        "sd_t2i_sampler",
    ] {
        assert!(!options.contains_key(key), "{key} is not listed");
    }
}

#[tokio::test]
async fn whole_numbers_of_number_options_come_back_as_floats() {
    let target = Target::open().await;
    target
        .set_options(json!({
            "jpeg_quality": 80,
            "n_rows": -1,
            "CLIP_stop_at_last_layers": 1,
            "notification_volume": 100,
            "img_downscale_threshold": 4,
            "eta_noise_seed_delta": 0,
            "extra_networks_card_width": 0,
        }))
        .await;
    let (text, _) = options_text(&target).await;
    for (key, expected) in [
        ("jpeg_quality", "80.0"),
        ("n_rows", "-1.0"),
        ("CLIP_stop_at_last_layers", "1.0"),
        ("notification_volume", "100.0"),
        ("img_downscale_threshold", "4.0"),
        // A falsy default (`0`) makes an `Any` field: the value as stored.
        ("eta_noise_seed_delta", "0"),
        ("extra_networks_card_width", "0"),
    ] {
        assert_eq!(raw_value(&text, key), expected, "{key}");
    }
    // Whatever their values, memory figures are written as floats.
    for key in ["forge_inference_memory", "xl_GPU_MB", "flux_GPU_MB"] {
        let value = raw_value(&text, key);
        assert!(is_float_text(value), "{key}: {value}");
    }
}

#[tokio::test]
async fn a_posted_int_reads_back_as_a_float() {
    let target = Target::open().await;
    target.set_options(json!({"jpeg_quality": 80})).await;
    for (posted, read) in [
        (json!(62), "62.0"),
        (json!(62.5), "62.5"),
        // pydantic's lax mode reads a numeric string, and a boolean, as a float.
        (json!("63"), "63.0"),
        (json!(true), "1.0"),
        (json!(80), "80.0"),
    ] {
        target.set_options(json!({ "jpeg_quality": posted })).await;
        let (text, _) = options_text(&target).await;
        assert_eq!(raw_value(&text, "jpeg_quality"), read, "posted {posted}");
    }

    // An `Any` option (falsy default) comes back as posted.
    for (posted, read) in [
        (json!(31337), "31337"),
        (json!(2.5), "2.5"),
        (json!(0), "0"),
    ] {
        target
            .set_options(json!({ "eta_noise_seed_delta": posted }))
            .await;
        let (text, _) = options_text(&target).await;
        assert_eq!(
            raw_value(&text, "eta_noise_seed_delta"),
            read,
            "posted {posted}"
        );
    }

    // A bool option takes 0 and 1, and strings like "yes", as booleans.
    target.set_options(json!({"samples_save": 0})).await;
    let (text, _) = options_text(&target).await;
    assert_eq!(raw_value(&text, "samples_save"), "false");
    target.set_options(json!({"samples_save": "yes"})).await;
    let (text, _) = options_text(&target).await;
    assert_eq!(raw_value(&text, "samples_save"), "true");
    target.set_options(json!({"samples_save": true})).await;
}

#[tokio::test]
async fn posting_the_whole_answer_back_succeeds_and_changes_nothing() {
    // Open WebUI posts back the whole object it read.
    let target = Target::open().await;
    let (before, options) = options_text(&target).await;
    let answer = target
        .send(
            target
                .request(Method::POST, "/sdapi/v1/options")
                .header("content-type", "application/json")
                .body(before.clone()),
        )
        .await;
    assert_eq!(
        answer.status, 200,
        "posting GET's answer back: {:?}",
        answer.bytes
    );
    assert_eq!(answer.json(), Value::Null);
    let (after, _) = options_text(&target).await;
    assert_eq!(after, before, "the same answer, byte for byte");

    // And as a client re-encodes it.
    target.set_options(Value::Object(options)).await;
    assert_eq!(options_text(&target).await.0, before);
}

#[tokio::test]
async fn unlisted_options_can_be_set_and_unknown_ones_cannot() {
    let target = Target::open().await;
    target
        .set_options(json!({"sd_lora": "None", "control_net_unit_count": 3, "xl_t2i_sampler": "DPM++ 2M SDE"}))
        .await;
    // `quicksettings_list` is A1111's name; Forge calls it `quick_setting_list`.
    let answer = target
        .post(
            "/sdapi/v1/options",
            &json!({"quicksettings_list": ["sd_model_checkpoint"]}),
        )
        .await;
    assert_eq!(answer.status, 500);
    assert_eq!(
        answer.json(),
        json!({"error": "KeyError", "detail": "", "body": "", "message": "'quicksettings_list'"})
    );
}

#[tokio::test]
async fn checkpoint_hash_is_known_once_a_generation_loaded_the_model() {
    let target = Target::open().await;
    if target.is_sim() {
        // A fresh Forge has not hashed its checkpoint yet.
        let (_, options) = options_text(&target).await;
        assert_eq!(options["sd_checkpoint_hash"], "");
    }
    target.generate().await;
    let (_, options) = options_text(&target).await;
    let selected = options["sd_model_checkpoint"]
        .as_str()
        .expect("a checkpoint");
    let sha256 = target
        .checkpoints()
        .await
        .into_iter()
        .find(|model| {
            model["title"].as_str().is_some_and(|title| {
                title == selected || title.starts_with(&format!("{selected} ["))
            }) || model["hash"] == selected
        })
        .map(|model| model["sha256"].clone())
        .expect("the selected checkpoint is listed");
    assert_eq!(options["sd_checkpoint_hash"], sha256);
    assert_eq!(sha256.as_str().map(str::len), Some(64));
}
