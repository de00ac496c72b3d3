//! Input images: img2img's `init_images` and `mask`, and the `image` of
//! `png-info`, `extra-single-image` and `interrogate`. Forge decodes each one
//! (api.py `decode_base64_to_image`) and fails the request when it cannot;
//! the simulator reads what it needs without decoding pixels: the format's
//! signature, the size, and a PNG's text chunks.

use std::io::Read;

use axum::http::StatusCode;
use base64::Engine;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::python::py_type_name;

/// Checks one `init_images` entry or the `mask` the way Forge's decoder
/// would: a URL (not fetched here), a `data:image/...;base64,` URI or bare
/// base64 of a PNG, JPEG, WebP, GIF, BMP or TIFF file.
pub fn check(value: &Value) -> Result<(), ApiError> {
    let Some(text) = value.as_str() else {
        return Err(ApiError::Exception {
            error: "AttributeError",
            message: format!(
                "'{}' object has no attribute 'startswith'",
                py_type_name(value)
            ),
        });
    };
    if is_url(text) {
        return Ok(());
    }
    if format(&decode_base64(text)).is_some() {
        Ok(())
    } else {
        Err(invalid_encoded_image())
    }
}

/// An image a request carried, as far as the simulator reads it.
#[derive(Debug)]
pub struct InputImage {
    /// The base64 the request sent, without a `data:` prefix.
    pub base64: String,
    pub format: Format,
    /// Width and height, when the header says them.
    pub size: Option<(u32, u32)>,
    /// What PIL puts in `image.info` from a PNG's chunks: each `tEXt`,
    /// `zTXt` and `iTXt` keyword with its text, `gamma` and `srgb`.
    pub info: Map<String, Value>,
}

/// The formats PIL opens here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Png,
    Jpeg,
    Gif,
    Bmp,
    Tiff,
    WebP,
}

/// `decode_base64_to_image(text)`: the image, or Forge's 500 answers. URLs
/// are not fetched (the simulator has no network): they answer as a URL
/// whose content is not an image would.
pub fn decode(text: &str) -> Result<InputImage, ApiError> {
    if is_url(text) {
        return Err(ApiError::http(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Invalid image url",
        ));
    }
    let encoded = strip_data_uri(text);
    let bytes = decode_base64(text);
    let format = format(&bytes).ok_or_else(invalid_encoded_image)?;
    let size = image_size(format, &bytes);
    let info = if format == Format::Png {
        png_info(&bytes)
    } else {
        Map::new()
    };
    Ok(InputImage {
        base64: encoded.to_owned(),
        format,
        size,
        info,
    })
}

fn is_url(text: &str) -> bool {
    text.starts_with("http://") || text.starts_with("https://")
}

fn invalid_encoded_image() -> ApiError {
    ApiError::http(StatusCode::INTERNAL_SERVER_ERROR, "Invalid encoded image")
}

/// `encoding.split(";")[1].split(",")[1]` for a `data:image/` URI.
fn strip_data_uri(text: &str) -> &str {
    if text.starts_with("data:image/") {
        text.split(';')
            .nth(1)
            .and_then(|rest| rest.split(',').nth(1))
            .unwrap_or_default()
    } else {
        text
    }
}

/// Python's `base64.b64decode` drops characters outside the alphabet.
fn decode_base64(text: &str) -> Vec<u8> {
    let cleaned: String = strip_data_uri(text)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(cleaned)
        .unwrap_or_default()
}

/// The format PIL would recognise from the file's signature.
fn format(bytes: &[u8]) -> Option<Format> {
    let signatures: [(&[u8], Format); 7] = [
        (b"\x89PNG\r\n\x1a\n", Format::Png),
        (b"\xff\xd8\xff", Format::Jpeg),
        (b"GIF87a", Format::Gif),
        (b"GIF89a", Format::Gif),
        (b"BM", Format::Bmp),
        (b"II*\x00", Format::Tiff),
        (b"MM\x00*", Format::Tiff),
    ];
    if let Some((_, format)) = signatures.iter().find(|(sig, _)| bytes.starts_with(sig)) {
        return Some(*format);
    }
    (bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP")
        .then_some(Format::WebP)
}

fn be16(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_be_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn le16(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_le_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Width and height from the format's header.
fn image_size(format: Format, b: &[u8]) -> Option<(u32, u32)> {
    match format {
        Format::Png => Some((be32(b, 16)?, be32(b, 20)?)),
        Format::Gif => Some((le16(b, 6)?, le16(b, 8)?)),
        Format::Bmp => {
            let height = i32::from_le_bytes(b.get(22..26)?.try_into().ok()?);
            Some((le32(b, 18)?, height.unsigned_abs()))
        }
        Format::Jpeg => jpeg_size(b),
        Format::WebP => webp_size(b),
        Format::Tiff => tiff_size(b),
    }
}

/// The first start-of-frame marker's size.
fn jpeg_size(b: &[u8]) -> Option<(u32, u32)> {
    let mut at = 2;
    loop {
        while *b.get(at)? != 0xff {
            at += 1;
        }
        while *b.get(at)? == 0xff {
            at += 1;
        }
        let marker = *b.get(at)?;
        at += 1;
        if matches!(marker, 0xd8 | 0x01 | 0xd0..=0xd7) {
            continue;
        }
        let length = be16(b, at)? as usize;
        if matches!(marker, 0xc0..=0xcf) && !matches!(marker, 0xc4 | 0xc8 | 0xcc) {
            return Some((be16(b, at + 5)?, be16(b, at + 3)?));
        }
        at += length;
    }
}

fn webp_size(b: &[u8]) -> Option<(u32, u32)> {
    match b.get(12..16)? {
        b"VP8 " => Some((le16(b, 26)? & 0x3fff, le16(b, 28)? & 0x3fff)),
        b"VP8L" => {
            let bits = le32(b, 21)?;
            Some(((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1))
        }
        b"VP8X" => {
            let w = le32(b, 24)? & 0xff_ffff;
            let h = le32(b, 27)? & 0xff_ffff;
            Some((w + 1, h + 1))
        }
        _ => None,
    }
}

/// `ImageWidth` (256) and `ImageLength` (257) of the first IFD.
fn tiff_size(b: &[u8]) -> Option<(u32, u32)> {
    let little = b.starts_with(b"II");
    let u16_at = |at| if little { le16(b, at) } else { be16(b, at) };
    let u32_at = |at| if little { le32(b, at) } else { be32(b, at) };
    let ifd = u32_at(4)? as usize;
    let (mut width, mut height) = (None, None);
    for entry in 0..u16_at(ifd)? as usize {
        let at = ifd + 2 + entry * 12;
        let value = match u16_at(at + 2)? {
            3 => u16_at(at + 8)?,
            _ => u32_at(at + 8)?,
        };
        match u16_at(at)? {
            256 => width = Some(value),
            257 => height = Some(value),
            _ => {}
        }
    }
    Some((width?, height?))
}

/// The text PIL's PNG plugin reads into `image.info`.
fn png_info(b: &[u8]) -> Map<String, Value> {
    let mut info = Map::new();
    let mut at = 8;
    while let (Some(length), Some(kind)) = (be32(b, at), b.get(at + 4..at + 8)) {
        let Some(data) = b.get(at + 8..at + 8 + length as usize) else {
            break;
        };
        match kind {
            b"tEXt" => {
                if let Some((key, text)) = split_keyword(data) {
                    info.insert(latin1(key), Value::String(latin1(text)));
                }
            }
            b"zTXt" => {
                if let Some((key, rest)) = split_keyword(data) {
                    if let Some(text) = rest.get(1..).and_then(inflate) {
                        info.insert(latin1(key), Value::String(latin1(&text)));
                    }
                }
            }
            b"iTXt" => {
                if let Some((key, text)) = itxt(data) {
                    info.insert(latin1(key), Value::String(text));
                }
            }
            b"gAMA" if data.len() == 4 => {
                if let Some(gamma) = be32(data, 0) {
                    info.insert(
                        "gamma".into(),
                        serde_json::json!(f64::from(gamma) / 100_000.0),
                    );
                }
            }
            b"sRGB" if data.len() == 1 => {
                info.insert("srgb".into(), serde_json::json!(data[0]));
            }
            b"IEND" => break,
            _ => {}
        }
        at += 12 + length as usize;
    }
    info
}

fn split_keyword(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = data.iter().position(|&c| c == 0)?;
    Some((&data[..nul], &data[nul + 1..]))
}

/// keyword, compression flag and method, language, translated keyword, text.
fn itxt(data: &[u8]) -> Option<(&[u8], String)> {
    let (key, rest) = split_keyword(data)?;
    let (flag, rest) = (*rest.first()?, rest.get(2..)?);
    let (_language, rest) = split_keyword(rest)?;
    let (_translated, text) = split_keyword(rest)?;
    let text = if flag == 1 {
        inflate(text)?
    } else {
        text.to_vec()
    };
    Some((key, String::from_utf8(text).ok()?))
}

fn inflate(compressed: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(compressed)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn png_base64_and_data_uri_are_images() {
        let png = crate::images::noise_png(8, 8, 100);
        assert!(check(&json!(b64(&png))).is_ok());
        assert!(check(&json!(format!("data:image/png;base64,{}", b64(&png)))).is_ok());
    }

    #[test]
    fn urls_are_accepted_without_fetching() {
        assert!(check(&json!("https://example.invalid/a.png")).is_ok());
    }

    #[test]
    fn text_is_an_invalid_encoded_image() {
        let error = check(&json!(b64(b"hello"))).unwrap_err();
        assert!(
            matches!(error, ApiError::Http { ref detail, .. } if detail == "Invalid encoded image")
        );
        assert!(check(&json!("not base64 at all!")).is_err());
    }

    #[test]
    fn decode_reads_size_and_png_text() {
        let png = crate::images::noise_png(24, 16, 100);
        let image = decode(&b64(&png)).unwrap();
        assert_eq!((image.format, image.size), (Format::Png, Some((24, 16))));
        assert!(image.info.is_empty());

        let mut with_text = Vec::new();
        let mut encoder = png::Encoder::new(&mut with_text, 2, 2);
        encoder.set_color(png::ColorType::Grayscale);
        encoder
            .add_text_chunk("parameters".into(), "a cat\nSteps: 3".into())
            .unwrap();
        encoder
            .add_itxt_chunk("comment".into(), "caf\u{e9}".into())
            .unwrap();
        encoder
            .write_header()
            .unwrap()
            .write_image_data(&[0; 4])
            .unwrap();
        let image = decode(&format!("data:image/png;base64,{}", b64(&with_text))).unwrap();
        assert_eq!(image.info["parameters"], "a cat\nSteps: 3");
        assert_eq!(image.info["comment"], "caf\u{e9}");
    }

    #[test]
    fn sizes_of_other_formats() {
        let gif = b"GIF89a\x0a\x00\x05\x00";
        assert_eq!(image_size(Format::Gif, gif), Some((10, 5)));
        let jpeg = [
            0xff, 0xd8, 0xff, 0xe0, 0x00, 0x04, 0x00, 0x00, 0xff, 0xc0, 0x00, 0x11, 0x08, 0x00,
            0x30, 0x00, 0x40,
        ];
        assert_eq!(image_size(Format::Jpeg, &jpeg), Some((64, 48)));
        assert!(matches!(
            decode("https://example.invalid/a.png"),
            Err(ApiError::Http { ref detail, .. }) if detail == "Invalid image url"
        ));
    }

    #[test]
    fn non_string_is_an_attribute_error() {
        assert!(matches!(
            check(&json!(5)),
            Err(ApiError::Exception {
                error: "AttributeError",
                ..
            })
        ));
    }
}
