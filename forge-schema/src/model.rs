//! Forge's txt2img / img2img API models (`modules/api/models.py`), and pydantic v2's lax
//! coercion of a JSON value for each field type.
//!
//! Forge builds the models from the processing classes' signatures with every field
//! `Optional` (`PydanticModelGenerator.field_type_generator`), so `null` is accepted for
//! every field; unknown fields are ignored. A bad value gets a 422 listing each bad field;
//! a bad value holding `NaN` or an infinity cannot be written into that 422 (Starlette's
//! `JSONResponse` uses `allow_nan=False`), so Forge answers 500 instead.

use serde_json::{json, Value};

use crate::body::NonFinite;

/// The type a field validates as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Int,
    Float,
    Str,
    Bool,
    Dict,
    List,
    ListOfStr,
    Any,
}

/// A model field: its name, type and default (as JSON text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    pub default: &'static str,
}

const fn f(name: &'static str, kind: Kind, default: &'static str) -> Field {
    Field {
        name,
        kind,
        default,
    }
}

/// Which generation model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenerationRoute {
    Txt2Img,
    Img2Img,
}

impl GenerationRoute {
    pub fn as_str(self) -> &'static str {
        match self {
            GenerationRoute::Txt2Img => "txt2img",
            GenerationRoute::Img2Img => "img2img",
        }
    }

    /// The route of a path Forge serves a generation on (`/sdapi/v1/txt2img`).
    pub fn of_path(path: &str) -> Option<GenerationRoute> {
        match path {
            crate::path::TXT2IMG => Some(GenerationRoute::Txt2Img),
            crate::path::IMG2IMG => Some(GenerationRoute::Img2Img),
            _ => None,
        }
    }
}

/// `StableDiffusionProcessing`'s API fields, in declaration order.
const COMMON: &[Field] = &[
    f("prompt", Kind::Str, r#""""#),
    f("negative_prompt", Kind::Str, r#""""#),
    f("styles", Kind::ListOfStr, "null"),
    f("seed", Kind::Int, "-1"),
    f("subseed", Kind::Int, "-1"),
    f("subseed_strength", Kind::Float, "0"),
    f("seed_resize_from_h", Kind::Int, "-1"),
    f("seed_resize_from_w", Kind::Int, "-1"),
    f("sampler_name", Kind::Str, "null"),
    f("scheduler", Kind::Str, "null"),
    f("batch_size", Kind::Int, "1"),
    f("n_iter", Kind::Int, "1"),
    f("steps", Kind::Int, "50"),
    f("cfg_scale", Kind::Float, "7.0"),
    f("distilled_cfg_scale", Kind::Float, "3.5"),
    f("width", Kind::Int, "512"),
    f("height", Kind::Int, "512"),
    f("restore_faces", Kind::Bool, "null"),
    f("tiling", Kind::Bool, "null"),
    f("do_not_save_samples", Kind::Bool, "false"),
    f("do_not_save_grid", Kind::Bool, "false"),
    f("eta", Kind::Float, "null"),
    f("denoising_strength", Kind::Float, "0.75"),
    f("s_min_uncond", Kind::Float, "null"),
    f("s_churn", Kind::Float, "null"),
    f("s_tmax", Kind::Float, "null"),
    f("s_tmin", Kind::Float, "null"),
    f("s_noise", Kind::Float, "null"),
    f("override_settings", Kind::Dict, "null"),
    f("override_settings_restore_afterwards", Kind::Bool, "true"),
    f("refiner_checkpoint", Kind::Str, "null"),
    f("refiner_switch_at", Kind::Float, "null"),
    f("disable_extra_networks", Kind::Bool, "false"),
    f("firstpass_image", Kind::Any, "null"),
    f("comments", Kind::Dict, "null"),
];

/// `StableDiffusionProcessingTxt2Img`'s own fields.
const TXT2IMG: &[Field] = &[
    f("enable_hr", Kind::Bool, "false"),
    f("firstphase_width", Kind::Int, "0"),
    f("firstphase_height", Kind::Int, "0"),
    f("hr_scale", Kind::Float, "2.0"),
    f("hr_upscaler", Kind::Str, "null"),
    f("hr_second_pass_steps", Kind::Int, "0"),
    f("hr_resize_x", Kind::Int, "0"),
    f("hr_resize_y", Kind::Int, "0"),
    f("hr_checkpoint_name", Kind::Str, "null"),
    f("hr_additional_modules", Kind::List, "null"),
    f("hr_sampler_name", Kind::Str, "null"),
    f("hr_scheduler", Kind::Str, "null"),
    f("hr_prompt", Kind::Str, r#""""#),
    f("hr_negative_prompt", Kind::Str, r#""""#),
    f("hr_cfg", Kind::Float, "1.0"),
    f("hr_distilled_cfg", Kind::Float, "3.5"),
];

/// `StableDiffusionProcessingImg2Img`'s own fields.
const IMG2IMG: &[Field] = &[
    f("init_images", Kind::List, "null"),
    f("resize_mode", Kind::Int, "0"),
    f("image_cfg_scale", Kind::Float, "null"),
    f("mask", Kind::Any, "null"),
    f("mask_blur_x", Kind::Int, "4"),
    f("mask_blur_y", Kind::Int, "4"),
    f("mask_blur", Kind::Int, "null"),
    f("mask_round", Kind::Bool, "true"),
    f("inpainting_fill", Kind::Int, "0"),
    f("inpaint_full_res", Kind::Bool, "true"),
    f("inpaint_full_res_padding", Kind::Int, "0"),
    f("inpainting_mask_invert", Kind::Int, "0"),
    f("initial_noise_multiplier", Kind::Float, "null"),
    f("latent_mask", Kind::Any, "null"),
];

/// The fields Forge's API adds to both models.
const API: &[Field] = &[
    f("sampler_index", Kind::Str, r#""Euler""#),
    f("script_name", Kind::Str, "null"),
    f("script_args", Kind::List, "[]"),
    f("send_images", Kind::Bool, "true"),
    f("save_images", Kind::Bool, "false"),
    f("alwayson_scripts", Kind::Dict, "{}"),
    f("force_task_id", Kind::Str, "null"),
    f("infotext", Kind::Str, "null"),
];

/// `img2img` only: whether `parameters` echoes the init images.
const IMG2IMG_API: &[Field] = &[f("include_init_images", Kind::Bool, "false")];

/// The fields of a generation model, in the order pydantic validates (and reports) them.
pub fn generation_fields(route: GenerationRoute) -> impl Iterator<Item = &'static Field> {
    let (own, extra): (&[Field], &[Field]) = match route {
        GenerationRoute::Txt2Img => (TXT2IMG, &[]),
        GenerationRoute::Img2Img => (IMG2IMG, IMG2IMG_API),
    };
    COMMON.iter().chain(own).chain(API).chain(extra)
}

/// One field of a generation model by name.
pub fn generation_field(route: GenerationRoute, name: &str) -> Option<&'static Field> {
    generation_fields(route).find(|field| field.name == name)
}

/// One bad value, as pydantic reports it: where below the field (an item index, or
/// nothing), the error type and message, and the input.
#[derive(Clone, Debug, PartialEq)]
pub struct Invalid {
    pub item: Option<usize>,
    pub kind: &'static str,
    pub msg: &'static str,
    pub input: Value,
}

impl Invalid {
    fn new(kind: &'static str, msg: &'static str, input: &Value) -> Self {
        Invalid {
            item: None,
            kind,
            msg,
            input: input.clone(),
        }
    }
}

/// Pydantic v2's lax-mode coercion of one non-null value. Takes the value, so the large ones
/// (init images) are moved, not copied.
pub fn coerce(kind: Kind, value: Value) -> Result<Value, Vec<Invalid>> {
    let fail = |kind: &'static str, msg: &'static str| Err(vec![Invalid::new(kind, msg, &value)]);
    match kind {
        Kind::Any => Ok(value),
        Kind::Int => match coerce_int(&value) {
            Ok(int) => Ok(int),
            Err((kind, msg)) => fail(kind, msg),
        },
        Kind::Float => match &value {
            Value::Number(_) => Ok(value),
            Value::Bool(b) => Ok(json!(if *b { 1.0 } else { 0.0 })),
            Value::String(s) => match parse_float_str(s.trim()) {
                Some(f) => Ok(json!(f)),
                None => fail(
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
                let errors: Vec<Invalid> = items
                    .iter()
                    .enumerate()
                    .filter(|(_, item)| !item.is_string())
                    .map(|(i, item)| Invalid {
                        item: Some(i),
                        ..Invalid::new("string_type", "Input should be a valid string", item)
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

/// Largest float pydantic turns into an int: beyond `i64` it answers `int_parsing_size`.
const I64_LIMIT: f64 = 9_223_372_036_854_775_808.0;

fn coerce_int(value: &Value) -> Result<Value, (&'static str, &'static str)> {
    const FRACTION: (&str, &str) = (
        "int_from_float",
        "Input should be a valid integer, got a number with a fractional part",
    );
    const PARSING: (&str, &str) = (
        "int_parsing",
        "Input should be a valid integer, unable to parse string as an integer",
    );
    match value {
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(value.clone()),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < I64_LIMIT => {
                Ok(json!(f as i64))
            }
            Some(f) if f.is_finite() && f.fract() == 0.0 => Err((
                "int_parsing_size",
                "Unable to parse input string as an integer, exceeded maximum size",
            )),
            Some(f) if !f.is_finite() => Err(("finite_number", "Input should be a finite number")),
            _ => Err(FRACTION),
        },
        Value::Bool(b) => Ok(json!(i64::from(*b))),
        Value::String(s) => parse_int_str(s.trim()).map(|i| json!(i)).ok_or(PARSING),
        _ => Err(("int_type", "Input should be a valid integer")),
    }
}

/// `"20"`, `"+20"`, `"2_0"` and `"20.000"` are integers to pydantic; `"20.5"` is not.
fn parse_int_str(s: &str) -> Option<i64> {
    let s = without_underscores(s)?;
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

/// A number as Python writes one, `_` allowed between digits (`"1_0.5"`), and `"nan"`,
/// `"inf"`, `"-Infinity"` in any case (pydantic's floats allow them; Forge echoes them as
/// `null`).
fn parse_float_str(s: &str) -> Option<f64> {
    without_underscores(s)?.parse().ok()
}

/// Python's numeric literals take single underscores between digits only.
fn without_underscores(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'_' {
            let digit = |j: Option<&u8>| j.is_some_and(u8::is_ascii_digit);
            if !digit(i.checked_sub(1).and_then(|j| bytes.get(j))) || !digit(bytes.get(i + 1)) {
                return None;
            }
        }
    }
    Some(s.replace('_', ""))
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
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "0" | "off" | "f" | "false" | "n" | "no" => Some(false),
            "1" | "on" | "t" | "true" | "y" | "yes" => Some(true),
            _ => None,
        },
        _ => None,
    }
}

/// Why Forge refuses one member of a generation body.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// A 422 entry (or several, for the items of a list).
    Invalid(Vec<Invalid>),
    /// The value is wrong and holds `NaN` or an infinity: the 422 that would list it cannot
    /// be written, and Forge answers 500 `ValueError: Out of range float values are not JSON
    /// compliant` instead.
    NotSerializable,
}

/// The message of Forge's 500 for a [`Refusal::NotSerializable`].
pub const NOT_SERIALIZABLE: &str = "Out of range float values are not JSON compliant";

/// One member of a generation body as Forge's model validates it: the value it runs with
/// (`NaN` and the infinities as `null`, as Forge echoes them), or why it refuses it.
/// `non_finite` says where the member held such numbers ([`crate::body::to_value`]).
pub fn validate_member(kind: Kind, value: Value, non_finite: NonFinite) -> Result<Value, Refusal> {
    match non_finite {
        NonFinite::None if value.is_null() => Ok(Value::Null),
        NonFinite::None => coerce(kind, value).map_err(Refusal::Invalid),
        // pydantic's floats allow NaN and the infinities; the containers hold any value.
        NonFinite::Itself if matches!(kind, Kind::Float | Kind::Any) => Ok(value),
        NonFinite::Inside if matches!(kind, Kind::Dict | Kind::List | Kind::Any) => Ok(value),
        NonFinite::Itself | NonFinite::Inside => Err(Refusal::NotSerializable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(value: Value) -> Result<Value, &'static str> {
        coerce(Kind::Int, value).map_err(|errors| errors[0].kind)
    }

    #[test]
    fn ints_take_whole_floats_numeric_strings_and_bools_as_pydantic_does() {
        assert_eq!(int(json!(64)), Ok(json!(64)));
        assert_eq!(int(json!(64.0)), Ok(json!(64)));
        assert_eq!(int(json!(" 64 ")), Ok(json!(64)));
        assert_eq!(int(json!("6_4")), Ok(json!(64)));
        assert_eq!(int(json!("64.000")), Ok(json!(64)));
        assert_eq!(int(json!(true)), Ok(json!(1)));
        assert_eq!(int(json!(4.6e18)), Ok(json!(4_600_000_000_000_000_000_i64)));
    }

    #[test]
    fn ints_refuse_fractions_huge_floats_and_other_types() {
        assert_eq!(int(json!(1.5)), Err("int_from_float"));
        assert_eq!(int(json!(1e19)), Err("int_parsing_size"));
        assert_eq!(int(json!(1e308)), Err("int_parsing_size"));
        assert_eq!(int(json!("64.5")), Err("int_parsing"));
        assert_eq!(int(json!("6__4")), Err("int_parsing"));
        assert_eq!(int(json!("_64")), Err("int_parsing"));
        assert_eq!(int(json!([64])), Err("int_type"));
    }

    #[test]
    fn floats_take_numeric_strings_underscores_and_non_finite_spellings() {
        assert_eq!(coerce(Kind::Float, json!("1_0.5")), Ok(json!(10.5)));
        assert_eq!(coerce(Kind::Float, json!("nan")), Ok(Value::Null));
        assert_eq!(coerce(Kind::Float, json!("-Infinity")), Ok(Value::Null));
        assert_eq!(
            coerce(Kind::Float, json!("ten")).unwrap_err()[0].kind,
            "float_parsing"
        );
    }

    #[test]
    fn bools_take_pydantics_spellings() {
        for (value, expected) in [
            (json!("yes"), true),
            (json!("OFF"), false),
            (json!(1), true),
            (json!(0.0), false),
        ] {
            assert_eq!(coerce(Kind::Bool, value), Ok(json!(expected)));
        }
        assert_eq!(
            coerce(Kind::Bool, json!("maybe")).unwrap_err()[0].kind,
            "bool_parsing"
        );
        assert_eq!(
            coerce(Kind::Bool, json!([])).unwrap_err()[0].kind,
            "bool_type"
        );
    }

    #[test]
    fn strings_are_not_coerced_from_numbers() {
        assert_eq!(
            coerce(Kind::Str, json!(5)).unwrap_err()[0].kind,
            "string_type"
        );
        let errors = coerce(Kind::ListOfStr, json!(["a", 1, "b", null])).unwrap_err();
        assert_eq!(
            errors.iter().map(|e| e.item).collect::<Vec<_>>(),
            [Some(1), Some(3)]
        );
    }

    #[test]
    fn non_finite_values_pass_in_floats_and_containers_and_are_a_500_elsewhere() {
        use NonFinite::*;
        assert_eq!(
            validate_member(Kind::Float, Value::Null, Itself),
            Ok(Value::Null)
        );
        assert_eq!(
            validate_member(Kind::Dict, json!({"a": null}), Inside),
            Ok(json!({"a": null}))
        );
        assert_eq!(
            validate_member(Kind::Int, Value::Null, Itself),
            Err(Refusal::NotSerializable)
        );
        assert_eq!(
            validate_member(Kind::ListOfStr, json!([null]), Inside),
            Err(Refusal::NotSerializable)
        );
        assert_eq!(
            validate_member(Kind::Float, json!([null]), Inside),
            Err(Refusal::NotSerializable)
        );
        assert_eq!(
            validate_member(Kind::Int, Value::Null, None),
            Ok(Value::Null)
        );
    }

    #[test]
    fn both_models_list_their_own_fields() {
        let txt2img: Vec<&str> = generation_fields(GenerationRoute::Txt2Img)
            .map(|f| f.name)
            .collect();
        assert!(txt2img.contains(&"enable_hr") && !txt2img.contains(&"init_images"));
        let img2img: Vec<&str> = generation_fields(GenerationRoute::Img2Img)
            .map(|f| f.name)
            .collect();
        assert!(img2img.contains(&"init_images") && !img2img.contains(&"enable_hr"));
        assert_eq!(img2img.last(), Some(&"include_init_images"));
        assert_eq!(
            generation_field(GenerationRoute::Txt2Img, "width").map(|f| f.kind),
            Some(Kind::Int)
        );
    }
}
