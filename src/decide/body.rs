//! What a generation body says, read as Forge reads it, and its rewriting.
//!
//! The body is read as FastAPI reads it (`forge_schema::body`): JSON by content type, the
//! encoding Python's `json` detects (a UTF-8 byte-order mark, UTF-16, UTF-32), `NaN` and
//! `Infinity`. It is parsed one level deep: each member stays raw text (an img2img's
//! megabytes of base64 are never decoded), only the few members the decision needs are
//! read, with pydantic's lax coercion (`"512"` is 512 to Forge, so it is to the proxy), and
//! when nothing changes the client's original bytes are forwarded. A body Forge would refuse
//! is told apart before anything is changed for it.

use std::borrow::Cow;

use bytes::Bytes;
use forge_schema::body::{self as python, RawObject};
use forge_schema::model::{self, GenerationRoute, Kind, Refusal};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::decide::policy::RequestSize;

/// Why the proxy leaves a body to Forge unread: Forge answers it as it would without the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unread {
    /// A content type FastAPI does not read as JSON (Forge's 422).
    NotJsonContentType,
    /// Bytes Python's `json` cannot decode to text (Forge's 400).
    NotText,
    /// Not JSON to Python's `json` (Forge's 422 `json_invalid`).
    NotJson,
    /// JSON, but not an object (Forge's 422 `model_attributes_type`).
    NotAnObject,
}

impl Unread {
    pub fn as_str(self) -> &'static str {
        match self {
            Unread::NotJsonContentType => "not a JSON content type",
            Unread::NotText => "not text in an encoding Python's json reads",
            Unread::NotJson => "not JSON",
            Unread::NotAnObject => "not a JSON object",
        }
    }
}

/// Why Forge will refuse a generation it could read, before running anything for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum ForgeRefuses {
    /// A member fails the model's validation (422; a 500 when the value holds `NaN`).
    Field { field: String, error: String },
    /// img2img without `init_images` (404 "Init image not found").
    NoInitImages,
}

impl std::fmt::Display for ForgeRefuses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForgeRefuses::Field { field, error } => write!(f, "field {field}: {error}"),
            ForgeRefuses::NoInitImages => f.write_str("img2img without init_images"),
        }
    }
}

/// A generation request's JSON object, members kept raw.
pub struct GenerationBody<'a> {
    text: Cow<'a, str>,
    object: RawObject,
}

/// What the proxy changes in a generation body.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BodyEdits {
    /// Fields added because the client left them out (profile request defaults).
    pub added: Map<String, Value>,
    /// Keys removed from `override_settings` (the proxy sets them itself).
    pub removed_overrides: Vec<String>,
}

impl BodyEdits {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed_overrides.is_empty()
    }
}

impl<'a> GenerationBody<'a> {
    /// Reads a body as Forge does; `content_type` is the request's `Content-Type` header.
    pub fn read(content_type: Option<&[u8]>, bytes: &'a [u8]) -> Result<Self, Unread> {
        if !python::is_json_content_type(content_type) {
            return Err(Unread::NotJsonContentType);
        }
        let text = python::decode_text(bytes).map_err(|_| Unread::NotText)?;
        match RawObject::parse(&text) {
            Ok(Some(object)) => Ok(Self { text, object }),
            Ok(None) => Err(Unread::NotAnObject),
            Err(_) => Err(Unread::NotJson),
        }
    }

    /// A JSON object written by the proxy itself (plain UTF-8 JSON).
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        Self::read(None, bytes).ok()
    }

    fn raw(&self, key: &str) -> Option<&str> {
        self.object.get(key).map(|span| &self.text[span])
    }

    /// A member as Forge's model coerces it (`"512"` for an int is 512); `None` when absent,
    /// `null`, or not valid for `kind` (Forge then refuses the body: see [`Self::refusal`]).
    fn lax(&self, key: &str, kind: Kind) -> Option<Value> {
        let (value, _) = python::to_value(self.raw(key)?).ok()?;
        match value {
            Value::Null => None,
            value => model::coerce(kind, value).ok().filter(|v| !v.is_null()),
        }
    }

    fn int(&self, key: &str) -> Option<i64> {
        self.lax(key, Kind::Int).and_then(|v| v.as_i64())
    }

    fn float(&self, key: &str) -> Option<f64> {
        self.lax(key, Kind::Float).and_then(|v| v.as_f64())
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        self.lax(key, Kind::Bool).and_then(|v| v.as_bool())
    }

    /// Whether the client set a field (null counts as not set: Forge uses its default).
    pub fn has(&self, key: &str) -> bool {
        self.raw(key).is_some_and(|raw| raw != "null")
    }

    /// `override_settings` (`NaN` in a value reads as `null`).
    pub fn override_settings(&self) -> Map<String, Value> {
        match self.lax("override_settings", Kind::Dict) {
            Some(Value::Object(map)) => map,
            _ => Map::new(),
        }
    }

    /// Whether Forge restores `override_settings` after the generation (its default: yes).
    pub fn restores_overrides(&self) -> bool {
        self.bool("override_settings_restore_afterwards")
            .unwrap_or(true)
    }

    /// Why Forge will refuse this body on `route` before running anything, if it will: a
    /// member its model does not validate, or an img2img without images. Routes other than
    /// Forge's two generation routes are not checked.
    pub fn refusal(&self, route: Option<GenerationRoute>) -> Option<ForgeRefuses> {
        let route = route?;
        for (name, span) in self.object.members() {
            let Some(field) = model::generation_field(route, name) else {
                continue;
            };
            if let Err(error) = check_member(field.kind, &self.text[span]) {
                return Some(ForgeRefuses::Field {
                    field: name.to_owned(),
                    error,
                });
            }
        }
        if route == GenerationRoute::Img2Img && !self.has("init_images") {
            return Some(ForgeRefuses::NoInitImages);
        }
        None
    }

    /// The pixels this request computes, by Forge's rules: hires fix renders at
    /// `hr_resize_x/y` when given, else `hr_scale` × the first pass. Values beyond what a
    /// `u32` holds saturate.
    pub fn size(&self) -> RequestSize {
        let defaults = RequestSize::default();
        let side = |key: &str| self.int(key).filter(|v| *v > 0).map(saturate);
        let width = side("width").unwrap_or(defaults.width);
        let height = side("height").unwrap_or(defaults.height);
        let batch_size = side("batch_size").unwrap_or(1);
        let hires = self.bool("enable_hr").unwrap_or(false).then(|| {
            let scale = self
                .float("hr_scale")
                .filter(|v| v.is_finite() && *v > 0.0)
                .unwrap_or(2.0);
            let (w, h) = (f64::from(width), f64::from(height));
            let scaled = |v: f64| v as u32;
            match (side("hr_resize_x"), side("hr_resize_y")) {
                (Some(x), Some(y)) => (x, y),
                (Some(x), None) => (x, scaled(h * f64::from(x) / w)),
                (None, Some(y)) => (scaled(w * f64::from(y) / h), y),
                (None, None) => (scaled(w * scale), scaled(h * scale)),
            }
        });
        RequestSize {
            width,
            height,
            batch_size,
            hires,
        }
    }

    /// The body with `edits` applied, as UTF-8 JSON, in pieces: every member the proxy did
    /// not change is its raw text, in the client's order, and a large one (an init image) is
    /// a slice of `original` (the bytes this body was read from) rather than a copy, so the
    /// body is held once.
    pub fn render(
        &self,
        original: &Bytes,
        edits: &BodyEdits,
    ) -> Result<Vec<Bytes>, serde_json::Error> {
        let mut pieces = Pieces::new(original);
        pieces.push_str("{");
        let mut first = true;
        let mut member = |pieces: &mut Pieces, name: &str, value: &str| {
            if !first {
                pieces.push_str(",");
            }
            first = false;
            pieces.push_str(&serde_json::to_string(name)?);
            pieces.push_str(":");
            pieces.push_raw(value);
            Ok::<(), serde_json::Error>(())
        };
        for (name, span) in self.object.members() {
            if edits.added.contains_key(name) {
                continue;
            }
            let raw = &self.text[span];
            if name == "override_settings" && !edits.removed_overrides.is_empty() {
                member(&mut pieces, name, &without(raw, &edits.removed_overrides)?)?;
            } else {
                member(&mut pieces, name, raw)?;
            }
        }
        for (name, value) in &edits.added {
            member(&mut pieces, name, &serde_json::to_string(value)?)?;
        }
        pieces.push_str("}");
        Ok(pieces.finish())
    }
}

/// A body built in pieces: text the proxy writes, gathered, and large raw members of the
/// client's body, as slices of its bytes.
struct Pieces<'a> {
    original: &'a Bytes,
    written: String,
    done: Vec<Bytes>,
}

/// Raw members at least this long are sliced rather than copied.
const SLICE_FROM: usize = 4096;

impl<'a> Pieces<'a> {
    fn new(original: &'a Bytes) -> Self {
        Self {
            original,
            written: String::new(),
            done: Vec::new(),
        }
    }

    fn push_str(&mut self, text: &str) {
        self.written.push_str(text);
    }

    /// A member's raw text: sliced from the original bytes when it lies in them (a UTF-8
    /// body) and is large, else copied.
    fn push_raw(&mut self, raw: &str) {
        let start = raw.as_ptr() as usize;
        let base = self.original.as_ptr() as usize;
        let inside = start >= base && start + raw.len() <= base + self.original.len();
        if raw.len() < SLICE_FROM || !inside {
            self.written.push_str(raw);
            return;
        }
        if !self.written.is_empty() {
            self.done
                .push(Bytes::from(std::mem::take(&mut self.written)));
        }
        self.done.push(self.original.slice_ref(raw.as_bytes()));
    }

    fn finish(mut self) -> Vec<Bytes> {
        if !self.written.is_empty() {
            self.done.push(Bytes::from(self.written));
        }
        self.done
    }
}

/// An object's raw text without the members `removed`.
fn without(raw: &str, removed: &[String]) -> Result<String, serde_json::Error> {
    let Ok(Some(object)) = RawObject::parse(raw) else {
        return Ok(raw.to_owned());
    };
    let mut out = String::from("{");
    for (name, span) in object.members() {
        if removed.iter().any(|r| r == name) {
            continue;
        }
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(name)?);
        out.push(':');
        out.push_str(&raw[span]);
    }
    out.push('}');
    Ok(out)
}

/// Whether Forge's model takes a member's raw value: strings, lists and dicts by their
/// first character (no copy of an init image), the rest as pydantic coerces them.
fn check_member(kind: Kind, raw: &str) -> Result<(), String> {
    let opens = |c: char| raw.starts_with(c) || raw == "null";
    let shape = match kind {
        Kind::Any => Some(true),
        Kind::Str => Some(opens('"')),
        Kind::List => Some(opens('[')),
        Kind::Dict => Some(opens('{')),
        Kind::Int | Kind::Float | Kind::Bool | Kind::ListOfStr => None,
    };
    if let Some(fits) = shape {
        return if fits {
            Ok(())
        } else {
            Err(format!("not a {}", kind_name(kind)))
        };
    }
    let (value, non_finite) = python::to_value(raw).map_err(|_| "not JSON".to_owned())?;
    match model::validate_member(kind, value, non_finite) {
        Ok(_) => Ok(()),
        Err(Refusal::Invalid(invalid)) => {
            Err(invalid.first().map_or("invalid", |i| i.kind).to_owned())
        }
        Err(Refusal::NotSerializable) => Err("NaN or Infinity where Forge refuses it".to_owned()),
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Str => "string",
        Kind::List | Kind::ListOfStr => "list",
        Kind::Dict => "dictionary",
        Kind::Int => "integer",
        Kind::Float => "number",
        Kind::Bool => "boolean",
        Kind::Any => "value",
    }
}

fn saturate(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(bytes: &[u8]) -> GenerationBody<'_> {
        GenerationBody::read(Some(b"application/json"), bytes).unwrap()
    }

    #[test]
    fn bodies_forge_does_not_read_are_left_unread() {
        let read = |ct: Option<&[u8]>, b: &[u8]| GenerationBody::read(ct, b).err();
        assert_eq!(read(None, b"not json"), Some(Unread::NotJson));
        assert_eq!(read(None, b"[1, 2]"), Some(Unread::NotAnObject));
        assert_eq!(read(None, b"{\"prompt\": \"x\""), Some(Unread::NotJson));
        assert_eq!(read(None, b"\xff{}"), Some(Unread::NotText));
        assert_eq!(
            read(Some(b"text/plain"), b"{}"),
            Some(Unread::NotJsonContentType)
        );
        assert_eq!(read(None, b"{}"), None);
    }

    #[test]
    fn every_encoding_python_reads_is_read() {
        let text = r#"{"width": 1024, "override_settings": {"sd_model_checkpoint": "flux"}}"#;
        let utf16: Vec<u8> = b"\xff\xfe"
            .iter()
            .copied()
            .chain(text.encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        let mut bom = b"\xef\xbb\xbf".to_vec();
        bom.extend(text.as_bytes());
        for bytes in [utf16, bom] {
            let body = read(&bytes);
            assert_eq!(body.size().width, 1024);
            assert_eq!(body.override_settings()["sd_model_checkpoint"], "flux");
        }
        let nan = read(br#"{"cfg_scale": NaN, "width": 768}"#);
        assert_eq!(nan.size().width, 768);
        assert!(nan.has("cfg_scale"));
    }

    #[test]
    fn size_reads_first_pass_batch_and_hires_output() {
        let plain = read(br#"{"width": 1024, "height": 768, "batch_size": 2}"#);
        assert_eq!(
            plain.size(),
            RequestSize {
                width: 1024,
                height: 768,
                batch_size: 2,
                hires: None
            }
        );
        let hires = read(br#"{"width": 512, "height": 512, "enable_hr": true, "hr_scale": 1.5}"#);
        assert_eq!(hires.size().hires, Some((768, 768)));
        let resize =
            read(br#"{"width": 512, "height": 768, "enable_hr": "yes", "hr_resize_x": 1024}"#);
        assert_eq!(resize.size().hires, Some((1024, 1536)));
        // Forge's lax ints: what it runs with, the proxy computes with.
        let strings = read(br#"{"width": "1024", "height": 768.0, "batch_size": "2"}"#);
        assert_eq!((strings.size().width, strings.size().batch_size), (1024, 2));
        let wrong = read(br#"{"width": "wide", "height": null, "batch_size": -3}"#);
        assert_eq!(wrong.size(), RequestSize::default());
        let huge = read(br#"{"width": 99999999999, "batch_size": 4294967295}"#);
        assert_eq!(
            (huge.size().width, huge.size().batch_size),
            (u32::MAX, u32::MAX)
        );
    }

    #[test]
    fn forge_refuses_what_its_model_does_not_validate() {
        let refusal = |text: &str, route| read(text.as_bytes()).refusal(Some(route));
        let txt2img = GenerationRoute::Txt2Img;
        assert_eq!(refusal(r#"{"width": 512, "prompt": "x"}"#, txt2img), None);
        for (text, field) in [
            (r#"{"width": 1e308}"#, "width"),
            (r#"{"batch_size": 1.5}"#, "batch_size"),
            (r#"{"steps": "many"}"#, "steps"),
            (r#"{"width": NaN}"#, "width"),
            (r#"{"prompt": 5}"#, "prompt"),
            (r#"{"override_settings": []}"#, "override_settings"),
            (r#"{"styles": ["a", 1]}"#, "styles"),
        ] {
            match refusal(text, txt2img) {
                Some(ForgeRefuses::Field { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        // Floats take NaN; unknown members and img2img's own are not txt2img's business.
        assert_eq!(
            refusal(r#"{"cfg_scale": NaN, "nonsense": [1]}"#, txt2img),
            None
        );
        assert_eq!(refusal(r#"{"init_images": 5}"#, txt2img), None);
        assert_eq!(
            refusal(r#"{"prompt": "x"}"#, GenerationRoute::Img2Img),
            Some(ForgeRefuses::NoInitImages)
        );
        assert_eq!(
            refusal(r#"{"init_images": null}"#, GenerationRoute::Img2Img),
            Some(ForgeRefuses::NoInitImages)
        );
        assert_eq!(
            refusal(r#"{"init_images": ["iVBOR"]}"#, GenerationRoute::Img2Img),
            None
        );
        assert_eq!(read(br#"{"width": 1.5}"#).refusal(None), None);
    }

    proptest::proptest! {
        /// Whatever numbers a client writes, reading the size never panics, and the sizes
        /// the policy gets are what Forge would compute with, saturated.
        #[test]
        fn any_numbers_read_as_a_size(
            width in proptest::prelude::any::<f64>(),
            height in proptest::prelude::any::<i64>(),
            batch in proptest::prelude::any::<u64>(),
            scale in proptest::prelude::any::<f64>(),
            resize in proptest::prelude::any::<i64>(),
        ) {
            let text = format!(
                r#"{{"width": {width:?}, "height": {height}, "batch_size": {batch}, "enable_hr": true, "hr_scale": {scale:?}, "hr_resize_y": {resize}}}"#
            );
            let text = text.replace("inf", "Infinity");
            if let Ok(body) = GenerationBody::read(None, text.as_bytes()) {
                let size = body.size();
                let policy = crate::Config::default().profiles[0].policy.clone();
                let decided = crate::decide::policy::decide(&policy, 12288, 0, &size);
                proptest::prop_assert!(decided.inference_mib <= 12288);
                let _ = body.refusal(Some(GenerationRoute::Txt2Img));
            }
        }
    }

    #[test]
    fn render_keeps_untouched_members_byte_for_byte_in_order() {
        let bytes = br#"{"prompt": "a  cat", "init_images": ["iVBOR\u0041w"], "cfg_scale": NaN, "override_settings": {"forge_inference_memory": 1024, "x": Infinity}}"#;
        let body = read(bytes);
        let edits = BodyEdits {
            added: Map::from_iter([("distilled_cfg_scale".to_owned(), json!(3.5))]),
            removed_overrides: vec!["forge_inference_memory".to_owned()],
        };
        let original = Bytes::from_static(bytes);
        let pieces = body.render(&original, &edits).unwrap();
        let out = String::from_utf8(pieces.concat()).unwrap();
        assert_eq!(
            out,
            r#"{"prompt":"a  cat","init_images":["iVBOR\u0041w"],"cfg_scale":NaN,"override_settings":{"x":Infinity},"distilled_cfg_scale":3.5}"#
        );
    }

    #[test]
    fn a_large_member_is_sent_as_a_slice_of_the_clients_bytes() {
        let image = "A".repeat(100_000);
        let text = format!(r#"{{"init_images": ["{image}"], "prompt": "x"}}"#);
        let original = Bytes::from(text);
        let body = GenerationBody::read(None, &original).unwrap();
        let edits = BodyEdits {
            added: Map::from_iter([("cfg_scale".to_owned(), json!(1.0))]),
            removed_overrides: Vec::new(),
        };
        let pieces = body.render(&original, &edits).unwrap();
        let sliced = pieces
            .iter()
            .find(|p| p.len() > 100_000)
            .expect("the image as one piece");
        let base = original.as_ptr() as usize;
        let at = sliced.as_ptr() as usize;
        assert!(
            at >= base && at < base + original.len(),
            "a slice, not a copy"
        );
        assert_eq!(
            String::from_utf8(pieces.concat()).unwrap(),
            format!(r#"{{"init_images":["{image}"],"prompt":"x","cfg_scale":1.0}}"#)
        );
    }

    #[test]
    fn has_treats_null_as_left_out() {
        let body = read(br#"{"cfg_scale": null, "scheduler": "Karras"}"#);
        assert!(!body.has("cfg_scale"));
        assert!(body.has("scheduler"));
        assert!(!body.has("distilled_cfg_scale"));
    }
}
