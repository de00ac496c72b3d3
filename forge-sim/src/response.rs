//! The bodies of successful answers that Forge computes: txt2img / img2img
//! (the images, the request echoed as `parameters`, and `info`, a JSON string
//! like Forge's `Processed.js()`), `png-info` (the infotext parsed back),
//! `extra-single-image` and `interrogate`.

use std::sync::{Arc, OnceLock};

use regex::Regex;
use serde::ser::SerializeSeq;
use serde::{Serialize, Serializer};
use serde_json::{json, Map, Value};

use crate::checkpoint::Checkpoint;
use crate::error::ApiError;
use crate::family::Family;
use crate::init_images::InputImage;
use crate::listings::resolve_sampler;
use crate::python::{py_float, py_json_dumps};
use crate::request::{GenerationRequest, Route};

/// The version string the simulated Forge reports in infotexts.
pub const FORGE_VERSION: &str = "f2.0.1v1.10.1-previous-forge-sim";

/// `TextToImageResponse` / `ImageToImageResponse`, fields in Forge's order.
#[derive(Debug, Serialize)]
pub struct GenerationResponse {
    #[serde(serialize_with = "serialize_images")]
    pub images: Vec<Arc<str>>,
    pub parameters: Map<String, Value>,
    pub info: String,
}

fn serialize_images<S: Serializer>(images: &[Arc<str>], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(images.len()))?;
    for image in images {
        seq.serialize_element(&**image)?;
    }
    seq.end()
}

/// What the generation produced, for the answer.
#[derive(Debug)]
pub struct Produced<'a> {
    pub checkpoint: &'a Checkpoint,
    /// Images made (batch_size per iteration that ran).
    pub count: usize,
    pub image: Arc<str>,
    /// The grid image Forge prepends when it saves a grid and returns it.
    pub grid: Option<Arc<str>>,
    pub seed: i64,
    pub subseed: i64,
    pub job_timestamp: String,
    pub clip_skip: Value,
}

/// Rows and columns of A1111's `image_grid` for `count` images.
pub fn grid_shape(count: usize) -> (usize, usize) {
    let rows = ((count as f64).sqrt().round() as usize).clamp(1, count.max(1));
    (rows, count.div_ceil(rows))
}

/// Builds the answer.
pub fn build(request: &GenerationRequest, produced: Produced<'_>) -> GenerationResponse {
    let mut images = Vec::new();
    if request.bool("send_images") {
        images.extend(produced.grid.clone());
        images.extend(std::iter::repeat_n(produced.image.clone(), produced.count));
    }
    // Forge leaves the images out unless asked: they are not copied only to be dropped.
    let images_left_out = request.route == Route::Img2Img && !request.bool("include_init_images");
    let parameters = request
        .parameters()
        .iter()
        .map(|(name, value)| {
            let left_out = images_left_out && matches!(name.as_str(), "init_images" | "mask");
            (
                name.clone(),
                if left_out { Value::Null } else { value.clone() },
            )
        })
        .collect();
    GenerationResponse {
        images,
        parameters,
        info: py_json_dumps(&info(request, &produced)),
    }
}

/// `Processed.js()`.
fn info(request: &GenerationRequest, produced: &Produced<'_>) -> Value {
    let batch_size = request.int("batch_size").max(1);
    let total = (batch_size * request.int("n_iter").max(1)) as usize;
    let prompt = request.string("prompt").unwrap_or_default();
    let negative = request.string("negative_prompt").unwrap_or_default();
    let requested_sampler = request
        .string("sampler_name")
        .or_else(|| request.string("sampler_index"));
    let (sampler, default_scheduler) = resolve_sampler(requested_sampler.as_deref());
    let scheduler = request
        .string("scheduler")
        .unwrap_or_else(|| default_scheduler.to_owned());
    let checkpoint = produced.checkpoint;
    let (width, height) = (request.int("width"), request.int("height"));
    let cfg_scale = request.float("cfg_scale");
    let seeds: Vec<i64> = (0..total as i64).map(|i| produced.seed + i).collect();
    let subseeds: Vec<i64> = (0..total as i64).map(|i| produced.subseed + i).collect();

    let mut extra = Map::new();
    extra.insert("Schedule type".into(), json!(scheduler));
    if checkpoint.family == Family::Flux {
        extra.insert(
            "Distilled CFG Scale".into(),
            json!(request.float("distilled_cfg_scale")),
        );
    }
    let hires = request.route == Route::Txt2Img && request.bool("enable_hr");
    if hires {
        extra.insert("Hires upscale".into(), json!(request.float("hr_scale")));
        if let Some(upscaler) = request.string("hr_upscaler") {
            extra.insert("Hires upscaler".into(), json!(upscaler));
        }
    }
    let denoising = match request.route {
        Route::Img2Img => json!(request.float("denoising_strength")),
        Route::Txt2Img if hires => json!(request.float("denoising_strength")),
        Route::Txt2Img => Value::Null,
    };

    let infotexts: Vec<String> = seeds
        .iter()
        .map(|seed| {
            let fields = infotext_fields(request, produced, sampler, &scheduler, *seed, &denoising);
            let negative_line = if negative.is_empty() {
                String::new()
            } else {
                format!("\nNegative prompt: {negative}")
            };
            format!("{prompt}{negative_line}\n{}", fields.join(", "))
        })
        .collect();

    json!({
        "prompt": prompt,
        "all_prompts": vec![&prompt; total],
        "negative_prompt": negative,
        "all_negative_prompts": vec![&negative; total],
        "seed": produced.seed,
        "all_seeds": seeds,
        "subseed": produced.subseed,
        "all_subseeds": subseeds,
        "subseed_strength": request.float("subseed_strength"),
        "width": width,
        "height": height,
        "sampler_name": sampler,
        "cfg_scale": cfg_scale,
        "steps": request.int("steps"),
        "batch_size": batch_size,
        "restore_faces": request.get("restore_faces").as_bool().unwrap_or(false),
        "face_restoration_model": null,
        "sd_model_name": checkpoint.name_for_extra,
        "sd_model_hash": checkpoint.short_hash,
        "sd_vae_name": null,
        "sd_vae_hash": null,
        "seed_resize_from_w": request.int("seed_resize_from_w"),
        "seed_resize_from_h": request.int("seed_resize_from_h"),
        "denoising_strength": denoising,
        "extra_generation_params": extra,
        "index_of_first_image": usize::from(produced.grid.is_some()),
        "infotexts": infotexts,
        "styles": request.get("styles").as_array().cloned().unwrap_or_default(),
        "job_timestamp": produced.job_timestamp,
        "clip_skip": produced.clip_skip,
        "is_using_inpainting_conditioning": false,
        "version": FORGE_VERSION,
    })
}

/// The parameters line of one image's infotext, field by field.
fn infotext_fields(
    request: &GenerationRequest,
    produced: &Produced<'_>,
    sampler: &str,
    scheduler: &str,
    seed: i64,
    denoising: &Value,
) -> Vec<String> {
    let checkpoint = produced.checkpoint;
    let mut fields = vec![
        format!("Steps: {}", request.int("steps")),
        format!("Sampler: {sampler}"),
        format!("Schedule type: {scheduler}"),
        format!("CFG scale: {}", short_number(request.float("cfg_scale"))),
    ];
    if checkpoint.family == Family::Flux {
        fields.push(format!(
            "Distilled CFG Scale: {}",
            short_number(request.float("distilled_cfg_scale"))
        ));
    }
    fields.extend([
        format!("Seed: {seed}"),
        format!("Size: {}x{}", request.int("width"), request.int("height")),
        format!("Model hash: {}", checkpoint.short_hash),
        format!("Model: {}", checkpoint.name_for_extra),
    ]);
    if let Value::Number(strength) = denoising {
        fields.push(format!("Denoising strength: {strength}"));
    }
    fields.push(format!("Version: {FORGE_VERSION}"));
    fields
}

/// `7` for 7.0, `3.5` for 3.5, as infotexts print numbers.
fn short_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        value.to_string()
    }
}

/// The options `png-info`'s parsing reads.
#[derive(Debug, Default)]
pub struct InfotextOptions {
    /// `sd_model_checkpoint`: a `Model` the current checkpoint's name contains
    /// is dropped.
    pub checkpoint: String,
    /// `forge_additional_modules`.
    pub additional_modules: Vec<String>,
    /// `infotext_skip_pasting`.
    pub skip_fields: Vec<String>,
    /// `enable_prompt_comments`.
    pub prompt_comments: bool,
    /// The file names `/sdapi/v1/sd-modules` lists.
    pub known_modules: Vec<String>,
}

/// `POST /sdapi/v1/png-info` (api.py `pnginfoapi`): the `parameters` text
/// chunk as `info`, the image's other info as `items`, and the infotext
/// parsed as the UI's paste does. Only PNG text is read: the EXIF comment of
/// a JPEG or WebP and Forge's "stealth" infotext in the pixels are not.
pub fn png_info(image: &InputImage, options: &InfotextOptions) -> Result<Value, ApiError> {
    let mut items = image.info.clone();
    let info = match items.shift_remove("parameters") {
        Some(Value::String(text)) => text,
        _ => String::new(),
    };
    let parameters = parse_generation_parameters(&info, options)?;
    Ok(json!({ "info": info, "items": items, "parameters": parameters }))
}

/// infotext_utils.py `re_param`: `Key: value` pairs, values possibly quoted.
fn re_param() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r#"\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)"#)
            .expect("re_param is a valid regex")
    })
}

/// comments.py `strip_comments`: `#` to the end of the line.
fn strip_comments(text: &str) -> String {
    static WHOLE: OnceLock<Regex> = OnceLock::new();
    static TAIL: OnceLock<Regex> = OnceLock::new();
    let whole = WHOLE.get_or_init(|| Regex::new("(^|\n)#[^\n]*(\n|$)").expect("valid"));
    let tail = TAIL.get_or_init(|| Regex::new("#[^\n]*(\n|$)").expect("valid"));
    let text = whole.replace_all(text, "\n");
    tail.replace_all(&text, "\n").into_owned()
}

/// infotext_utils.py `parse_generation_parameters`, with Forge's default
/// options (no styles saved, no extension callbacks, no version
/// back-compatibility flags).
fn parse_generation_parameters(
    text: &str,
    options: &InfotextOptions,
) -> Result<Map<String, Value>, ApiError> {
    let (prompt, negative, lastline) = split_infotext(text);
    let mut res = read_parameters(&lastline);
    let strip = |text: &str| {
        if options.prompt_comments {
            strip_comments(text)
        } else {
            text.to_owned()
        }
    };
    let (prompt, negative) = (strip(&prompt), strip(&negative));
    if res.contains_key("Hires prompt") || res.contains_key("Hires negative prompt") {
        // With no styles saved, a hires prompt equal to the prompt is dropped.
        for (key, main) in [
            ("Hires prompt", &prompt),
            ("Hires negative prompt", &negative),
        ] {
            let hires = res
                .get(key)
                .and_then(Value::as_str)
                .map_or_else(|| main.clone(), strip);
            let hires = if hires == *main { String::new() } else { hires };
            res.insert(key.into(), json!(hires));
        }
    }
    res.insert("Prompt".into(), json!(prompt));
    res.insert("Negative prompt".into(), json!(negative));
    default(&mut res, "Clip skip", json!("1"));
    if let Some(hypernet) = res
        .get("Hypernet")
        .and_then(Value::as_str)
        .map(str::to_owned)
    {
        let strength = res
            .get("Hypernet strength")
            .and_then(Value::as_str)
            .unwrap_or("1.0")
            .to_owned();
        res.insert(
            "Prompt".into(),
            json!(format!("{prompt}<hypernet:{hypernet}:{strength}>")),
        );
    }
    fill_defaults(&mut res)?;
    if !res.contains_key("Emphasis") && (uses_emphasis(&prompt)? || uses_emphasis(&negative)?) {
        res.insert("Emphasis".into(), json!("Original"));
    }
    default(&mut res, "Refiner switch by sampling steps", json!(false));
    for key in &options.skip_fields {
        res.shift_remove(key);
    }
    if let Some(Value::String(model)) = res.get("Model") {
        if options.checkpoint.contains(model.as_str()) {
            res.shift_remove("Model");
        }
    }
    read_modules(&mut res, options);
    Ok(res)
}

/// The prompt, the negative prompt and the parameters line of an infotext.
fn split_infotext(text: &str) -> (String, String, String) {
    let mut lines: Vec<&str> = text.trim().split('\n').collect();
    let mut last = lines.pop().unwrap_or_default();
    if re_param().captures_iter(last).count() < 3 {
        lines.push(last);
        last = "";
    }
    let (mut prompt, mut negative) = (String::new(), String::new());
    let mut done_with_prompt = false;
    for line in lines.iter().map(|line| line.trim()) {
        let line = match line.strip_prefix("Negative prompt:") {
            Some(rest) => {
                done_with_prompt = true;
                rest.trim()
            }
            None => line,
        };
        let target = if done_with_prompt {
            &mut negative
        } else {
            &mut prompt
        };
        if !target.is_empty() {
            target.push('\n');
        }
        target.push_str(line);
    }
    (prompt, negative, last.to_owned())
}

/// The `key: value` pairs of the parameters line; `WxH` values split in two.
fn read_parameters(lastline: &str) -> Map<String, Value> {
    let mut lastline = lastline.to_owned();
    if lastline.contains("Civitai") && lastline.contains("FLUX") {
        for skip in 0..=8 {
            lastline = lastline.replace(&format!("Clip skip: {skip}, "), "");
        }
        lastline = lastline.replace(
            "Sampler: Undefined, ",
            "Sampler: Euler, Schedule type: Simple, ",
        );
        lastline = lastline.replace("CFG scale: ", "CFG scale: 1, Distilled CFG Scale: ");
    }
    let mut res = Map::new();
    for captures in re_param().captures_iter(&lastline) {
        let key = &captures[1];
        let value = captures.get(2).map_or("", |m| m.as_str());
        // `v[0]` of an empty value raises, and the key is skipped.
        if value.is_empty() {
            continue;
        }
        let value = if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
            serde_json::from_str(value).unwrap_or_else(|_| json!(value))
        } else {
            json!(value)
        };
        match value.as_str().and_then(image_size) {
            Some((width, height)) => {
                res.insert(format!("{key}-1"), json!(width));
                res.insert(format!("{key}-2"), json!(height));
            }
            None => {
                res.insert(key.to_owned(), value);
            }
        }
    }
    res
}

/// The values an infotext that does not name them stands for.
fn fill_defaults(res: &mut Map<String, Value>) -> Result<(), ApiError> {
    if !res.contains_key("Hires resize-1") {
        res.insert("Hires resize-1".into(), json!(0));
        res.insert("Hires resize-2".into(), json!(0));
    }
    default(res, "Hires sampler", json!("Use same sampler"));
    default(res, "Hires schedule type", json!("Use same scheduler"));
    default(res, "Hires checkpoint", json!("Use same checkpoint"));
    default(res, "Hires prompt", json!(""));
    default(res, "Hires negative prompt", json!(""));
    default(res, "Mask mode", json!("Inpaint masked"));
    default(res, "Masked content", json!("original"));
    default(res, "Inpaint area", json!("Whole picture"));
    default(res, "Masked area padding", json!(32));
    restore_old_hires_fix_params(res)?;
    default(res, "RNG", json!("GPU"));
    default(res, "Schedule type", json!("Automatic"));
    default(res, "Schedule max sigma", json!(0));
    default(res, "Schedule min sigma", json!(0));
    default(res, "Schedule rho", json!(0));
    default(res, "VAE Encoder", json!("Full"));
    default(res, "VAE Decoder", json!("Full"));
    default(res, "FP8 weight", json!("Disable"));
    if res.get("FP8 weight") != Some(&json!("Disable")) {
        default(res, "Cache FP16 weight for LoRA", json!(false));
    }
    Ok(())
}

/// `VAE`, `Module N` and `Hires Module 1` as the VAE/TE choices Forge's UI would select.
fn read_modules(res: &mut Map<String, Value>, options: &InfotextOptions) {
    let stem = |known: &str| -> String {
        known
            .rsplit_once('.')
            .map_or(known, |(stem, _)| stem)
            .to_owned()
    };
    let mut modules = Vec::new();
    match res.shift_remove("VAE") {
        Some(vae) if !is_falsy(&vae) => modules.push(vae),
        _ => {
            for (key, value) in res.iter() {
                if !key.starts_with("Module ") {
                    continue;
                }
                let known = options
                    .known_modules
                    .iter()
                    .find(|known| value.as_str() == Some(stem(known).as_str()));
                modules.push(known.map_or_else(|| value.clone(), |known| json!(known)));
            }
        }
    }
    if !modules.is_empty() {
        let mut wanted: Vec<String> = modules.iter().map(text_of).collect();
        let mut current: Vec<String> = options
            .additional_modules
            .iter()
            .map(|m| m.rsplit(['/', '\\']).next().unwrap_or(m).to_owned())
            .collect();
        wanted.sort();
        current.sort();
        if wanted != current {
            res.insert("VAE/TE".into(), Value::Array(modules));
        }
    }
    let hires_modules = match res.get("Hires Module 1").and_then(Value::as_str) {
        Some("Use same choices") | None => json!(["Use same choices"]),
        Some("Built-in") => json!([]),
        Some(name) => {
            let known = options
                .known_modules
                .iter()
                .find(|known| stem(known) == name);
            json!(known.into_iter().collect::<Vec<_>>())
        }
    };
    res.insert("Hires VAE/TE".into(), hires_modules);
}

fn default(res: &mut Map<String, Value>, key: &str, value: Value) {
    if !res.contains_key(key) {
        res.insert(key.into(), value);
    }
}

fn is_falsy(value: &Value) -> bool {
    matches!(value, Value::Null | Value::Bool(false)) || value.as_str() == Some("")
}

fn text_of(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

/// `re_imagesize`: `^(\d+)x(\d+)$`.
fn image_size(text: &str) -> Option<(&str, &str)> {
    let (width, height) = text.split_once('x')?;
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    (digits(width) && digits(height)).then_some((width, height))
}

/// infotext_utils.py `restore_old_hires_fix_params` (with
/// `use_old_hires_fix_width_height` off): an old `First pass size` becomes
/// the size, and the size the hires resize.
fn restore_old_hires_fix_params(res: &mut Map<String, Value>) -> Result<(), ApiError> {
    let (Some(first_w), Some(first_h)) = (
        res.get("First pass size-1").cloned(),
        res.get("First pass size-2").cloned(),
    ) else {
        return Ok(());
    };
    let int = |value: &Value| -> Result<i64, ApiError> {
        let text = text_of(value);
        text.trim().parse().map_err(|_| ApiError::Exception {
            error: "ValueError",
            message: format!("invalid literal for int() with base 10: '{text}'"),
        })
    };
    let (mut first_w, mut first_h) = (int(&first_w)?, int(&first_h)?);
    let width = res.get("Size-1").map_or(Ok(512), int)?;
    let height = res.get("Size-2").map_or(Ok(512), int)?;
    if first_w == 0 || first_h == 0 {
        let scale = (512.0 * 512.0 / (width * height) as f64).sqrt();
        first_w = (scale * width as f64 / 64.0).ceil() as i64 * 64;
        first_h = (scale * height as f64 / 64.0).ceil() as i64 * 64;
    }
    res.insert("Size-1".into(), json!(first_w));
    res.insert("Size-2".into(), json!(first_h));
    res.insert("Hires resize-1".into(), json!(width));
    res.insert("Hires resize-2".into(), json!(height));
    Ok(())
}

/// Whether prompt_parser.py's `parse_prompt_attention` gives any text a
/// weight other than 1: `(a)`, `[a]`, `(a:1.2)`, or an unclosed bracket.
fn uses_emphasis(text: &str) -> Result<bool, ApiError> {
    // (weight, is BREAK) of each piece of text, as `res` holds them.
    let mut res: Vec<(f64, bool)> = Vec::new();
    let (mut round, mut square) = (Vec::new(), Vec::new());
    let multiply = |res: &mut Vec<(f64, bool)>, from: usize, by: f64| {
        for piece in &mut res[from..] {
            piece.0 *= by;
        }
    };
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                // `\(`, `\)`, `\[`, `\]`, `\\`, or a lone backslash: literal text.
                let escaped = chars
                    .get(i + 1)
                    .is_some_and(|n| matches!(n, '(' | ')' | '[' | ']' | '\\'));
                res.push((1.0, false));
                i += if escaped { 2 } else { 1 };
            }
            '(' => {
                round.push(res.len());
                i += 1;
            }
            '[' => {
                square.push(res.len());
                i += 1;
            }
            ':' => match weight_closing(&chars, i) {
                Some((number, end)) => {
                    if let Some(from) = round.pop() {
                        let weight: f64 = number.parse().map_err(|_| ApiError::Exception {
                            error: "ValueError",
                            message: format!("could not convert string to float: '{number}'"),
                        })?;
                        multiply(&mut res, from, weight);
                    } else {
                        res.push((1.0, false));
                    }
                    i = end + 1;
                }
                None => {
                    res.push((1.0, false));
                    i += 1;
                }
            },
            ')' => {
                match round.pop() {
                    Some(from) => multiply(&mut res, from, 1.1),
                    None => res.push((1.0, false)),
                }
                i += 1;
            }
            ']' => {
                match square.pop() {
                    Some(from) => multiply(&mut res, from, 1.0 / 1.1),
                    None => res.push((1.0, false)),
                }
                i += 1;
            }
            _ => {
                let start = i;
                while i < chars.len() && !matches!(chars[i], '\\' | '(' | ')' | '[' | ']' | ':') {
                    i += 1;
                }
                let piece: String = chars[start..i].iter().collect();
                for (n, _) in piece.split("BREAK").enumerate() {
                    if n > 0 {
                        res.push((-1.0, true));
                    }
                    res.push((1.0, false));
                }
            }
        }
    }
    for from in round {
        multiply(&mut res, from, 1.1);
    }
    for from in square {
        multiply(&mut res, from, 1.0 / 1.1);
    }
    Ok(res
        .iter()
        .any(|(weight, is_break)| !is_break && *weight != 1.0))
}

/// `:\s*([+-]?[.\d]+)\s*\)` at `colon`, which closes a round bracket with a weight: the
/// number as written and the index of the `)`.
fn weight_closing(chars: &[char], colon: usize) -> Option<(String, usize)> {
    let skip_ws = |mut j: usize| {
        while chars.get(j).is_some_and(|c| c.is_whitespace()) {
            j += 1;
        }
        j
    };
    let start = skip_ws(colon + 1);
    let mut j = start;
    if chars.get(j).is_some_and(|c| matches!(c, '+' | '-')) {
        j += 1;
    }
    let digits_from = j;
    while chars
        .get(j)
        .is_some_and(|c| *c == '.' || c.is_ascii_digit())
    {
        j += 1;
    }
    let end = skip_ws(j);
    (j > digits_from && chars.get(end) == Some(&')'))
        .then(|| (chars[start..j].iter().collect(), end))
}

/// The answer of `POST /sdapi/v1/extra-single-image` before its image: the
/// output size and `html_info`.
#[derive(Debug, PartialEq)]
pub struct Extras {
    pub size: (u32, u32),
    pub html_info: String,
}

/// modules/postprocessing.py `run_extras` with its three scripts in their
/// order (scripts/postprocessing_upscale.py 1000, GFPGAN 2000, CodeFormer
/// 3000): the size the image ends up with and the infotext they write.
/// `upscale_first` is ignored, as in Forge.
pub fn extras(
    request: &Map<String, Value>,
    size: (u32, u32),
    upscalers: &[&str],
) -> Result<Extras, ApiError> {
    let number = |key: &str| request.get(key).and_then(Value::as_f64).unwrap_or(0.0);
    let text = |key: &str| request.get(key).and_then(Value::as_str).unwrap_or("None");
    let find = |name: &str| -> Result<Option<String>, ApiError> {
        if name == "None" {
            return Ok(None);
        }
        match upscalers.iter().find(|known| **known == name) {
            Some(known) => Ok(Some((*known).to_owned())),
            None => Err(ApiError::Exception {
                error: "AssertionError",
                message: format!("could not find upscaler named {name}"),
            }),
        }
    };
    let mut info: Vec<(&str, String)> = Vec::new();
    let mut out = size;
    if let Some(first) = find(text("upscaler_1"))? {
        let second = find(text("upscaler_2"))?;
        let (w, h) = (f64::from(size.0), f64::from(size.1));
        let crop_mode = request.get("resize_mode") == Some(&json!(1));
        let scale = if crop_mode {
            let (to_w, to_h) = (number("upscaling_resize_w"), number("upscaling_resize_h"));
            info.push(("Postprocess upscale to", format!("{to_w}x{to_h}")));
            (to_w / w).max(to_h / h)
        } else {
            let by = request.get("upscaling_resize").cloned().unwrap_or(json!(2));
            info.push(("Postprocess upscale by", py_str(&by)));
            number("upscaling_resize")
        };
        // modules/upscaler.py `Upscaler.upscale`: down to a multiple of 8.
        let dest = (
            ((w * scale) / 8.0).floor() * 8.0,
            ((h * scale) / 8.0).floor() * 8.0,
        );
        if dest.0 < 1.0 || dest.1 < 1.0 {
            return Err(ApiError::Exception {
                error: "ValueError",
                message: "height and width must be > 0".into(),
            });
        }
        out = (dest.0 as u32, dest.1 as u32);
        if crop_mode && request.get("upscaling_crop") != Some(&json!(false)) {
            out = (
                number("upscaling_resize_w") as u32,
                number("upscaling_resize_h") as u32,
            );
            info.push(("Postprocess crop to", format!("{}x{}", out.0, out.1)));
        }
        info.push(("Postprocess upscaler", first));
        if let Some(second) = second.filter(|_| number("extras_upscaler_2_visibility") > 0.0) {
            info.push(("Postprocess upscaler 2", second));
        }
    }
    let round3 = |value: f64| py_float((value * 1000.0).round() / 1000.0);
    if number("gfpgan_visibility") != 0.0 {
        info.push(("GFPGAN visibility", round3(number("gfpgan_visibility"))));
    }
    if number("codeformer_visibility") != 0.0 {
        info.push((
            "CodeFormer visibility",
            round3(number("codeformer_visibility")),
        ));
        info.push(("CodeFormer weight", round3(number("codeformer_weight"))));
    }
    let infotext = info
        .iter()
        .map(|(key, value)| {
            if key == value {
                (*key).to_owned()
            } else {
                format!("{key}: {}", quote(value))
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Extras {
        size: out,
        html_info: plaintext_to_html(&infotext),
    })
}

/// Python's `str()` of a decoded number or string.
fn py_str(value: &Value) -> String {
    match value {
        Value::Number(n) if n.is_f64() => py_float(n.as_f64().unwrap_or(0.0)),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// infotext_utils.py `quote`.
fn quote(text: &str) -> String {
    if text.contains([',', '\n', ':']) {
        serde_json::to_string(text).unwrap_or_default()
    } else {
        text.to_owned()
    }
}

/// ui_common.py `plaintext_to_html`: `html.escape` per line.
fn plaintext_to_html(text: &str) -> String {
    let escape = |line: &str| {
        line.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#x27;")
    };
    let lines: Vec<String> = text.split('\n').map(escape).collect();
    format!("<p>{}</p>", lines.join("<br>\n"))
}

/// `POST /sdapi/v1/interrogate`'s caption for the simulator's noise, in the
/// shape each model writes it: BLIP's sentence followed by CLIP's flavors, or
/// DeepDanbooru's tags; `None` for an unknown model (404 "Model not found").
pub fn interrogate_caption(model: &str) -> Option<&'static str> {
    match model {
        "clip" => Some(
            "a black and white photo of static noise, a digital rendering, by Ryoji Ikeda, generative art, glitch art",
        ),
        "deepdanbooru" => Some("abstract, greyscale, monochrome, no humans, noise"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Catalog;
    use crate::config::CheckpointSpec;

    fn produced(catalog: &Catalog, count: usize, grid: bool) -> Produced<'_> {
        Produced {
            checkpoint: catalog.iter().next().unwrap(),
            count,
            image: Arc::from("IMG"),
            grid: grid.then(|| Arc::from("GRID")),
            seed: 100,
            subseed: 7,
            job_timestamp: "20250101000000".into(),
            clip_skip: json!(1),
        }
    }

    fn catalog() -> Catalog {
        Catalog::new(&[CheckpointSpec::new("flux1-dev-Q4_0.gguf")])
    }

    #[test]
    fn images_are_batch_times_iterations_and_info_is_a_json_string() {
        let request = GenerationRequest::validate(
            Route::Txt2Img,
            json!({"prompt": "a cat", "batch_size": 2, "n_iter": 2}),
        )
        .unwrap();
        let catalog = catalog();
        let response = build(&request, produced(&catalog, 4, false));
        assert_eq!(response.images.len(), 4);
        let info: Value = serde_json::from_str(&response.info).unwrap();
        assert_eq!(info["prompt"], "a cat");
        assert_eq!(info["all_seeds"], json!([100, 101, 102, 103]));
        assert_eq!(info["sd_model_name"], "flux1-dev-Q4_0");
        assert!(info["infotexts"][0]
            .as_str()
            .unwrap()
            .contains("Distilled CFG Scale: 3.5"));
        assert!(response.info.contains("\", \""), "python separators");
    }

    #[test]
    fn send_images_false_returns_no_images() {
        let request =
            GenerationRequest::validate(Route::Txt2Img, json!({"send_images": false})).unwrap();
        let catalog = catalog();
        assert!(build(&request, produced(&catalog, 1, false))
            .images
            .is_empty());
    }

    #[test]
    fn grid_comes_first() {
        let request =
            GenerationRequest::validate(Route::Txt2Img, json!({"batch_size": 2})).unwrap();
        let catalog = catalog();
        let response = build(&request, produced(&catalog, 2, true));
        assert_eq!(&*response.images[0], "GRID");
        assert_eq!(response.images.len(), 3);
    }

    #[test]
    fn img2img_parameters_drop_init_images_unless_asked() {
        let request =
            GenerationRequest::validate(Route::Img2Img, json!({"init_images": ["x"]})).unwrap();
        let catalog = catalog();
        assert_eq!(
            build(&request, produced(&catalog, 1, false)).parameters["init_images"],
            Value::Null
        );
        let request = GenerationRequest::validate(
            Route::Img2Img,
            json!({"init_images": ["x"], "include_init_images": true}),
        )
        .unwrap();
        assert_eq!(
            build(&request, produced(&catalog, 1, false)).parameters["init_images"],
            json!(["x"])
        );
    }

    fn parse(text: &str) -> Map<String, Value> {
        let options = InfotextOptions {
            checkpoint: "tiny-sd15-random.safetensors".into(),
            prompt_comments: true,
            ..InfotextOptions::default()
        };
        parse_generation_parameters(text, &options).unwrap()
    }

    #[test]
    fn infotext_parses_like_forges_paste() {
        let res = parse(
            "cat\nNegative prompt: dog\nSteps: 1, Sampler: Euler, Schedule type: Automatic, \
             CFG scale: 7.0, Seed: 5, Size: 64x64, Model hash: 06b7740d5c, \
             Model: tiny-sd15-random, Version: f2.0.1v1.10.1",
        );
        let keys: Vec<&str> = res.keys().map(String::as_str).collect();
        assert_eq!(
            keys[..12],
            [
                "Steps",
                "Sampler",
                "Schedule type",
                "CFG scale",
                "Seed",
                "Size-1",
                "Size-2",
                "Model hash",
                "Version",
                "Prompt",
                "Negative prompt",
                "Clip skip"
            ]
        );
        assert_eq!(res["Size-1"], "64");
        assert_eq!(res["Prompt"], "cat");
        assert_eq!(res["Negative prompt"], "dog");
        assert!(!res.contains_key("Model"), "the current checkpoint's name");
        assert_eq!(res["Hires VAE/TE"], json!(["Use same choices"]));
        assert_eq!(res["Masked area padding"], json!(32));
    }

    #[test]
    fn a_last_line_with_few_params_is_prompt() {
        let res = parse("a dog\nSteps: 3, Seed: 9");
        assert_eq!(res["Prompt"], "a dog\nSteps: 3, Seed: 9");
        assert_eq!(parse("")["Prompt"], "");
    }

    #[test]
    fn emphasis_is_detected_like_parse_prompt_attention() {
        assert!(uses_emphasis("a (cat)").unwrap());
        assert!(uses_emphasis("a [cat").unwrap());
        assert!(uses_emphasis("a (cat:1.2)").unwrap());
        assert!(!uses_emphasis("a (cat:1.0)").unwrap());
        assert!(!uses_emphasis("a \\(cat\\) BREAK dog").unwrap());
        assert!(!uses_emphasis("a cat: 3").unwrap());
        assert_eq!(parse("a (cat)")["Emphasis"], "Original");
    }

    #[test]
    fn extras_sizes_and_infotext_match_forge() {
        let upscalers = ["None", "Lanczos"];
        let request = |body: Value| body.as_object().unwrap().clone();
        let none = extras(&request(json!({})), (8, 8), &upscalers).unwrap();
        assert_eq!(
            none,
            Extras {
                size: (8, 8),
                html_info: "<p></p>".into()
            }
        );
        let by = extras(
            &request(json!({"upscaler_1": "Lanczos", "upscaling_resize": 2})),
            (8, 8),
            &upscalers,
        )
        .unwrap();
        assert_eq!(by.size, (16, 16));
        assert_eq!(
            by.html_info,
            "<p>Postprocess upscale by: 2, Postprocess upscaler: Lanczos</p>"
        );
        let to = extras(
            &request(json!({"upscaler_1": "Lanczos", "resize_mode": 1,
                            "upscaling_resize_w": 20, "upscaling_resize_h": 10,
                            "upscaling_crop": true})),
            (8, 8),
            &upscalers,
        )
        .unwrap();
        assert_eq!(to.size, (20, 10));
        assert_eq!(
            to.html_info,
            "<p>Postprocess upscale to: 20x10, Postprocess crop to: 20x10, Postprocess upscaler: Lanczos</p>"
        );
        let unknown = extras(&request(json!({"upscaler_1": "nope"})), (8, 8), &upscalers);
        assert!(matches!(
            unknown,
            Err(ApiError::Exception { error: "AssertionError", ref message })
                if message == "could not find upscaler named nope"
        ));
    }

    #[test]
    fn grid_shapes_match_a1111() {
        assert_eq!(grid_shape(2), (1, 2));
        assert_eq!(grid_shape(4), (2, 2));
        assert_eq!(grid_shape(6), (2, 3));
        assert_eq!(grid_shape(9), (3, 3));
    }
}
