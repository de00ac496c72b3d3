//! The body of `txt2img` / `img2img` as Forge's pydantic v2 models see it:
//! every field Optional, lax coercion (`"20"` is an int), one 422 entry per
//! bad field, unknown fields ignored, defaults as in Forge's API models.

use forge_schema::body::NonFinite;
use forge_schema::model::{self, Field, Invalid, Kind, Refusal};
use serde_json::{json, Map, Value};

use crate::error::ApiError;

/// Which generation endpoint (the model's fields are `forge_schema`'s, shared with the proxy).
pub use forge_schema::model::GenerationRoute as Route;

fn fields(route: Route) -> impl Iterator<Item = &'static Field> {
    model::generation_fields(route)
}

/// A validated generation request: every model field present, coerced as
/// pydantic would (an explicit `null` stays `null`).
#[derive(Clone, Debug)]
pub struct GenerationRequest {
    pub route: Route,
    params: Map<String, Value>,
}

impl GenerationRequest {
    /// Validates a body of finite numbers (see [`GenerationRequest::validate_decoded`]).
    #[cfg(test)]
    pub fn validate(route: Route, body: Value) -> Result<GenerationRequest, ApiError> {
        Self::validate_decoded(route, body, &[])
    }

    /// Validates a decoded body. Errors come one per bad field, in field order, as FastAPI
    /// reports them; a bad value holding `NaN` or an infinity makes the whole answer Forge's
    /// 500 instead (`non_finite`: the members that hold one, from [`crate::body::decode`]).
    pub fn validate_decoded(
        route: Route,
        body: Value,
        non_finite: &[(String, NonFinite)],
    ) -> Result<GenerationRequest, ApiError> {
        let Value::Object(mut body) = body else {
            if !non_finite.is_empty() {
                return Err(not_serializable());
            }
            return Err(ApiError::validation(json!({
                "type": "model_attributes_type",
                "loc": ["body"],
                "msg": "Input should be a valid dictionary or object to extract fields from",
                "input": body,
                "url": error_url("model_attributes_type"),
            })));
        };
        let mut params = Map::new();
        let mut errors = Vec::new();
        let mut unserializable = false;
        for field in fields(route) {
            let name = field.name;
            let value = match body.remove(name) {
                None => serde_json::from_str(field.default).unwrap_or(Value::Null),
                Some(value) => {
                    let where_non_finite = non_finite
                        .iter()
                        .find(|(member, _)| member == name)
                        .map_or(NonFinite::None, |(_, how)| *how);
                    match model::validate_member(field.kind, value, where_non_finite) {
                        Ok(value) => value,
                        Err(Refusal::Invalid(invalid)) => {
                            errors.extend(invalid.iter().map(|i| member_error(name, i)));
                            continue;
                        }
                        Err(Refusal::NotSerializable) => {
                            unserializable = true;
                            continue;
                        }
                    }
                }
            };
            params.insert(name.to_owned(), value);
        }
        if unserializable {
            Err(not_serializable())
        } else if errors.is_empty() {
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
                .find(|field| field.name == name)
                .and_then(|field| serde_json::from_str(field.default).ok())
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

/// The pydantic version of Forge's environment (2.8.2): every error pydantic
/// itself reports links to its documentation under this prefix.
const PYDANTIC_ERRORS_URL: &str = "https://errors.pydantic.dev/2.8/v/";

/// One field error in FastAPI's shape, with pydantic's documentation link.
fn field_error(loc: Value, kind: &str, msg: &str, input: &Value) -> Value {
    json!({ "type": kind, "loc": loc, "msg": msg, "input": input, "url": error_url(kind) })
}

/// `https://errors.pydantic.dev/2.8/v/<type>`.
fn error_url(kind: &str) -> String {
    format!("{PYDANTIC_ERRORS_URL}{kind}")
}

/// Adds pydantic's `url` to the entries of a 422 that pydantic made (e.g. the
/// `missing` of an empty body). `json_invalid` is FastAPI's own and has none
/// (fastapi/routing.py `get_request_handler` builds it without one).
pub fn with_pydantic_urls(error: ApiError) -> ApiError {
    match error {
        ApiError::Validation(mut errors) => {
            for entry in &mut errors {
                let Value::Object(entry) = entry else {
                    continue;
                };
                let kind = entry.get("type").and_then(Value::as_str).unwrap_or("");
                if kind != "json_invalid" && !entry.contains_key("url") {
                    let url = error_url(kind);
                    entry.insert("url".into(), json!(url));
                }
            }
            ApiError::Validation(errors)
        }
        other => other,
    }
}

/// A 422 entry for one bad value of member `name`.
fn member_error(name: &str, invalid: &Invalid) -> Value {
    let loc = match invalid.item {
        Some(item) => json!(["body", name, item]),
        None => json!(["body", name]),
    };
    field_error(loc, invalid.kind, invalid.msg, &invalid.input)
}

/// Forge's answer when the 422 it makes holds `NaN` or an infinity: Starlette's
/// `JSONResponse` refuses to write it, and the exception handler answers 500.
fn not_serializable() -> ApiError {
    ApiError::Exception {
        error: "ValueError",
        message: model::NOT_SERIALIZABLE.into(),
    }
}

/// Pydantic's coercion of one value of member `name`, its errors as 422 entries.
fn coerce(kind: Kind, name: &str, value: Value) -> Result<Value, Vec<Value>> {
    model::coerce(kind, value)
        .map_err(|invalid| invalid.iter().map(|i| member_error(name, i)).collect())
}

/// A field of one of Forge's other request models (`PNGInfoRequest`,
/// `InterrogateRequest`, `ExtrasSingleImageRequest` in modules/api/models.py):
/// unlike the generation models these are not Optional, so `null` fails like
/// any other wrong type, and some carry pydantic constraints.
#[derive(Clone, Copy, Debug)]
pub struct ModelField {
    name: &'static str,
    kind: Kind,
    /// The default as JSON text, `None` for a required field. Defaults are not
    /// validated (`Field(default=2)` on a float stays the int `2`).
    default: Option<&'static str>,
    check: Check,
}

/// The constraint of a [`ModelField`], checked after its type.
#[derive(Clone, Copy, Debug)]
enum Check {
    None,
    /// `Literal[0, 1]`: exactly one of these ints (no `1.0`, `"1"` or `true`).
    Literal(&'static [i64]),
    /// `Field(ge=.., le=.., allow_inf_nan=False)` on a float.
    Range(f64, f64),
    /// `Field(gt=..)` on a float.
    Above(f64),
    /// `Field(ge=..)` on an int.
    AtLeast(i64),
}

const fn field(name: &'static str, kind: Kind, default: Option<&'static str>) -> ModelField {
    ModelField {
        name,
        kind,
        default,
        check: Check::None,
    }
}

const fn checked(
    name: &'static str,
    kind: Kind,
    default: &'static str,
    check: Check,
) -> ModelField {
    ModelField {
        name,
        kind,
        default: Some(default),
        check,
    }
}

/// `PNGInfoRequest`: `image: str` (required).
pub const PNG_INFO: &[ModelField] = &[field("image", Kind::Str, None)];

/// `InterrogateRequest`.
pub const INTERROGATE: &[ModelField] = &[
    field("image", Kind::Str, Some(r#""""#)),
    field("model", Kind::Str, Some(r#""clip""#)),
];

/// `ExtrasSingleImageRequest`: `ExtrasBaseRequest`'s fields, then `image`.
pub const EXTRAS_SINGLE_IMAGE: &[ModelField] = &[
    checked("resize_mode", Kind::Int, "0", Check::Literal(&[0, 1])),
    field("show_extras_results", Kind::Bool, Some("true")),
    checked(
        "gfpgan_visibility",
        Kind::Float,
        "0",
        Check::Range(0.0, 1.0),
    ),
    checked(
        "codeformer_visibility",
        Kind::Float,
        "0",
        Check::Range(0.0, 1.0),
    ),
    checked(
        "codeformer_weight",
        Kind::Float,
        "0",
        Check::Range(0.0, 1.0),
    ),
    checked("upscaling_resize", Kind::Float, "2", Check::Above(0.0)),
    checked("upscaling_resize_w", Kind::Int, "512", Check::AtLeast(1)),
    checked("upscaling_resize_h", Kind::Int, "512", Check::AtLeast(1)),
    field("upscaling_crop", Kind::Bool, Some("true")),
    field("upscaler_1", Kind::Str, Some(r#""None""#)),
    field("upscaler_2", Kind::Str, Some(r#""None""#)),
    checked(
        "extras_upscaler_2_visibility",
        Kind::Float,
        "0",
        Check::Range(0.0, 1.0),
    ),
    field("upscale_first", Kind::Bool, Some("false")),
    field("image", Kind::Str, Some(r#""""#)),
];

/// Validates a decoded body against one of the models above, as pydantic v2
/// does: one error per bad field in field order, unknown fields ignored.
pub fn validate_model(fields: &[ModelField], body: Value) -> Result<Map<String, Value>, ApiError> {
    let Value::Object(mut body) = body else {
        return Err(ApiError::validation(json!({
            "type": "model_attributes_type",
            "loc": ["body"],
            "msg": "Input should be a valid dictionary or object to extract fields from",
            "input": body,
            "url": error_url("model_attributes_type"),
        })));
    };
    let mut values = Map::new();
    let mut errors = Vec::new();
    for field in fields {
        let Some(value) = body.remove(field.name) else {
            match field.default {
                Some(default) => {
                    values.insert(
                        field.name.into(),
                        serde_json::from_str(default).unwrap_or(Value::Null),
                    );
                }
                None => {
                    let input = Value::Object(body.clone());
                    errors.push(field_error(
                        json!(["body", field.name]),
                        "missing",
                        "Field required",
                        &input,
                    ));
                }
            }
            continue;
        };
        match check_model_field(field, value) {
            Ok(value) => {
                values.insert(field.name.into(), value);
            }
            Err(error) => errors.push(error),
        }
    }
    if errors.is_empty() {
        Ok(values)
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// One value of a [`ModelField`]: its type (where `null` is wrong too), then
/// its constraint, reported with pydantic's `ctx`.
fn check_model_field(field: &ModelField, value: Value) -> Result<Value, Value> {
    let loc = json!(["body", field.name]);
    if let Check::Literal(allowed) = field.check {
        let fits =
            matches!(&value, Value::Number(n) if n.as_i64().is_some_and(|i| allowed.contains(&i)));
        if fits {
            return Ok(value);
        }
        let expected = allowed
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(" or ");
        let mut error = field_error(
            loc,
            "literal_error",
            &format!("Input should be {expected}"),
            &value,
        );
        insert_ctx(&mut error, json!({ "expected": expected }));
        return Err(error);
    }
    let null_error = match field.kind {
        Kind::Int => Some(("int_type", "Input should be a valid integer")),
        Kind::Float => Some(("float_type", "Input should be a valid number")),
        Kind::Str => Some(("string_type", "Input should be a valid string")),
        Kind::Bool => Some(("bool_type", "Input should be a valid boolean")),
        _ => None,
    };
    if value.is_null() {
        if let Some((kind, msg)) = null_error {
            return Err(field_error(loc, kind, msg, &value));
        }
    }
    let input = value.clone();
    let coerced = coerce(field.kind, field.name, value).map_err(|mut errors| errors.remove(0))?;
    let number = coerced.as_f64().unwrap_or(0.0);
    let violated = match field.check {
        Check::Range(ge, _) if number < ge => Some((
            "greater_than_equal",
            "greater than or equal to",
            "ge",
            json!(ge),
        )),
        Check::Range(_, le) if number > le => {
            Some(("less_than_equal", "less than or equal to", "le", json!(le)))
        }
        Check::Above(gt) if number <= gt => Some(("greater_than", "greater than", "gt", json!(gt))),
        Check::AtLeast(ge) if number < ge as f64 => Some((
            "greater_than_equal",
            "greater than or equal to",
            "ge",
            json!(ge),
        )),
        _ => None,
    };
    let Some((kind, relation, key, limit)) = violated else {
        // Floats come out as Python floats: `2` sent is `2.0`.
        return Ok(match field.kind {
            Kind::Float => json!(number),
            _ => coerced,
        });
    };
    let limit_text = match limit.as_f64() {
        Some(f) if f.fract() == 0.0 => format!("{}", f as i64),
        Some(f) => f.to_string(),
        None => limit.to_string(),
    };
    let mut error = field_error(
        loc,
        kind,
        &format!("Input should be {relation} {limit_text}"),
        &input,
    );
    insert_ctx(&mut error, json!({ key: limit }));
    Err(error)
}

/// Puts `ctx` before `url`, where pydantic writes it.
fn insert_ctx(error: &mut Value, ctx: Value) {
    if let Value::Object(map) = error {
        let url = map.shift_remove("url");
        map.insert("ctx".into(), ctx);
        if let Some(url) = url {
            map.insert("url".into(), url);
        }
    }
}

/// `GET /sdapi/v1/progress?skip_current_image=...`: pydantic's bool from a
/// query string (the last one given wins, as in Starlette's `QueryParams`).
pub fn query_bool(name: &str, value: Option<&str>) -> Result<bool, ApiError> {
    let Some(text) = value else {
        return Ok(false);
    };
    match model::coerce(Kind::Bool, json!(text)) {
        Ok(Value::Bool(value)) => Ok(value),
        _ => Err(ApiError::validation(field_error(
            json!(["query", name]),
            "bool_parsing",
            "Input should be a valid boolean, unable to interpret input",
            &json!(text),
        ))),
    }
}

/// The JSON schema of a generation model for `/openapi.json`, as FastAPI
/// writes a pydantic model of Optional fields.
pub fn openapi_schema(route: Route, title: &str) -> Value {
    let properties: Map<String, Value> = fields(route)
        .map(
            |&Field {
                 name,
                 kind,
                 default,
             }| {
                let mut property = Map::new();
                property.insert(
                    "anyOf".into(),
                    json!([json_schema_type(kind), {"type": "null"}]),
                );
                property.insert("title".into(), json!(title_case(name)));
                let default: Value = serde_json::from_str(default).unwrap_or(Value::Null);
                if !default.is_null() {
                    property.insert("default".into(), default);
                }
                (name.to_owned(), Value::Object(property))
            },
        )
        .collect();
    json!({ "properties": properties, "type": "object", "title": title })
}

/// The JSON schema of a [`ModelField`] model.
pub fn openapi_model_schema(fields: &[ModelField], title: &str) -> Value {
    let mut required = Vec::new();
    let properties: Map<String, Value> = fields
        .iter()
        .map(|field| {
            let mut property = match (field.check, json_schema_type(field.kind)) {
                (Check::Literal(allowed), _) => json!({"type": "integer", "enum": allowed}),
                (_, other) => other,
            };
            if let Value::Object(map) = &mut property {
                match field.check {
                    Check::Range(ge, le) => {
                        map.insert("maximum".into(), json!(le));
                        map.insert("minimum".into(), json!(ge));
                    }
                    Check::Above(gt) => {
                        map.insert("exclusiveMinimum".into(), json!(gt));
                    }
                    Check::AtLeast(ge) => {
                        map.insert("minimum".into(), json!(ge as f64));
                    }
                    Check::None | Check::Literal(_) => {}
                }
                map.insert("title".into(), json!(title_case(field.name)));
                match field.default {
                    Some(default) => {
                        let default: Value = serde_json::from_str(default).unwrap_or(Value::Null);
                        map.insert("default".into(), default);
                    }
                    None => required.push(field.name),
                }
            }
            (field.name.to_owned(), property)
        })
        .collect();
    let mut schema = json!({ "properties": properties, "type": "object" });
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema["title"] = json!(title);
    schema
}

fn json_schema_type(kind: Kind) -> Value {
    match kind {
        Kind::Int => json!({"type": "integer"}),
        Kind::Float => json!({"type": "number"}),
        Kind::Str => json!({"type": "string"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::Dict => json!({"type": "object"}),
        Kind::List => json!({"items": {}, "type": "array"}),
        Kind::ListOfStr => json!({"items": {"type": "string"}, "type": "array"}),
        Kind::Any => json!({}),
    }
}

/// pydantic's default title of a field: `n_iter` is `N Iter`.
fn title_case(name: &str) -> String {
    name.split('_')
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
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
                    "input": "many", "url": "https://errors.pydantic.dev/2.8/v/int_parsing"}])
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
                   "msg": "Input should be a valid list", "input": "abc",
                   "url": "https://errors.pydantic.dev/2.8/v/list_type"})
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
                    "input": [1, 2],
                    "url": "https://errors.pydantic.dev/2.8/v/model_attributes_type"}])
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
