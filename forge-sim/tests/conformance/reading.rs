//! Which bodies and paths Forge reads as a generation: Python's `json.loads` on the raw bytes
//! (a UTF-8 byte-order mark, UTF-16 and UTF-32, `NaN` and `Infinity`), FastAPI's content
//! types, pydantic's lax ints, and Starlette's routing on the percent-decoded path with a
//! redirect for a trailing slash (starlette/routing.py `Router.app`, `redirect_slashes`).

use reqwest::Method;
use serde_json::{json, Value};

use crate::{Answer, Target};

const BODY: &str =
    r#"{"prompt": "read", "steps": 1, "width": 64, "height": 64, "send_images": false}"#;

async fn post_bytes(target: &Target, path: &str, content_type: &str, bytes: Vec<u8>) -> Answer {
    target
        .send(
            target
                .request(Method::POST, path)
                .header("content-type", content_type)
                .body(bytes),
        )
        .await
}

fn utf16le(text: &str, mark: bool) -> Vec<u8> {
    let mark: &[u8] = if mark { b"\xff\xfe" } else { b"" };
    mark.iter()
        .copied()
        .chain(text.encode_utf16().flat_map(u16::to_le_bytes))
        .collect()
}

fn utf32be(text: &str) -> Vec<u8> {
    text.chars()
        .flat_map(|c| u32::from(c).to_be_bytes())
        .collect()
}

/// A txt2img that ran: 200 with the request echoed.
fn ran(answer: &Answer, what: &str) -> Value {
    assert_eq!(
        answer.status,
        200,
        "{what}: {}",
        String::from_utf8_lossy(&answer.bytes)
    );
    answer.json()["parameters"].clone()
}

#[tokio::test]
async fn bodies_in_every_encoding_python_detects_are_read() {
    let target = Target::open().await;
    let mut bom = b"\xef\xbb\xbf".to_vec();
    bom.extend(BODY.as_bytes());
    let cases = [
        ("UTF-8 with a byte-order mark", bom),
        ("UTF-16 with a byte-order mark", utf16le(BODY, true)),
        ("UTF-16LE without one", utf16le(BODY, false)),
        ("UTF-32BE without one", utf32be(BODY)),
    ];
    for (what, bytes) in cases {
        let answer = post_bytes(&target, "/sdapi/v1/txt2img", "application/json", bytes).await;
        assert_eq!(ran(&answer, what)["prompt"], "read", "{what}");
    }
    // Not JSON by content type: validation sees the bytes.
    let answer = post_bytes(&target, "/sdapi/v1/txt2img", "text/plain", BODY.into()).await;
    assert_eq!(answer.status, 422);
    assert_eq!(answer.json()["detail"][0]["type"], "model_attributes_type");
}

#[tokio::test]
async fn non_finite_numbers_pass_in_floats_and_fail_in_ints_with_a_500() {
    let target = Target::open().await;
    let with = |field: &str, value: &str| {
        BODY.replacen('{', &format!("{{\"{field}\": {value}, "), 1)
            .into_bytes()
    };
    // pydantic's floats allow them; Forge echoes them as null.
    for value in ["NaN", "Infinity", r#""nan""#, r#""-Infinity""#] {
        let answer = post_bytes(
            &target,
            "/sdapi/v1/txt2img",
            "application/json",
            with("cfg_scale", value),
        )
        .await;
        assert_eq!(ran(&answer, value)["cfg_scale"], Value::Null, "{value}");
    }
    // An int refuses them, and the 422 that would say so cannot be written.
    let answer = post_bytes(
        &target,
        "/sdapi/v1/txt2img",
        "application/json",
        BODY.replace("\"width\": 64", "\"width\": NaN").into_bytes(),
    )
    .await;
    assert_eq!(answer.status, 500);
    assert_eq!(
        answer.json(),
        json!({"error": "ValueError", "detail": "", "body": "",
            "message": "Out of range float values are not JSON compliant"})
    );
}

#[tokio::test]
async fn ints_are_pydantics_lax_ints() {
    let target = Target::open().await;
    let with_width = |width: &str| BODY.replace("\"width\": 64", &format!("\"width\": {width}"));
    for (width, expected) in [
        (r#""6_4""#, 64),
        (r#"" 64 ""#, 64),
        (r#""64.0""#, 64),
        ("64.0", 64),
    ] {
        let answer = post_bytes(
            &target,
            "/sdapi/v1/txt2img",
            "application/json",
            with_width(width).into_bytes(),
        )
        .await;
        assert_eq!(ran(&answer, width)["width"], expected, "{width}");
    }
    for (width, kind) in [
        ("64.5", "int_from_float"),
        ("1e19", "int_parsing_size"),
        ("1e308", "int_parsing_size"),
        (r#""wide""#, "int_parsing"),
    ] {
        let answer = post_bytes(
            &target,
            "/sdapi/v1/txt2img",
            "application/json",
            with_width(width).into_bytes(),
        )
        .await;
        assert_eq!(answer.status, 422, "{width}");
        assert_eq!(answer.json()["detail"][0]["type"], kind, "{width}");
    }
}

#[tokio::test]
async fn routes_match_the_percent_decoded_path_and_a_trailing_slash_redirects() {
    let target = Target::open().await;
    for path in [
        "/sdapi/v1/%74xt2img",
        "/sdapi/v1%2Ftxt2img",
        "/sdapi/v1/txt2img?x=%20",
    ] {
        let answer = post_bytes(&target, path, "application/json", BODY.into()).await;
        assert_eq!(ran(&answer, path)["prompt"], "read", "{path}");
    }
    let options = target.get("/sdapi/v1/opt%69ons").await;
    assert_eq!(options.status, 200);
    assert!(options.json().get("sd_model_checkpoint").is_some());
    // Case matters, and `//` is not `/`.
    for path in ["/sdapi/v1/TXT2IMG", "//sdapi/v1/txt2img"] {
        let answer = post_bytes(&target, path, "application/json", BODY.into()).await;
        assert_eq!(answer.status, 404, "{path}");
    }
    // A trailing slash: 307 to the path without it, on the host the client asked for.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut request = client
        .post(target.url("/sdapi/v1/txt2img/"))
        .header("content-type", "application/json")
        .body(BODY);
    if let Some((user, pass)) = &target.auth {
        request = request.basic_auth(user, Some(pass));
    }
    let redirect = request.send().await.unwrap();
    assert_eq!(redirect.status(), 307);
    assert_eq!(
        redirect.headers()["location"],
        target.url("/sdapi/v1/txt2img").as_str()
    );
}
