//! The bytes FastAPI reads as JSON, read as Python's `json.loads(bytes)` reads them.
//!
//! Forge's API parses a body with Starlette's `Request.json()`, which is `json.loads` on the
//! raw bytes: the encoding is detected (`json.detect_encoding`), a UTF-8 byte-order mark is
//! dropped, UTF-16 and UTF-32 are decoded, and the tokens `NaN`, `Infinity` and `-Infinity`
//! are numbers. serde_json takes none of these; [jiter] (pydantic's own parser) takes the
//! tokens, and the decoding is done here. The one difference left: Python accepts a lone
//! surrogate escape (`"\ud800"`), jiter does not; such a body is read by neither party here.

use std::borrow::Cow;
use std::ops::Range;

use jiter::{Jiter, JsonValue, Peek};
use serde_json::{Map, Number, Value};

/// FastAPI (`fastapi/routing.py`, `get_request_handler`) parses a body as JSON when it has no
/// content type, or when that is `application/json` or `application/<anything>+json`; any
/// other body reaches validation as bytes, and fails it.
pub fn is_json_content_type(content_type: Option<&[u8]>) -> bool {
    let Some(value) = content_type else {
        return true;
    };
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let mime = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match mime.split_once('/') {
        Some(("application", subtype)) => subtype == "json" || subtype.ends_with("+json"),
        _ => false,
    }
}

/// A body Python's `json` cannot decode to text (bad UTF-8, odd UTF-16, a lone surrogate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotText;

/// The encodings `json.detect_encoding` tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    Utf16Le,
    Utf16Be,
    Utf32Le,
    Utf32Be,
}

/// `json.detect_encoding`: a byte-order mark, else the zero bytes around the first ASCII
/// characters (RFC 8259 §8.1 / RFC 4627 §3). Answers the encoding and the length of the mark
/// the codec drops.
pub fn detect_encoding(bytes: &[u8]) -> (Encoding, usize) {
    const UTF32_LE: &[u8] = b"\xff\xfe\x00\x00";
    const UTF32_BE: &[u8] = b"\x00\x00\xfe\xff";
    if bytes.starts_with(UTF32_LE) {
        return (Encoding::Utf32Le, 4);
    }
    if bytes.starts_with(UTF32_BE) {
        return (Encoding::Utf32Be, 4);
    }
    if bytes.starts_with(b"\xff\xfe") {
        return (Encoding::Utf16Le, 2);
    }
    if bytes.starts_with(b"\xfe\xff") {
        return (Encoding::Utf16Be, 2);
    }
    if bytes.starts_with(b"\xef\xbb\xbf") {
        return (Encoding::Utf8, 3);
    }
    let encoding = match bytes {
        [0, b1, _, _, ..] if *b1 != 0 => Encoding::Utf16Be,
        [0, _, _, _, ..] => Encoding::Utf32Be,
        [_, 0, b2, b3, ..] if *b2 != 0 || *b3 != 0 => Encoding::Utf16Le,
        [_, 0, _, _, ..] => Encoding::Utf32Le,
        [0, _] => Encoding::Utf16Be,
        [_, 0] => Encoding::Utf16Le,
        _ => Encoding::Utf8,
    };
    (encoding, 0)
}

/// The text of a JSON body as `json.loads(bytes)` decodes it; borrowed when the body is
/// plain UTF-8 without a mark.
pub fn decode_text(bytes: &[u8]) -> Result<Cow<'_, str>, NotText> {
    let (encoding, mark) = detect_encoding(bytes);
    let bytes = &bytes[mark..];
    match encoding {
        Encoding::Utf8 => std::str::from_utf8(bytes)
            .map(Cow::Borrowed)
            .map_err(|_| NotText),
        Encoding::Utf16Le | Encoding::Utf16Be => {
            if !bytes.len().is_multiple_of(2) {
                return Err(NotText);
            }
            let units = bytes.chunks_exact(2).map(|pair| {
                let pair = [pair[0], pair[1]];
                if encoding == Encoding::Utf16Le {
                    u16::from_le_bytes(pair)
                } else {
                    u16::from_be_bytes(pair)
                }
            });
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .map(Cow::Owned)
                .map_err(|_| NotText)
        }
        Encoding::Utf32Le | Encoding::Utf32Be => {
            if !bytes.len().is_multiple_of(4) {
                return Err(NotText);
            }
            bytes
                .chunks_exact(4)
                .map(|quad| {
                    let quad = [quad[0], quad[1], quad[2], quad[3]];
                    let code = if encoding == Encoding::Utf32Le {
                        u32::from_le_bytes(quad)
                    } else {
                        u32::from_be_bytes(quad)
                    };
                    char::from_u32(code).ok_or(NotText)
                })
                .collect::<Result<String, _>>()
                .map(Cow::Owned)
        }
    }
}

/// Text that is not JSON to Python's `json` (its position in bytes of the decoded text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotJson {
    pub index: usize,
}

impl From<jiter::JiterError> for NotJson {
    fn from(error: jiter::JiterError) -> Self {
        NotJson { index: error.index }
    }
}

fn parser(text: &str) -> Jiter<'_> {
    Jiter::new(text.as_bytes()).with_allow_inf_nan()
}

/// A JSON object's members as raw text, in the order a Python `dict` keeps them: a key sent
/// twice keeps its first place and its last value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawObject {
    members: Vec<(String, Range<usize>)>,
}

impl RawObject {
    /// Reads `text` as one JSON value: `Ok(None)` when it is JSON but not an object.
    pub fn parse(text: &str) -> Result<Option<RawObject>, NotJson> {
        let mut jiter = parser(text);
        if jiter.peek()? != Peek::Object {
            jiter.next_skip()?;
            jiter.finish()?;
            return Ok(None);
        }
        let mut members: Vec<(String, Range<usize>)> = Vec::new();
        let mut key = jiter.known_object()?.map(str::to_owned);
        while let Some(name) = key {
            let start = jiter.current_index();
            jiter.next_skip()?;
            let span = trim_span(text, start..jiter.current_index());
            match members.iter_mut().find(|(k, _)| *k == name) {
                Some(member) => member.1 = span,
                None => members.push((name, span)),
            }
            key = jiter.next_key()?.map(str::to_owned);
        }
        jiter.finish()?;
        Ok(Some(RawObject { members }))
    }

    /// The members in order: name and the span of its value's text.
    pub fn members(&self) -> impl Iterator<Item = (&str, Range<usize>)> {
        self.members
            .iter()
            .map(|(name, span)| (name.as_str(), span.clone()))
    }

    /// The span of a member's value, when present.
    pub fn get(&self, name: &str) -> Option<Range<usize>> {
        self.members
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, span)| span.clone())
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// A span without the JSON whitespace around the value.
fn trim_span(text: &str, span: Range<usize>) -> Range<usize> {
    let slice = &text[span.clone()];
    let is_ws = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r');
    let lead = slice.len() - slice.trim_start_matches(is_ws).len();
    let trail = slice.len() - slice.trim_end_matches(is_ws).len();
    span.start + lead..span.end - trail
}

/// Where a value holds `NaN` or an infinity, which JSON itself cannot carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonFinite {
    None,
    /// The value is such a number.
    Itself,
    /// An array or object holds one, at any depth.
    Inside,
}

/// One JSON value (Python's grammar) as a `serde_json` value. `NaN` and the infinities become
/// `null`, as pydantic writes them in a JSON answer, and are reported; integers beyond 64 bits
/// become floats.
pub fn to_value(text: &str) -> Result<(Value, NonFinite), NotJson> {
    let mut jiter = parser(text);
    let value = jiter.next_value()?;
    jiter.finish()?;
    let mut found = false;
    let converted = convert(&value, &mut found);
    let non_finite = match (found, &value) {
        (false, _) => NonFinite::None,
        (true, JsonValue::Float(_)) => NonFinite::Itself,
        (true, _) => NonFinite::Inside,
    };
    Ok((converted, non_finite))
}

fn convert(value: &JsonValue<'_>, non_finite: &mut bool) -> Value {
    match value {
        JsonValue::Null => Value::Null,
        JsonValue::Bool(b) => Value::Bool(*b),
        JsonValue::Int(i) => Value::from(*i),
        JsonValue::BigInt(big) => {
            float(big.to_string().parse().unwrap_or(f64::INFINITY), non_finite)
        }
        JsonValue::Float(f) => float(*f, non_finite),
        JsonValue::Str(s) => Value::String(s.to_string()),
        JsonValue::Array(items) => {
            Value::Array(items.iter().map(|v| convert(v, non_finite)).collect())
        }
        JsonValue::Object(members) => {
            let mut map = Map::new();
            for (key, value) in members.iter() {
                map.insert(key.to_string(), convert(value, non_finite));
            }
            Value::Object(map)
        }
    }
}

fn float(f: f64, non_finite: &mut bool) -> Value {
    match Number::from_f64(f) {
        Some(number) => Value::Number(number),
        None => {
            *non_finite = true;
            Value::Null
        }
    }
}

/// A whole JSON document as a value, with the names of its top-level members that hold a
/// non-finite number (and how); for a document that is not an object, its own `NonFinite`
/// under the name `""`.
pub fn to_value_with_members(text: &str) -> Result<(Value, Vec<(String, NonFinite)>), NotJson> {
    let Some(object) = RawObject::parse(text)? else {
        let (value, non_finite) = to_value(text)?;
        let report = match non_finite {
            NonFinite::None => Vec::new(),
            other => vec![(String::new(), other)],
        };
        return Ok((value, report));
    };
    let mut map = Map::new();
    let mut report = Vec::new();
    for (name, span) in object.members() {
        let (value, non_finite) = to_value(&text[span])?;
        if non_finite != NonFinite::None {
            report.push((name.to_owned(), non_finite));
        }
        map.insert(name.to_owned(), value);
    }
    Ok((Value::Object(map), report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_content_types_are_fastapis() {
        assert!(is_json_content_type(None));
        assert!(is_json_content_type(Some(b"application/json")));
        assert!(is_json_content_type(Some(
            b"Application/JSON; charset=utf-8"
        )));
        assert!(is_json_content_type(Some(b"application/vnd.api+json")));
        assert!(!is_json_content_type(Some(b"text/plain")));
        assert!(!is_json_content_type(Some(
            b"application/x-www-form-urlencoded"
        )));
        assert!(!is_json_content_type(Some(b"\xff")));
    }

    #[test]
    fn encodings_are_detected_as_python_does() {
        assert_eq!(detect_encoding(b"{\"a\":1}"), (Encoding::Utf8, 0));
        assert_eq!(detect_encoding(b"\xef\xbb\xbf{}"), (Encoding::Utf8, 3));
        assert_eq!(
            detect_encoding(b"\xff\xfe{\x00}\x00"),
            (Encoding::Utf16Le, 2)
        );
        assert_eq!(
            detect_encoding(b"\xfe\xff\x00{\x00}"),
            (Encoding::Utf16Be, 2)
        );
        assert_eq!(
            detect_encoding(b"\xff\xfe\x00\x00{\x00\x00\x00"),
            (Encoding::Utf32Le, 4)
        );
        assert_eq!(detect_encoding(b"{\x00\"\x00"), (Encoding::Utf16Le, 0));
        assert_eq!(detect_encoding(b"\x00{\x00\""), (Encoding::Utf16Be, 0));
        assert_eq!(detect_encoding(b"{\x00\x00\x00"), (Encoding::Utf32Le, 0));
        assert_eq!(detect_encoding(b"\x00\x00\x00{"), (Encoding::Utf32Be, 0));
        assert_eq!(detect_encoding(b"1\x00"), (Encoding::Utf16Le, 0));
    }

    #[test]
    fn every_encoding_decodes_to_the_same_text() {
        let text = r#"{"prompt": "é ✓ 𝄞"}"#;
        let utf16le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let utf16be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        let utf32le: Vec<u8> = text
            .chars()
            .flat_map(|c| u32::from(c).to_le_bytes())
            .collect();
        let utf32be: Vec<u8> = text
            .chars()
            .flat_map(|c| u32::from(c).to_be_bytes())
            .collect();
        let mut with_mark = b"\xff\xfe".to_vec();
        with_mark.extend(&utf16le);
        let mut utf8_mark = b"\xef\xbb\xbf".to_vec();
        utf8_mark.extend(text.as_bytes());
        for bytes in [
            text.as_bytes().to_vec(),
            utf8_mark,
            utf16le,
            utf16be,
            utf32le,
            utf32be,
            with_mark,
        ] {
            assert_eq!(decode_text(&bytes).unwrap(), text, "{bytes:?}");
        }
        assert!(matches!(
            decode_text(text.as_bytes()).unwrap(),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn undecodable_bytes_are_not_text() {
        assert_eq!(decode_text(b"{\"a\": \"\xff\"}"), Err(NotText));
        assert_eq!(decode_text(b"\xff\xfe{\x00}"), Err(NotText));
        // A lone high surrogate in UTF-16.
        assert_eq!(decode_text(b"\xff\xfe\x00\xd8"), Err(NotText));
    }

    #[test]
    fn raw_members_keep_their_text_and_pythons_duplicate_rule() {
        let text = r#" { "b" : [1, 2] , "a": NaN, "b": {"x": "y"} } "#;
        let object = RawObject::parse(text).unwrap().unwrap();
        let members: Vec<(&str, &str)> = object
            .members()
            .map(|(name, span)| (name, &text[span]))
            .collect();
        assert_eq!(members, [("b", r#"{"x": "y"}"#), ("a", "NaN")]);
        assert_eq!(RawObject::parse("[1]").unwrap(), None);
        assert!(RawObject::parse(r#"{"a": 1,}"#).is_err());
        assert!(RawObject::parse(r#"{"a": 1} x"#).is_err());
        assert!(RawObject::parse(r#"{"a": nan}"#).is_err());
    }

    #[test]
    fn non_finite_numbers_become_null_and_are_reported() {
        assert_eq!(to_value("NaN").unwrap(), (Value::Null, NonFinite::Itself));
        assert_eq!(
            to_value("-Infinity").unwrap(),
            (Value::Null, NonFinite::Itself)
        );
        assert_eq!(
            to_value(r#"{"a": [1, Infinity]}"#).unwrap(),
            (json!({"a": [1, null]}), NonFinite::Inside)
        );
        assert_eq!(to_value("1.5").unwrap(), (json!(1.5), NonFinite::None));
        assert_eq!(to_value("1e400").unwrap(), (Value::Null, NonFinite::Itself));
        let (value, report) =
            to_value_with_members(r#"{"cfg_scale": NaN, "prompt": "p", "width": 64}"#).unwrap();
        assert_eq!(
            value,
            json!({"cfg_scale": null, "prompt": "p", "width": 64})
        );
        assert_eq!(report, [("cfg_scale".to_owned(), NonFinite::Itself)]);
    }
}
