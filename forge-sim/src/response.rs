//! The body of a successful txt2img / img2img answer: the images, the
//! request echoed as `parameters`, and `info`, a JSON string like Forge's
//! `Processed.js()`.

use std::sync::Arc;

use serde::ser::SerializeSeq;
use serde::{Serialize, Serializer};
use serde_json::{json, Map, Value};

use crate::checkpoint::Checkpoint;
use crate::family::Family;
use crate::listings::resolve_sampler;
use crate::python::py_json_dumps;
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
            let mut fields = vec![
                format!("Steps: {}", request.int("steps")),
                format!("Sampler: {sampler}"),
                format!("Schedule type: {scheduler}"),
                format!("CFG scale: {}", short_number(cfg_scale)),
            ];
            if checkpoint.family == Family::Flux {
                fields.push(format!(
                    "Distilled CFG Scale: {}",
                    short_number(request.float("distilled_cfg_scale"))
                ));
            }
            fields.extend([
                format!("Seed: {seed}"),
                format!("Size: {width}x{height}"),
                format!("Model hash: {}", checkpoint.short_hash),
                format!("Model: {}", checkpoint.name_for_extra),
            ]);
            if let Value::Number(strength) = &denoising {
                fields.push(format!("Denoising strength: {strength}"));
            }
            fields.push(format!("Version: {FORGE_VERSION}"));
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

/// `7` for 7.0, `3.5` for 3.5, as infotexts print numbers.
fn short_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        value.to_string()
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

    #[test]
    fn grid_shapes_match_a1111() {
        assert_eq!(grid_shape(2), (1, 2));
        assert_eq!(grid_shape(4), (2, 2));
        assert_eq!(grid_shape(6), (2, 3));
        assert_eq!(grid_shape(9), (3, 3));
    }
}
