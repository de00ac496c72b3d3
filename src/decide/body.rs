//! Reading what the proxy needs from a request body, and writing back only what changes.
//!
//! A generation body is parsed one level deep: each top-level field stays raw JSON (an
//! img2img's megabytes of base64 are never decoded), only the few fields the decision
//! needs are read, and when nothing changes the client's original bytes are forwarded.

use std::collections::BTreeMap;

use axum::body::Body;
use bytes::Bytes;
use http::header;
use http_body_util::{BodyExt, Limited};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::decide::policy::RequestSize;
use crate::error::ProxyError;

/// Reads a body the proxy must inspect, refusing more than `limit` bytes.
pub async fn read_body(
    headers: &http::HeaderMap,
    body: Body,
    limit: u64,
) -> Result<Bytes, ProxyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ProxyError::InspectedBodyTooLarge { limit });
    }
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::InspectedBodyTooLarge { limit })
        }
        Err(e) => Err(ProxyError::ClientBody {
            reason: e.to_string(),
        }),
    }
}

/// A request's method, URI, version and headers, to send it again with a body (to another
/// backend after a failure, or to each backend in turn).
#[derive(Debug, Clone)]
pub struct Head {
    pub method: http::Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub headers: http::HeaderMap,
}

impl Head {
    pub fn of(parts: &http::request::Parts) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        }
    }

    pub fn request(&self, headers: http::HeaderMap, body: Body) -> http::Request<Body> {
        let mut request = http::Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = headers;
        request
    }
}

/// Sets `Content-Length` for a body the proxy rewrote.
pub fn set_length(headers: &mut http::HeaderMap, length: usize) {
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, http::HeaderValue::from(length));
}

/// A generation request's JSON object, top-level fields kept raw.
pub struct GenerationBody<'a> {
    fields: BTreeMap<String, &'a RawValue>,
}

/// What the proxy changes in a generation body.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BodyEdits {
    /// Fields added because the client left them out (profile request defaults).
    pub added: Map<String, Value>,
    /// The new `override_settings`, when keys were removed from it (`None`: unchanged).
    pub override_settings: Option<Map<String, Value>>,
}

impl BodyEdits {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.override_settings.is_none()
    }
}

impl<'a> GenerationBody<'a> {
    /// `None` when the body is not a JSON object: it is then forwarded untouched, and Forge
    /// answers it as Forge does.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        serde_json::from_slice(bytes)
            .ok()
            .map(|fields| Self { fields })
    }

    /// A field, when present, not null, and of the expected type.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.fields
            .get(key)
            .and_then(|raw| serde_json::from_str::<Option<T>>(raw.get()).ok().flatten())
    }

    /// Whether the client set a field (null counts as not set: Forge uses its default).
    pub fn has(&self, key: &str) -> bool {
        self.fields.get(key).is_some_and(|raw| raw.get() != "null")
    }

    pub fn override_settings(&self) -> Map<String, Value> {
        self.get("override_settings").unwrap_or_default()
    }

    /// The pixels this request computes, by Forge's rules: hires fix renders at
    /// `hr_resize_x/y` when given, else `hr_scale` × the first pass.
    pub fn size(&self) -> RequestSize {
        let defaults = RequestSize::default();
        let number = |key: &str| self.get::<f64>(key).filter(|v| v.is_finite() && *v > 0.0);
        let width = number("width").map_or(defaults.width, |v| v as u32);
        let height = number("height").map_or(defaults.height, |v| v as u32);
        let batch_size = number("batch_size").map_or(1, |v| v as u32);
        let hires = self.get::<bool>("enable_hr").unwrap_or(false).then(|| {
            let scale = number("hr_scale").unwrap_or(2.0);
            match (number("hr_resize_x"), number("hr_resize_y")) {
                (Some(x), Some(y)) => (x as u32, y as u32),
                (Some(x), None) => (x as u32, (f64::from(height) * x / f64::from(width)) as u32),
                (None, Some(y)) => ((f64::from(width) * y / f64::from(height)) as u32, y as u32),
                (None, None) => (
                    (f64::from(width) * scale) as u32,
                    (f64::from(height) * scale) as u32,
                ),
            }
        });
        RequestSize {
            width,
            height,
            batch_size,
            hires,
        }
    }

    /// The body with `edits` applied; untouched fields are copied as raw bytes.
    pub fn render(&self, edits: &BodyEdits) -> Result<Bytes, serde_json::Error> {
        let mut owned: Vec<(String, Box<RawValue>)> = Vec::new();
        for (key, value) in &edits.added {
            owned.push((key.clone(), serde_json::value::to_raw_value(value)?));
        }
        if let Some(settings) = &edits.override_settings {
            owned.push((
                "override_settings".to_owned(),
                serde_json::value::to_raw_value(settings)?,
            ));
        }
        let mut out: BTreeMap<&str, &RawValue> = self
            .fields
            .iter()
            .map(|(key, value)| (key.as_str(), *value))
            .collect();
        for (key, value) in &owned {
            out.insert(key.as_str(), value);
        }
        serde_json::to_vec(&out).map(Bytes::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn non_objects_are_not_parsed() {
        assert!(GenerationBody::parse(b"not json").is_none());
        assert!(GenerationBody::parse(b"[1, 2]").is_none());
        assert!(GenerationBody::parse(b"{\"prompt\": \"x\"").is_none());
        assert!(GenerationBody::parse(b"{}").is_some());
    }

    #[test]
    fn size_reads_first_pass_batch_and_hires_output() {
        let plain = br#"{"width": 1024, "height": 768, "batch_size": 2}"#;
        let body = GenerationBody::parse(plain).unwrap();
        assert_eq!(
            body.size(),
            RequestSize {
                width: 1024,
                height: 768,
                batch_size: 2,
                hires: None
            }
        );
        let hires = br#"{"width": 512, "height": 512, "enable_hr": true, "hr_scale": 1.5}"#;
        assert_eq!(
            GenerationBody::parse(hires).unwrap().size().hires,
            Some((768, 768))
        );
        let resize = br#"{"width": 512, "height": 768, "enable_hr": true, "hr_resize_x": 1024}"#;
        assert_eq!(
            GenerationBody::parse(resize).unwrap().size().hires,
            Some((1024, 1536))
        );
        let wrong_types = br#"{"width": "wide", "height": null, "batch_size": -3}"#;
        assert_eq!(
            GenerationBody::parse(wrong_types).unwrap().size(),
            RequestSize::default()
        );
    }

    #[test]
    fn render_keeps_untouched_fields_byte_for_byte_and_applies_edits() {
        let bytes = br#"{"prompt": "a  cat", "init_images": ["iVBOR\u0041w"], "steps": 20.0, "override_settings": {"forge_inference_memory": 1024, "CLIP_stop_at_last_layers": 2}}"#;
        let body = GenerationBody::parse(bytes).unwrap();
        let edits = BodyEdits {
            added: Map::from_iter([("cfg_scale".to_owned(), json!(1.0))]),
            override_settings: Some(Map::from_iter([(
                "CLIP_stop_at_last_layers".to_owned(),
                json!(2),
            )])),
        };
        let out = String::from_utf8(body.render(&edits).unwrap().to_vec()).unwrap();
        assert_eq!(
            out,
            r#"{"cfg_scale":1.0,"init_images":["iVBOR\u0041w"],"override_settings":{"CLIP_stop_at_last_layers":2},"prompt":"a  cat","steps":20.0}"#
        );
    }

    #[test]
    fn has_treats_null_as_left_out() {
        let body = GenerationBody::parse(br#"{"cfg_scale": null, "scheduler": "Karras"}"#).unwrap();
        assert!(!body.has("cfg_scale"));
        assert!(body.has("scheduler"));
        assert!(!body.has("distilled_cfg_scale"));
    }
}
