//! The fixed lists a Forge install reports: samplers, schedulers, upscalers,
//! scripts, VAE / text-encoder modules and command-line flags. Clients such
//! as `webuiapi` read them at start-up.

use std::net::SocketAddr;

use serde_json::{json, Value};

/// (name, aliases, options), in Forge's order; the first is the default.
/// The options are each sampler's `options` dict from
/// modules/sd_samplers_kdiffusion.py (`samplers_k_diffusion`), with its
/// preferred `scheduler` and Python booleans, as `/sdapi/v1/samplers` returns
/// them (api.py `get_samplers`: `sampler[3]`), in modules/sd_samplers.py's
/// `all_samplers` order: k-diffusion, timesteps, LCM, then Forge's
/// modules_forge/alter_samplers.py (DDPM).
const SAMPLERS: &[(&str, &[&str], &str)] = &[
    ("DPM++ 2M", &["k_dpmpp_2m"], r#"{"scheduler": "karras"}"#),
    (
        "DPM++ SDE",
        &["k_dpmpp_sde"],
        r#"{"scheduler": "karras", "second_order": true, "brownian_noise": true}"#,
    ),
    (
        "DPM++ 2M SDE",
        &["k_dpmpp_2m_sde"],
        r#"{"scheduler": "exponential", "brownian_noise": true}"#,
    ),
    (
        "DPM++ 2M SDE Heun",
        &["k_dpmpp_2m_sde_heun"],
        r#"{"scheduler": "exponential", "brownian_noise": true, "solver_type": "heun"}"#,
    ),
    (
        "DPM++ 2S a",
        &["k_dpmpp_2s_a"],
        r#"{"scheduler": "karras", "uses_ensd": true, "second_order": true}"#,
    ),
    (
        "DPM++ 3M SDE",
        &["k_dpmpp_3m_sde"],
        r#"{"scheduler": "exponential", "discard_next_to_last_sigma": true, "brownian_noise": true}"#,
    ),
    (
        "Euler a",
        &["k_euler_a", "k_euler_ancestral"],
        r#"{"uses_ensd": true}"#,
    ),
    ("Euler", &["k_euler"], r#"{}"#),
    ("LMS", &["k_lms"], r#"{}"#),
    ("Heun", &["k_heun"], r#"{"second_order": true}"#),
    (
        "DPM2",
        &["k_dpm_2"],
        r#"{"scheduler": "karras", "discard_next_to_last_sigma": true, "second_order": true}"#,
    ),
    (
        "DPM2 a",
        &["k_dpm_2_a"],
        r#"{"scheduler": "karras", "discard_next_to_last_sigma": true, "uses_ensd": true, "second_order": true}"#,
    ),
    ("DPM fast", &["k_dpm_fast"], r#"{"uses_ensd": true}"#),
    ("DPM adaptive", &["k_dpm_ad"], r#"{"uses_ensd": true}"#),
    (
        "Restart",
        &["restart"],
        r#"{"scheduler": "karras", "second_order": true}"#,
    ),
    ("HeunPP2", &["heunpp2"], r#"{}"#),
    ("IPNDM", &["ipndm"], r#"{}"#),
    ("IPNDM_V", &["ipndm_v"], r#"{}"#),
    ("DEIS", &["deis"], r#"{}"#),
    ("DDIM", &["ddim"], r#"{}"#),
    ("DDIM CFG++", &["ddim_cfgpp"], r#"{}"#),
    ("PLMS", &["plms"], r#"{}"#),
    ("UniPC", &["unipc"], r#"{}"#),
    ("LCM", &["k_lcm"], r#"{}"#),
    ("DDPM", &["ddpm"], r#"{}"#),
];

/// One scheduler as `/sdapi/v1/schedulers` lists it.
struct Scheduler {
    name: &'static str,
    label: &'static str,
    aliases: Option<&'static [&'static str]>,
    default_rho: f64,
    need_inner_model: bool,
}

const fn scheduler(
    name: &'static str,
    label: &'static str,
    default_rho: f64,
    need_inner_model: bool,
) -> Scheduler {
    Scheduler {
        name,
        label,
        aliases: None,
        default_rho,
        need_inner_model,
    }
}

/// Forge's schedulers, in its order.
const SCHEDULERS: &[Scheduler] = &[
    scheduler("automatic", "Automatic", -1.0, false),
    scheduler("uniform", "Uniform", -1.0, true),
    scheduler("karras", "Karras", 7.0, false),
    scheduler("exponential", "Exponential", -1.0, false),
    scheduler("polyexponential", "Polyexponential", 1.0, false),
    Scheduler {
        aliases: Some(&["SGMUniform"]),
        ..scheduler("sgm_uniform", "SGM Uniform", -1.0, true)
    },
    scheduler("kl_optimal", "KL Optimal", -1.0, false),
    scheduler("align_your_steps", "Align Your Steps", -1.0, false),
    scheduler("simple", "Simple", -1.0, true),
    scheduler("normal", "Normal", -1.0, true),
    scheduler("ddim", "DDIM", -1.0, true),
    scheduler("beta", "Beta", -1.0, true),
    scheduler("turbo", "Turbo", -1.0, true),
    scheduler(
        "align_your_steps_GITS",
        "Align Your Steps GITS",
        -1.0,
        false,
    ),
    scheduler("align_your_steps_11", "Align Your Steps 11", -1.0, false),
    scheduler("align_your_steps_32", "Align Your Steps 32", -1.0, false),
];

/// `GET /sdapi/v1/samplers`.
pub fn samplers() -> Value {
    Value::Array(
        SAMPLERS
            .iter()
            .map(|(name, aliases, options)| {
                let options: Value = serde_json::from_str(options).unwrap_or_else(|_| json!({}));
                json!({ "name": name, "aliases": aliases, "options": options })
            })
            .collect(),
    )
}

/// The sampler Forge runs for a requested name (name or alias, with an
/// optional scheduler suffix like `" Karras"`); unknown names fall back to
/// the default sampler, as `get_sampler_and_scheduler` does.
pub fn resolve_sampler(requested: Option<&str>) -> (&'static str, &'static str) {
    let mut name = requested.unwrap_or(SAMPLERS[0].0);
    let mut scheduler = "Automatic";
    for known in SCHEDULERS {
        if let Some(stripped) = name.strip_suffix(&format!(" {}", known.label)) {
            name = stripped;
            scheduler = known.label;
            break;
        }
    }
    let sampler = SAMPLERS
        .iter()
        .find(|(n, aliases, _)| *n == name || aliases.contains(&name))
        .map_or(SAMPLERS[0].0, |(n, ..)| n);
    (sampler, scheduler)
}

/// `GET /sdapi/v1/schedulers`.
pub fn schedulers() -> Value {
    Value::Array(
        SCHEDULERS
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "label": s.label,
                    "aliases": s.aliases,
                    "default_rho": s.default_rho,
                    "need_inner_model": s.need_inner_model,
                })
            })
            .collect(),
    )
}

/// `GET /sdapi/v1/upscalers`.
pub fn upscalers() -> Value {
    let builtin = |name: &str| json!({ "name": name, "model_name": null, "model_path": null, "model_url": null, "scale": 4.0 });
    let model = |name: &str, url: &str| json!({ "name": name, "model_name": name, "model_path": url, "model_url": null, "scale": 4.0 });
    json!([
        builtin("None"),
        builtin("Lanczos"),
        builtin("Nearest"),
        model("DAT x2", "https://github.com/n0kovo/dat_upscaler_models/raw/main/DAT/DAT_x2.pth"),
        model("ESRGAN_4x", "https://github.com/cszn/KAIR/releases/download/v1.0/ESRGAN.pth"),
        model("R-ESRGAN 4x+", "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth"),
        model("R-ESRGAN 4x+ Anime6B", "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth"),
        model("SwinIR 4x", "https://github.com/JingyunLiang/SwinIR/releases/download/v0.0/003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth"),
    ])
}

/// `GET /sdapi/v1/latent-upscale-modes`.
pub fn latent_upscale_modes() -> Value {
    let modes = [
        "Latent",
        "Latent (antialiased)",
        "Latent (bicubic)",
        "Latent (bicubic antialiased)",
        "Latent (nearest)",
        "Latent (nearest-exact)",
    ];
    Value::Array(modes.iter().map(|name| json!({ "name": name })).collect())
}

/// `GET /sdapi/v1/scripts`.
pub fn scripts() -> Value {
    let common = [
        "prompt matrix",
        "prompts from file or textbox",
        "x/y/z plot",
        "controlnet",
        "dynamic thresholding (cfg-fix) integrated",
        "freeu integrated (sd 1.x, sd 2.x, sdxl)",
        "kohya hrfix integrated",
        "latentmodifier integrated",
        "multidiffusion integrated",
        "never oom integrated",
        "perturbed attention guidance integrated",
        "selfattentionguidance integrated (sd 1.x, sd 2.x, sdxl)",
        "stylealign integrated",
        "extra options",
        "hypertile",
        "refiner",
        "sampler",
        "seed",
    ];
    let mut img2img: Vec<&str> = vec![
        "img2img alternative test",
        "loopback",
        "outpainting mk2",
        "poor man's outpainting",
        "sd upscale",
    ];
    img2img.extend(common);
    json!({ "txt2img": common, "img2img": img2img })
}

/// `GET /sdapi/v1/sd-modules`: VAE and text-encoder files for
/// `forge_additional_modules`.
pub fn sd_modules() -> Value {
    let files = [
        "ae.safetensors",
        "clip_l.safetensors",
        "sdxl_vae.safetensors",
        "t5xxl_fp16.safetensors",
        "t5xxl_fp8_e4m3fn.safetensors",
        "vae-ft-mse-840000-ema-pruned.safetensors",
    ];
    Value::Array(
        files
            .iter()
            .map(|file| {
                let folder = if file.starts_with("clip") || file.starts_with("t5") {
                    "text_encoder"
                } else {
                    "VAE"
                };
                json!({ "model_name": file, "filename": format!("/forge/models/{folder}/{file}") })
            })
            .collect(),
    )
}

/// `GET /sdapi/v1/face-restorers`.
pub fn face_restorers() -> Value {
    json!([
        { "name": "CodeFormer", "cmd_dir": "/forge/models/Codeformer" },
        { "name": "GFPGAN", "cmd_dir": null },
    ])
}

/// `GET /sdapi/v1/cmd-flags`: Forge's parsed command line. The simulator
/// never echoes the real `--api-auth` secret (Forge does).
pub fn cmd_flags(listen: SocketAddr, api_auth: bool) -> Value {
    let mut flags: serde_json::Map<String, Value> =
        serde_json::from_str(CMD_FLAGS).expect("the command-line flags are valid JSON");
    flags.insert(
        "api_auth".into(),
        if api_auth {
            json!("<redacted>")
        } else {
            Value::Null
        },
    );
    flags.insert("listen".into(), json!(!listen.ip().is_loopback()));
    flags.insert("port".into(), json!(listen.port()));
    Value::Object(flags)
}

/// Forge's flags that do not depend on the simulator's configuration.
const CMD_FLAGS: &str = r##"{
    "f": false,
    "update_all_extensions": false,
    "skip_python_version_check": false,
    "skip_torch_cuda_test": false,
    "reinstall_xformers": false,
    "reinstall_torch": false,
    "update_check": false,
    "test_server": false,
    "log_startup": false,
    "skip_prepare_environment": false,
    "skip_install": false,
    "dump_sysinfo": false,
    "loglevel": null,
    "do_not_download_clip": false,
    "data_dir": "/forge",
    "models_dir": null,
    "config": "/forge/configs/v1-inference.yaml",
    "ckpt": "/forge/model.ckpt",
    "ckpt_dir": null,
    "vae_dir": null,
    "gfpgan_dir": "./GFPGAN",
    "gfpgan_model": null,
    "no_half": false,
    "no_half_vae": false,
    "no_progressbar_hiding": false,
    "max_batch_count": 16,
    "embeddings_dir": "/forge/embeddings",
    "textual_inversion_templates_dir": "/forge/textual_inversion_templates",
    "hypernetwork_dir": "/forge/models/hypernetworks",
    "localizations_dir": "/forge/localizations",
    "allow_code": false,
    "share": false,
    "ngrok": null,
    "ngrok_region": "",
    "ngrok_options": {},
    "enable_insecure_extension_access": false,
    "codeformer_models_path": "/forge/models/Codeformer",
    "gfpgan_models_path": "/forge/models/GFPGAN",
    "esrgan_models_path": "/forge/models/ESRGAN",
    "realesrgan_models_path": "/forge/models/RealESRGAN",
    "dat_models_path": "/forge/models/DAT",
    "clip_models_path": null,
    "xformers": false,
    "force_enable_xformers": false,
    "xformers_flash_attention": false,
    "opt_split_attention": false,
    "opt_sub_quad_attention": false,
    "opt_channelslast": false,
    "styles_file": [],
    "autolaunch": false,
    "theme": null,
    "use_textbox_seed": false,
    "disable_console_progressbars": false,
    "enable_console_prompts": false,
    "disable_safe_unpickle": false,
    "api": true,
    "api_log": false,
    "nowebui": true,
    "ui_debug_mode": false,
    "device_id": null,
    "administrator": false,
    "cors_allow_origins": null,
    "cors_allow_origins_regex": null,
    "tls_keyfile": null,
    "tls_certfile": null,
    "disable_tls_verify": false,
    "server_name": null,
    "gradio_queue": true,
    "no_gradio_queue": false,
    "skip_version_check": false,
    "no_hashing": false,
    "no_download_sd_model": false,
    "subpath": null,
    "add_stop_route": false,
    "api_server_stop": false,
    "timeout_keep_alive": 30,
    "disable_all_extensions": false,
    "disable_extra_extensions": false,
    "skip_load_model_at_start": false,
    "unix_filenames_sanitization": false,
    "filenames_max_length": 128,
    "no_prompt_history": false,
    "forge_ref_a1111_home": null,
    "ckpt_dirs": [],
    "lora_dirs": [],
    "text_encoder_dirs": [],
    "vae_dirs": [],
    "gpu_device_id": null,
    "all_in_fp32": false,
    "all_in_fp16": false,
    "unet_in_bf16": false,
    "unet_in_fp16": false,
    "unet_in_fp8_e4m3fn": false,
    "unet_in_fp8_e5m2": false,
    "vae_in_fp16": false,
    "vae_in_fp32": false,
    "vae_in_bf16": false,
    "vae_in_cpu": false,
    "clip_in_fp8_e4m3fn": false,
    "clip_in_fp8_e5m2": false,
    "clip_in_fp16": false,
    "clip_in_fp32": false,
    "attention_split": false,
    "attention_quad": false,
    "attention_pytorch": false,
    "disable_attention_upcast": false,
    "force_upcast_attention": false,
    "always_gpu": false,
    "always_high_vram": false,
    "always_normal_vram": false,
    "always_low_vram": false,
    "always_no_vram": false,
    "always_cpu": false,
    "always_offload_from_vram": false,
    "pytorch_deterministic": false,
    "cuda_malloc": false,
    "cuda_stream": false,
    "pin_shared_memory": false
}"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_names_aliases_and_suffixes_resolve() {
        assert_eq!(resolve_sampler(Some("Euler")), ("Euler", "Automatic"));
        assert_eq!(resolve_sampler(Some("k_euler_a")), ("Euler a", "Automatic"));
        assert_eq!(
            resolve_sampler(Some("DPM++ 2M Karras")),
            ("DPM++ 2M", "Karras")
        );
        assert_eq!(resolve_sampler(Some("no such")), ("DPM++ 2M", "Automatic"));
        assert_eq!(resolve_sampler(None), ("DPM++ 2M", "Automatic"));
    }

    #[test]
    fn lists_have_forges_shapes() {
        assert_eq!(samplers()[7]["name"], "Euler");
        assert_eq!(samplers()[0]["options"], json!({"scheduler": "karras"}));
        assert_eq!(samplers()[9]["options"], json!({"second_order": true}));
        assert_eq!(samplers().as_array().unwrap().len(), 25);
        assert_eq!(schedulers()[2]["default_rho"], json!(7.0));
        assert_eq!(schedulers()[5]["aliases"], json!(["SGMUniform"]));
        assert_eq!(schedulers().as_array().unwrap().len(), 16);
        assert!(scripts()["txt2img"].as_array().unwrap().len() > 3);
        assert_eq!(
            cmd_flags("127.0.0.1:7860".parse().unwrap(), false)["api_auth"],
            Value::Null
        );
        assert_eq!(
            cmd_flags("0.0.0.0:7861".parse().unwrap(), true)["listen"],
            true
        );
    }
}
