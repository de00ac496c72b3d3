//! The body of `txt2img` / `img2img` as Forge's pydantic v2 models see it:
//! every field Optional, lax coercion (`"20"` is an int), one 422 entry per
//! bad field, unknown fields ignored, defaults as in Forge's API models.

use serde_json::{json, Map, Value};

use crate::error::ApiError;

/// Which generation endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Txt2Img,
    Img2Img,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Txt2Img => "txt2img",
            Route::Img2Img => "img2img",
        }
    }
}

/// The type a field validates as.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Int,
    Float,
    Str,
    Bool,
    Dict,
    List,
    ListOfStr,
    Any,
}

/// A model field: name, type and default (as JSON text).
type Field = (&'static str, Kind, &'static str);

/// `StableDiffusionProcessing`'s API fields, in declaration order.
const COMMON: &[Field] = &[
    ("prompt", Kind::Str, r#""""#),
    ("negative_prompt", Kind::Str, r#""""#),
    ("styles", Kind::ListOfStr, "null"),
    ("seed", Kind::Int, "-1"),
    ("subseed", Kind::Int, "-1"),
    ("subseed_strength", Kind::Float, "0"),
    ("seed_resize_from_h", Kind::Int, "-1"),
    ("seed_resize_from_w", Kind::Int, "-1"),
    ("sampler_name", Kind::Str, "null"),
    ("scheduler", Kind::Str, "null"),
    ("batch_size", Kind::Int, "1"),
    ("n_iter", Kind::Int, "1"),
    ("steps", Kind::Int, "50"),
    ("cfg_scale", Kind::Float, "7.0"),
    ("distilled_cfg_scale", Kind::Float, "3.5"),
    ("width", Kind::Int, "512"),
    ("height", Kind::Int, "512"),
    ("restore_faces", Kind::Bool, "null"),
    ("tiling", Kind::Bool, "null"),
    ("do_not_save_samples", Kind::Bool, "false"),
    ("do_not_save_grid", Kind::Bool, "false"),
    ("eta", Kind::Float, "null"),
    ("denoising_strength", Kind::Float, "0.75"),
    ("s_min_uncond", Kind::Float, "null"),
    ("s_churn", Kind::Float, "null"),
    ("s_tmax", Kind::Float, "null"),
    ("s_tmin", Kind::Float, "null"),
    ("s_noise", Kind::Float, "null"),
    ("override_settings", Kind::Dict, "null"),
    ("override_settings_restore_afterwards", Kind::Bool, "true"),
    ("refiner_checkpoint", Kind::Str, "null"),
    ("refiner_switch_at", Kind::Float, "null"),
    ("disable_extra_networks", Kind::Bool, "false"),
    ("firstpass_image", Kind::Any, "null"),
    ("comments", Kind::Dict, "null"),
];

/// `StableDiffusionProcessingTxt2Img`'s own fields.
const TXT2IMG: &[Field] = &[
    ("enable_hr", Kind::Bool, "false"),
    ("firstphase_width", Kind::Int, "0"),
    ("firstphase_height", Kind::Int, "0"),
    ("hr_scale", Kind::Float, "2.0"),
    ("hr_upscaler", Kind::Str, "null"),
    ("hr_second_pass_steps", Kind::Int, "0"),
    ("hr_resize_x", Kind::Int, "0"),
    ("hr_resize_y", Kind::Int, "0"),
    ("hr_checkpoint_name", Kind::Str, "null"),
    ("hr_additional_modules", Kind::List, "null"),
    ("hr_sampler_name", Kind::Str, "null"),
    ("hr_scheduler", Kind::Str, "null"),
    ("hr_prompt", Kind::Str, r#""""#),
    ("hr_negative_prompt", Kind::Str, r#""""#),
    ("hr_cfg", Kind::Float, "1.0"),
    ("hr_distilled_cfg", Kind::Float, "3.5"),
];

/// `StableDiffusionProcessingImg2Img`'s own fields.
const IMG2IMG: &[Field] = &[
    ("init_images", Kind::List, "null"),
    ("resize_mode", Kind::Int, "0"),
    ("image_cfg_scale", Kind::Float, "null"),
    ("mask", Kind::Any, "null"),
    ("mask_blur_x", Kind::Int, "4"),
    ("mask_blur_y", Kind::Int, "4"),
    ("mask_blur", Kind::Int, "null"),
    ("mask_round", Kind::Bool, "true"),
    ("inpainting_fill", Kind::Int, "0"),
    ("inpaint_full_res", Kind::Bool, "true"),
    ("inpaint_full_res_padding", Kind::Int, "0"),
    ("inpainting_mask_invert", Kind::Int, "0"),
    ("initial_noise_multiplier", Kind::Float, "null"),
    ("latent_mask", Kind::Any, "null"),
];

/// The fields Forge's API adds to both models.
const API: &[Field] = &[
    ("sampler_index", Kind::Str, r#""Euler""#),
    ("script_name", Kind::Str, "null"),
    ("script_args", Kind::List, "[]"),
    ("send_images", Kind::Bool, "true"),
    ("save_images", Kind::Bool, "false"),
    ("alwayson_scripts", Kind::Dict, "{}"),
    ("force_task_id", Kind::Str, "null"),
    ("infotext", Kind::Str, "null"),
];

/// `img2img` only: whether `parameters` echoes the init images.
const IMG2IMG_API: &[Field] = &[("include_init_images", Kind::Bool, "false")];

fn fields(route: Route) -> impl Iterator<Item = &'static Field> {
    let own: &[Field] = match route {
        Route::Txt2Img => TXT2IMG,
        Route::Img2Img => IMG2IMG,
    };
    let extra: &[Field] = match route {
        Route::Txt2Img => &[],
        Route::Img2Img => IMG2IMG_API,
    };
    COMMON.iter().chain(own).chain(API).chain(extra)
}

/// A validated generation request: every model field present, coerced as
/// pydantic would (an explicit `null` stays `null`).
#[derive(Clone, Debug)]
pub struct GenerationRequest {
    pub route: Route,
    params: Map<String, Value>,
}

impl GenerationRequest {
    /// Validates a decoded body. Errors come one per bad field, in field
    /// order, as FastAPI reports them.
    pub fn validate(route: Route, body: Value) -> Result<GenerationRequest, ApiError> {
        let Value::Object(mut body) = body else {
            return Err(ApiError::validation(json!({
                "type": "model_attributes_type",
                "loc": ["body"],
                "msg": "Input should be a valid dictionary or object to extract fields from",
                "input": body,
            })));
        };
        let mut params = Map::new();
        let mut errors = Vec::new();
        for &(name, kind, default) in fields(route) {
            let value = match body.remove(name) {
                None => serde_json::from_str(default).unwrap_or(Value::Null),
                Some(Value::Null) => Value::Null,
                Some(value) => match coerce(kind, name, value) {
                    Ok(value) => value,
                    Err(mut field_errors) => {
                        errors.append(&mut field_errors);
                        continue;
                    }
                },
            };
            params.insert(name.to_owned(), value);
        }
        if errors.is_empty() {
            Ok(GenerationRequest { route, params })
        } else {
            Err(ApiError::Validation(errors))
        }
    }

    /// The request as Forge echoes it in `parameters`.
    pub fn parameters(&self) -> &Map<String, Value> {
        &self.params
    }

    /// A field's value, or its default when `null` (what the simulation
    /// runs with; Forge would mostly fail on a `null` it needs).
    pub fn get(&self, name: &str) -> Value {
        match self.params.get(name) {
            Some(Value::Null) | None => fields(self.route)
                .find(|field| field.0 == name)
                .and_then(|field| serde_json::from_str(field.2).ok())
                .unwrap_or(Value::Null),
            Some(value) => value.clone(),
        }
    }

    /// Whether the client sent this field with a non-null value.
    pub fn is_set(&self, name: &str) -> bool {
        self.params.get(name).is_some_and(|v| !v.is_null())
    }

    pub fn int(&self, name: &str) -> i64 {
        self.get(name).as_i64().unwrap_or(0)
    }

    pub fn float(&self, name: &str) -> f64 {
        self.get(name).as_f64().unwrap_or(0.0)
    }

    pub fn bool(&self, name: &str) -> bool {
        self.get(name).as_bool().unwrap_or(false)
    }

    pub fn string(&self, name: &str) -> Option<String> {
        self.get(name).as_str().map(str::to_owned)
    }
}

/// One field error in FastAPI's shape.
fn field_error(loc: Value, kind: &str, msg: &str, input: &Value) -> Value {
    json!({ "type": kind, "loc": loc, "msg": msg, "input": input })
}

/// Pydantic v2 lax-mode coercion of one non-null value.
/// Takes the value, so the large ones (init images) are moved, not copied.
fn coerce(kind: Kind, name: &str, value: Value) -> Result<Value, Vec<Value>> {
    let loc = json!(["body", name]);
    let fail = |kind: &str, msg: &str| Err(vec![field_error(loc.clone(), kind, msg, &value)]);
    match kind {
        Kind::Any => Ok(value),
        Kind::Int => match coerce_int(&value) {
            Ok(int) => Ok(int),
            Err((kind, msg)) => fail(kind, msg),
        },
        Kind::Float => match &value {
            Value::Number(_) => Ok(value),
            Value::Bool(b) => Ok(json!(if *b { 1.0 } else { 0.0 })),
            Value::String(s) => match s.trim().parse::<f64>() {
                Ok(f) => Ok(json!(f)),
                Err(_) => fail(
                    "float_parsing",
                    "Input should be a valid number, unable to parse string as a number",
                ),
            },
            _ => fail("float_type", "Input should be a valid number"),
        },
        Kind::Str => match &value {
            Value::String(_) => Ok(value),
            _ => fail("string_type", "Input should be a valid string"),
        },
        Kind::Bool => match coerce_bool(&value) {
            Some(b) => Ok(Value::Bool(b)),
            None if matches!(value, Value::Array(_) | Value::Object(_)) => {
                fail("bool_type", "Input should be a valid boolean")
            }
            None => fail(
                "bool_parsing",
                "Input should be a valid boolean, unable to interpret input",
            ),
        },
        Kind::Dict => match &value {
            Value::Object(_) => Ok(value),
            _ => fail("dict_type", "Input should be a valid dictionary"),
        },
        Kind::List => match &value {
            Value::Array(_) => Ok(value),
            _ => fail("list_type", "Input should be a valid list"),
        },
        Kind::ListOfStr => match &value {
            Value::Array(items) => {
                let errors: Vec<Value> = items
                    .iter()
                    .enumerate()
                    .filter(|(_, item)| !item.is_string())
                    .map(|(i, item)| {
                        field_error(
                            json!(["body", name, i]),
                            "string_type",
                            "Input should be a valid string",
                            item,
                        )
                    })
                    .collect();
                if errors.is_empty() {
                    Ok(value)
                } else {
                    Err(errors)
                }
            }
            _ => fail("list_type", "Input should be a valid list"),
        },
    }
}

fn coerce_int(value: &Value) -> Result<Value, (&'static str, &'static str)> {
    const FRACTION: (&str, &str) = (
        "int_from_float",
        "Input should be a valid integer, got a number with a fractional part",
    );
    match value {
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(value.clone()),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.is_finite() && f.fract() == 0.0 => Ok(json!(f as i64)),
            Some(f) if !f.is_finite() => Err(("finite_number", "Input should be a finite number")),
            _ => Err(FRACTION),
        },
        Value::Bool(b) => Ok(json!(i64::from(*b))),
        Value::String(s) => parse_int_str(s.trim()).map(|i| json!(i)).ok_or((
            "int_parsing",
            "Input should be a valid integer, unable to parse string as an integer",
        )),
        _ => Err(("int_type", "Input should be a valid integer")),
    }
}

/// `"20"`, `"+20"` and `"20.000"` are integers to pydantic; `"20.5"` is not.
fn parse_int_str(s: &str) -> Option<i64> {
    if let Ok(i) = s.parse::<i64>() {
        return Some(i);
    }
    let (whole, fraction) = s.split_once('.')?;
    if fraction.chars().all(|c| c == '0') && !whole.is_empty() && !whole.ends_with(['+', '-']) {
        whole.parse().ok()
    } else {
        None
    }
}

fn coerce_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => {
            let f = n.as_f64()?;
            if f == 0.0 {
                Some(false)
            } else if f == 1.0 {
                Some(true)
            } else {
                None
            }
        }
        Value::String(s) => {
            let lower = s.to_ascii_lowercase();
            match lower.as_str() {
                "0" | "off" | "f" | "false" | "n" | "no" => Some(false),
                "1" | "on" | "t" | "true" | "y" | "yes" => Some(true),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(route: Route, body: Value) -> Value {
        match GenerationRequest::validate(route, body) {
            Err(ApiError::Validation(errors)) => json!(errors),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_forges() {
        let request = GenerationRequest::validate(Route::Txt2Img, json!({})).unwrap();
        assert_eq!(request.int("steps"), 50);
        assert_eq!(request.int("width"), 512);
        assert_eq!(request.float("cfg_scale"), 7.0);
        assert!(request.bool("send_images"));
        assert!(request.bool("override_settings_restore_afterwards"));
        assert_eq!(request.parameters()["sampler_index"], "Euler");
        assert!(!request.parameters().contains_key("init_images"));
    }

    #[test]
    fn numeric_strings_are_accepted_for_ints() {
        let request = GenerationRequest::validate(
            Route::Txt2Img,
            json!({"steps": "20", "width": " 768 ", "height": "640.0"}),
        )
        .unwrap();
        assert_eq!(request.parameters()["steps"], json!(20));
        assert_eq!(request.int("width"), 768);
        assert_eq!(request.int("height"), 640);
    }

    #[test]
    fn bad_int_string_is_int_parsing() {
        assert_eq!(
            errors(Route::Txt2Img, json!({"steps": "many"})),
            json!([{"type": "int_parsing", "loc": ["body", "steps"],
                    "msg": "Input should be a valid integer, unable to parse string as an integer",
                    "input": "many"}])
        );
    }

    #[test]
    fn fractional_float_is_int_from_float_and_whole_float_is_fine() {
        assert_eq!(
            errors(Route::Txt2Img, json!({"width": 512.5}))[0]["type"],
            "int_from_float"
        );
        let request = GenerationRequest::validate(Route::Txt2Img, json!({"width": 512.0})).unwrap();
        assert_eq!(request.parameters()["width"], json!(512));
    }

    #[test]
    fn one_error_per_bad_field_in_field_order() {
        let errors = errors(
            Route::Txt2Img,
            json!({
                "send_images": "maybe", "steps": [1], "prompt": 5, "cfg_scale": "high",
                "override_settings": [], "enable_hr": {}, "hr_scale": [], "batch_size": 1
            }),
        );
        let summary: Vec<(String, String)> = errors
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["loc"][1].as_str().unwrap().to_owned(),
                    e["type"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let expected = [
            ("prompt", "string_type"),
            ("steps", "int_type"),
            ("cfg_scale", "float_parsing"),
            ("override_settings", "dict_type"),
            ("enable_hr", "bool_type"),
            ("hr_scale", "float_type"),
            ("send_images", "bool_parsing"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(summary, expected);
    }

    #[test]
    fn null_is_accepted_everywhere_and_echoed() {
        let request = GenerationRequest::validate(
            Route::Img2Img,
            json!({"steps": null, "init_images": null}),
        )
        .unwrap();
        assert_eq!(request.parameters()["steps"], json!(null));
        assert_eq!(request.int("steps"), 50);
        assert!(!request.is_set("init_images"));
    }

    #[test]
    fn init_images_must_be_a_list() {
        assert_eq!(
            errors(Route::Img2Img, json!({"init_images": "abc"}))[0],
            json!({"type": "list_type", "loc": ["body", "init_images"],
                   "msg": "Input should be a valid list", "input": "abc"})
        );
    }

    #[test]
    fn styles_elements_must_be_strings() {
        assert_eq!(
            errors(Route::Txt2Img, json!({"styles": ["a", 1]}))[0]["loc"],
            json!(["body", "styles", 1])
        );
    }

    #[test]
    fn non_object_is_model_attributes_type_with_the_input() {
        assert_eq!(
            errors(Route::Txt2Img, json!([1, 2])),
            json!([{"type": "model_attributes_type", "loc": ["body"],
                    "msg": "Input should be a valid dictionary or object to extract fields from",
                    "input": [1, 2]}])
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let request = GenerationRequest::validate(Route::Txt2Img, json!({"nonsense": 1})).unwrap();
        assert!(!request.parameters().contains_key("nonsense"));
    }

    #[test]
    fn bools_accept_pydantic_spellings() {
        let request = GenerationRequest::validate(
            Route::Txt2Img,
            json!({"send_images": "no", "save_images": 1, "enable_hr": "YES"}),
        )
        .unwrap();
        assert!(!request.bool("send_images"));
        assert!(request.bool("save_images"));
        assert!(request.bool("enable_hr"));
        assert_eq!(
            errors(Route::Txt2Img, json!({"enable_hr": 2}))[0]["type"],
            "bool_parsing"
        );
    }
}
