//! img2img's input images: Forge decodes each one (`decode_base64_to_image`)
//! and fails the request when it cannot.

use axum::http::StatusCode;
use base64::Engine;
use serde_json::Value;

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
    if text.starts_with("http://") || text.starts_with("https://") {
        return Ok(());
    }
    let encoded = if text.starts_with("data:image/") {
        text.split(';')
            .nth(1)
            .and_then(|rest| rest.split(',').nth(1))
            .unwrap_or_default()
    } else {
        text
    };
    if decodes_to_image(encoded) {
        Ok(())
    } else {
        Err(ApiError::http(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Invalid encoded image",
        ))
    }
}

/// Python's `base64.b64decode` drops characters outside the alphabet; PIL
/// then needs a known image signature.
fn decodes_to_image(encoded: &str) -> bool {
    let cleaned: String = encoded
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
        .collect();
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(cleaned) else {
        return false;
    };
    let signatures: [&[u8]; 7] = [
        b"\x89PNG\r\n\x1a\n",
        b"\xff\xd8\xff",
        b"GIF87a",
        b"GIF89a",
        b"BM",
        b"II*\x00",
        b"MM\x00*",
    ];
    signatures.iter().any(|sig| bytes.starts_with(sig))
        || (bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP")
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
