//! What Forge's HTTP layer does around its handlers: Starlette's gzip, FastAPI's 405 on
//! `HEAD`, pydantic's error links, the exact sampler list, and the endpoints beside the
//! generations (`/openapi.json`, `/docs`, `png-info`, `extra-single-image`, `interrogate`).

use std::io::Read;

use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};

use crate::{Answer, Target};

/// The body of a gzipped answer, inflated.
fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("a valid gzip stream");
    out
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("JSON")
}

async fn get_with(target: &Target, path: &str, accept_encoding: &str) -> Answer {
    target
        .send(
            target
                .request(Method::GET, path)
                .header("accept-encoding", accept_encoding),
        )
        .await
}

async fn post_with(target: &Target, path: &str, body: &Value, accept_encoding: &str) -> Answer {
    target
        .send(
            target
                .request(Method::POST, path)
                .header("accept-encoding", accept_encoding)
                .json(body),
        )
        .await
}

/// Asserts a gzipped answer as Starlette's `GZipResponder` makes it and returns its JSON.
fn gzipped_json(answer: &Answer, what: &str) -> Value {
    assert_eq!(answer.header("content-encoding"), Some("gzip"), "{what}");
    assert_eq!(answer.header("vary"), Some("Accept-Encoding"), "{what}");
    // Sent in one piece: the compressed length, not chunks.
    assert_eq!(
        answer.header("content-length"),
        Some(answer.bytes.len().to_string().as_str()),
        "{what}"
    );
    json_of(&gunzip(&answer.bytes))
}

fn assert_plain(answer: &Answer, what: &str) {
    assert_eq!(answer.header("content-encoding"), None, "{what}");
    assert_eq!(answer.header("vary"), None, "{what}");
}

#[tokio::test]
async fn answers_of_1000_bytes_or_more_are_gzipped_when_the_client_accepts_gzip() {
    // modules/initialize_util.py `setup_middleware`: GZipMiddleware(minimum_size=1000) on the
    // whole app, API-only mode included (webui.py `api_only_worker`).
    let target = Target::open().await;

    let options = get_with(&target, "/sdapi/v1/options", "gzip").await;
    assert_eq!(options.status, 200);
    let options = gzipped_json(&options, "options");
    assert!(options.get("sd_model_checkpoint").is_some());
    assert_plain(
        &target.get("/sdapi/v1/options").await,
        "options, no gzip asked",
    );

    // starlette/middleware/gzip.py: `if "gzip" in headers.get("Accept-Encoding", "")`, a
    // plain substring test: `gzip;q=0` counts, `GZIP` does not.
    let samplers = get_with(&target, "/sdapi/v1/samplers", "gzip;q=0").await;
    assert!(gzipped_json(&samplers, "samplers, q=0").is_array());
    let upper = get_with(&target, "/sdapi/v1/samplers", "GZIP").await;
    assert_plain(&upper, "samplers, GZIP");
    assert!(json_of(&upper.bytes).is_array());
    let openapi = get_with(&target, "/openapi.json", "gzip, deflate, br").await;
    assert_eq!(gzipped_json(&openapi, "openapi.json")["openapi"], "3.1.0");

    // Under 1000 bytes: untouched, and no `vary` either.
    let progress = get_with(&target, "/sdapi/v1/progress", "gzip").await;
    assert!(progress.bytes.len() < 1000);
    assert_plain(&progress, "progress");
    assert!(progress.json().get("state").is_some());

    // A long 422 is compressed like any answer.
    let long = "x".repeat(1200);
    let invalid = post_with(
        &target,
        "/sdapi/v1/txt2img",
        &json!({"steps": long}),
        "gzip",
    )
    .await;
    assert_eq!(invalid.status, 422);
    assert_eq!(
        gzipped_json(&invalid, "422")["detail"][0]["type"],
        "int_parsing"
    );

    // An exception's 500 comes from ServerErrorMiddleware, outside the gzip middleware.
    let failed = post_with(
        &target,
        "/sdapi/v1/options",
        &json!({"sd_model_checkpoint": long}),
        "gzip",
    )
    .await;
    assert_eq!(failed.status, 500);
    assert!(failed.bytes.len() >= 1000);
    assert_plain(&failed, "exception 500");
    assert_eq!(failed.json()["error"], "RuntimeError");

    // A generation.
    let body = json!({"prompt": "gzip", "steps": 1, "width": 64, "height": 64});
    let generated = post_with(&target, "/sdapi/v1/txt2img", &body, "gzip").await;
    assert_eq!(generated.status, 200);
    let generated = gzipped_json(&generated, "txt2img");
    assert_eq!(generated["images"].as_array().map(Vec::len), Some(1));
    assert_eq!(generated["parameters"]["prompt"], "gzip");
    assert!(generated["info"].is_string());
}

#[tokio::test]
async fn head_on_an_api_route_is_405_and_the_docs_take_it() {
    // FastAPI's APIRoute keeps only the listed methods; Starlette's own Route (the docs) adds
    // HEAD to GET (starlette/routing.py `Route.__init__`).
    let target = Target::open().await;
    for (path, allow) in [
        ("/sdapi/v1/options", "GET"),
        ("/sdapi/v1/sd-models", "GET"),
        ("/sdapi/v1/progress", "GET"),
        ("/sdapi/v1/txt2img", "POST"),
    ] {
        let answer = target.send(target.request(Method::HEAD, path)).await;
        assert_eq!(answer.status, 405, "HEAD {path}");
        assert_eq!(answer.header("allow"), Some(allow), "HEAD {path}");
        // The 405's body is not sent to a HEAD, but its length is.
        assert_eq!(answer.header("content-length"), Some("31"), "HEAD {path}");
        assert!(answer.bytes.is_empty());
    }
    // The first route of a path answers a 405: GET for /options, whose POST is its own route.
    let delete = target
        .send(target.request(Method::DELETE, "/sdapi/v1/options"))
        .await;
    assert_eq!(
        (delete.status.as_u16(), delete.header("allow")),
        (405, Some("GET"))
    );
    assert_eq!(delete.json(), json!({"detail": "Method Not Allowed"}));
    for path in ["/docs", "/openapi.json"] {
        let answer = target.send(target.request(Method::HEAD, path)).await;
        assert_eq!(answer.status, 200, "HEAD {path}");
    }
}

#[tokio::test]
async fn img2img_with_no_init_images_is_an_index_error() {
    // api.py `img2imgapi` only rejects `None`; an empty list fails in processing, and
    // webui.py's exception handler answers with torch's message.
    let target = Target::open().await;
    let answer = target
        .post(
            "/sdapi/v1/img2img",
            &json!({"init_images": [], "steps": 1, "width": 64, "height": 64}),
        )
        .await;
    assert_eq!(answer.status, 500);
    assert_eq!(
        std::str::from_utf8(&answer.bytes).unwrap(),
        r#"{"error":"IndexError","detail":"","body":"","message":"Dimension out of range (expected to be in range of [-1, 0], but got 1)"}"#
    );
}

#[tokio::test]
async fn validation_errors_link_pydantics_documentation() {
    let target = Target::open().await;
    let answer = target
        .post("/sdapi/v1/txt2img", &json!({"steps": "many"}))
        .await;
    assert_eq!(answer.status, 422);
    assert_eq!(
        answer.json(),
        json!({"detail": [{
            "type": "int_parsing", "loc": ["body", "steps"],
            "msg": "Input should be a valid integer, unable to parse string as an integer",
            "input": "many", "url": "https://errors.pydantic.dev/2.8/v/int_parsing",
        }]})
    );
    let empty = target
        .send(
            target
                .request(Method::POST, "/sdapi/v1/txt2img")
                .header("content-type", "application/json"),
        )
        .await;
    assert_eq!(
        empty.json()["detail"][0]["url"],
        "https://errors.pydantic.dev/2.8/v/missing"
    );
    // `json_invalid` is FastAPI's own error: no link.
    let not_json = target
        .send(
            target
                .request(Method::POST, "/sdapi/v1/txt2img")
                .header("content-type", "application/json")
                .body("not json"),
        )
        .await;
    let entry = &not_json.json()["detail"][0];
    assert_eq!(entry["type"], "json_invalid");
    assert!(entry.get("url").is_none());
}

/// `GET /sdapi/v1/samplers` of Forge f2.0.1v1.10.1, byte for byte.
const SAMPLERS: &str = concat!(
    r#"[{"name":"DPM++ 2M","aliases":["k_dpmpp_2m"],"options":{"scheduler":"karras"}},"#,
    r#"{"name":"DPM++ SDE","aliases":["k_dpmpp_sde"],"options":{"scheduler":"karras","second_order":true,"brownian_noise":true}},"#,
    r#"{"name":"DPM++ 2M SDE","aliases":["k_dpmpp_2m_sde"],"options":{"scheduler":"exponential","brownian_noise":true}},"#,
    r#"{"name":"DPM++ 2M SDE Heun","aliases":["k_dpmpp_2m_sde_heun"],"options":{"scheduler":"exponential","brownian_noise":true,"solver_type":"heun"}},"#,
    r#"{"name":"DPM++ 2S a","aliases":["k_dpmpp_2s_a"],"options":{"scheduler":"karras","uses_ensd":true,"second_order":true}},"#,
    r#"{"name":"DPM++ 3M SDE","aliases":["k_dpmpp_3m_sde"],"options":{"scheduler":"exponential","discard_next_to_last_sigma":true,"brownian_noise":true}},"#,
    r#"{"name":"Euler a","aliases":["k_euler_a","k_euler_ancestral"],"options":{"uses_ensd":true}},"#,
    r#"{"name":"Euler","aliases":["k_euler"],"options":{}},"#,
    r#"{"name":"LMS","aliases":["k_lms"],"options":{}},"#,
    r#"{"name":"Heun","aliases":["k_heun"],"options":{"second_order":true}},"#,
    r#"{"name":"DPM2","aliases":["k_dpm_2"],"options":{"scheduler":"karras","discard_next_to_last_sigma":true,"second_order":true}},"#,
    r#"{"name":"DPM2 a","aliases":["k_dpm_2_a"],"options":{"scheduler":"karras","discard_next_to_last_sigma":true,"uses_ensd":true,"second_order":true}},"#,
    r#"{"name":"DPM fast","aliases":["k_dpm_fast"],"options":{"uses_ensd":true}},"#,
    r#"{"name":"DPM adaptive","aliases":["k_dpm_ad"],"options":{"uses_ensd":true}},"#,
    r#"{"name":"Restart","aliases":["restart"],"options":{"scheduler":"karras","second_order":true}},"#,
    r#"{"name":"HeunPP2","aliases":["heunpp2"],"options":{}},"#,
    r#"{"name":"IPNDM","aliases":["ipndm"],"options":{}},"#,
    r#"{"name":"IPNDM_V","aliases":["ipndm_v"],"options":{}},"#,
    r#"{"name":"DEIS","aliases":["deis"],"options":{}},"#,
    r#"{"name":"DDIM","aliases":["ddim"],"options":{}},"#,
    r#"{"name":"DDIM CFG++","aliases":["ddim_cfgpp"],"options":{}},"#,
    r#"{"name":"PLMS","aliases":["plms"],"options":{}},"#,
    r#"{"name":"UniPC","aliases":["unipc"],"options":{}},"#,
    r#"{"name":"LCM","aliases":["k_lcm"],"options":{}},"#,
    r#"{"name":"DDPM","aliases":["ddpm"],"options":{}}]"#,
);

#[tokio::test]
async fn samplers_are_forges_with_their_scheduler_and_boolean_options() {
    let target = Target::open().await;
    let answer = target.get("/sdapi/v1/samplers").await;
    assert_eq!(answer.status, 200);
    assert_eq!(std::str::from_utf8(&answer.bytes).unwrap(), SAMPLERS);
}

/// Every `$ref` in `value`.
fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                match (key.as_str(), item) {
                    ("$ref", Value::String(target)) => out.push(target),
                    _ => refs(item, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs(item, out)),
        _ => {}
    }
}

#[tokio::test]
async fn openapi_documents_the_routes_and_docs_is_swagger_ui() {
    let target = Target::open().await;
    let answer = target.get("/openapi.json").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let doc = answer.json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"], json!({"title": "FastAPI", "version": "0.1.0"}));
    // FastAPI's operationId: the function name, the path with `_` for non-word
    // characters, the method.
    for (path, method, id) in [
        (
            "/sdapi/v1/txt2img",
            "post",
            "text2imgapi_sdapi_v1_txt2img_post",
        ),
        (
            "/sdapi/v1/img2img",
            "post",
            "img2imgapi_sdapi_v1_img2img_post",
        ),
        (
            "/sdapi/v1/options",
            "get",
            "get_config_sdapi_v1_options_get",
        ),
        (
            "/sdapi/v1/options",
            "post",
            "set_config_sdapi_v1_options_post",
        ),
        (
            "/sdapi/v1/progress",
            "get",
            "progressapi_sdapi_v1_progress_get",
        ),
        (
            "/sdapi/v1/png-info",
            "post",
            "pnginfoapi_sdapi_v1_png_info_post",
        ),
        (
            "/sdapi/v1/extra-single-image",
            "post",
            "extras_single_image_api_sdapi_v1_extra_single_image_post",
        ),
        (
            "/sdapi/v1/interrogate",
            "post",
            "interrogateapi_sdapi_v1_interrogate_post",
        ),
        (
            "/sdapi/v1/sd-models",
            "get",
            "get_sd_models_sdapi_v1_sd_models_get",
        ),
        ("/sdapi/v1/memory", "get", "get_memory_sdapi_v1_memory_get"),
        (
            "/sdapi/v1/samplers",
            "get",
            "get_samplers_sdapi_v1_samplers_get",
        ),
    ] {
        let operation = &doc["paths"][path][method];
        assert_eq!(operation["operationId"], id, "{method} {path}");
        assert_eq!(
            operation["responses"]["200"]["description"],
            "Successful Response"
        );
    }
    assert_eq!(
        doc["paths"]["/sdapi/v1/txt2img"]["post"]["summary"],
        "Text2Imgapi"
    );
    assert_eq!(
        doc["paths"]["/sdapi/v1/progress"]["get"]["parameters"][0]["name"],
        "skip_current_image"
    );
    let schemas = &doc["components"]["schemas"];
    let txt2img = &schemas["StableDiffusionProcessingTxt2Img"]["properties"];
    assert_eq!(txt2img["steps"]["default"], 50);
    assert_eq!(txt2img["n_iter"]["title"], "N Iter");
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty());
    for reference in found {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{reference} points outside the schemas"));
        assert!(schemas.get(name).is_some(), "{reference} resolves");
    }

    // fastapi/openapi/docs.py `get_swagger_ui_html`: a page that loads Swagger UI from its CDN.
    let docs = target.get("/docs").await;
    assert_eq!(docs.status, 200);
    assert_eq!(
        docs.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = std::str::from_utf8(&docs.bytes).unwrap();
    assert!(html.contains("<title>FastAPI - Swagger UI</title>"));
    assert!(html.contains("url: '/openapi.json'"));
    assert!(html.contains("SwaggerUIBundle"));
}

/// A PNG of `width` x `height` black pixels with `texts` as tEXt chunks, in base64.
fn png_with_text(width: u32, height: u32, texts: &[(&str, &str)]) -> String {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    for (key, text) in texts {
        encoder
            .add_text_chunk((*key).into(), (*text).into())
            .unwrap();
    }
    let pixels = vec![0u8; (width * height * 3) as usize];
    encoder
        .write_header()
        .unwrap()
        .write_image_data(&pixels)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Width and height of a base64 PNG.
fn png_size(encoded: &str) -> (u32, u32) {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let be32 = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be32(16), be32(20))
}

#[tokio::test]
async fn png_info_parses_the_parameters_chunk_like_the_ui_paste() {
    // api.py `pnginfoapi`: `read_info_from_image`, then `parse_generation_parameters`.
    let target = Target::open().await;
    let infotext = "a (cat)\nNegative prompt: a dog\nSteps: 3, Sampler: Euler, CFG scale: 7, \
                    Seed: 9, Size: 8x8, Comment: \"a, b\"";
    let image = png_with_text(8, 8, &[("parameters", infotext), ("foo", "bar")]);
    let answer = target
        .post("/sdapi/v1/png-info", &json!({"image": image}))
        .await;
    assert_eq!(answer.status, 200);
    let expected = json!({
        "info": infotext,
        "items": {"foo": "bar"},
        "parameters": {
            "Steps": "3", "Sampler": "Euler", "CFG scale": "7", "Seed": "9",
            "Size-1": "8", "Size-2": "8", "Comment": "a, b",
            "Prompt": "a (cat)", "Negative prompt": "a dog", "Clip skip": "1",
            "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
            "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
            "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
            "Masked content": "original", "Inpaint area": "Whole picture",
            "Masked area padding": 32, "RNG": "GPU", "Schedule type": "Automatic",
            "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
            "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
            "Emphasis": "Original", "Refiner switch by sampling steps": false,
            "Hires VAE/TE": ["Use same choices"],
        },
    });
    assert_eq!(answer.json(), expected);
    let keys: Vec<String> = answer.json()["parameters"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let expected_keys: Vec<String> = expected["parameters"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys, expected_keys, "in Forge's order");

    // Without a parameters chunk: empty info, the defaults parsed from "".
    let plain = target
        .post(
            "/sdapi/v1/png-info",
            &json!({"image": format!("data:image/png;base64,{}", png_with_text(4, 4, &[]))}),
        )
        .await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.json()["info"], "");
    assert_eq!(plain.json()["parameters"]["Prompt"], "");

    // The image is required and a string; what is not an image is a 500.
    let missing = target.post("/sdapi/v1/png-info", &json!({})).await;
    assert_eq!(missing.status, 422);
    assert_eq!(
        missing.json()["detail"][0],
        json!({"type": "missing", "loc": ["body", "image"], "msg": "Field required",
               "input": {}, "url": "https://errors.pydantic.dev/2.8/v/missing"})
    );
    let null = target
        .post("/sdapi/v1/png-info", &json!({"image": null}))
        .await;
    assert_eq!(null.status, 422);
    assert_eq!(null.json()["detail"][0]["type"], "string_type");
    for bad in ["", "not an image"] {
        let answer = target
            .post("/sdapi/v1/png-info", &json!({"image": bad}))
            .await;
        assert_eq!(
            (answer.status.as_u16(), answer.json()),
            (500, json!({"detail": "Invalid encoded image"})),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn extra_single_image_upscales_and_reports_like_forge() {
    // api.py `extras_single_image_api` → postprocessing.py `run_extras` →
    // scripts/postprocessing_upscale.py, modules/upscaler.py (sizes down to a multiple of 8).
    let target = Target::open().await;
    let image = png_with_text(8, 8, &[]);
    let untouched = target
        .post("/sdapi/v1/extra-single-image", &json!({"image": image}))
        .await;
    assert_eq!(untouched.status, 200);
    let body = untouched.json();
    assert_eq!(body["html_info"], "<p></p>", "upscaler None does nothing");
    assert_eq!(png_size(body["image"].as_str().unwrap()), (8, 8));

    let by = target
        .post(
            "/sdapi/v1/extra-single-image",
            &json!({"image": image, "upscaler_1": "Lanczos"}),
        )
        .await;
    assert_eq!(by.status, 200);
    let body = by.json();
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["html_info", "image"]);
    assert_eq!(
        body["html_info"],
        "<p>Postprocess upscale by: 2, Postprocess upscaler: Lanczos</p>"
    );
    assert_eq!(png_size(body["image"].as_str().unwrap()), (16, 16));

    let to = target
        .post(
            "/sdapi/v1/extra-single-image",
            &json!({"image": image, "upscaler_1": "Lanczos", "resize_mode": 1,
                    "upscaling_resize_w": 20, "upscaling_resize_h": 10}),
        )
        .await;
    let body = to.json();
    assert_eq!(
        body["html_info"],
        "<p>Postprocess upscale to: 20x10, Postprocess crop to: 20x10, Postprocess upscaler: Lanczos</p>"
    );
    assert_eq!(png_size(body["image"].as_str().unwrap()), (20, 10));

    let unknown = target
        .post(
            "/sdapi/v1/extra-single-image",
            &json!({"image": image, "upscaler_1": "nope"}),
        )
        .await;
    assert_eq!(unknown.status, 500);
    assert_eq!(
        unknown.json(),
        json!({"error": "AssertionError", "detail": "", "body": "",
               "message": "could not find upscaler named nope"})
    );
    let not_an_image = target
        .post("/sdapi/v1/extra-single-image", &json!({"image": "xx"}))
        .await;
    assert_eq!(
        (not_an_image.status.as_u16(), not_an_image.json()),
        (500, json!({"detail": "Invalid encoded image"}))
    );
    let invalid = target
        .post(
            "/sdapi/v1/extra-single-image",
            &json!({"image": image, "resize_mode": 2, "gfpgan_visibility": 3,
                    "upscaling_resize_w": 0}),
        )
        .await;
    assert_eq!(invalid.status, 422);
    assert_eq!(
        invalid.json(),
        json!({"detail": [
            {"type": "literal_error", "loc": ["body", "resize_mode"], "msg": "Input should be 0 or 1",
             "input": 2, "ctx": {"expected": "0 or 1"},
             "url": "https://errors.pydantic.dev/2.8/v/literal_error"},
            {"type": "less_than_equal", "loc": ["body", "gfpgan_visibility"],
             "msg": "Input should be less than or equal to 1", "input": 3, "ctx": {"le": 1.0},
             "url": "https://errors.pydantic.dev/2.8/v/less_than_equal"},
            {"type": "greater_than_equal", "loc": ["body", "upscaling_resize_w"],
             "msg": "Input should be greater than or equal to 1", "input": 0, "ctx": {"ge": 1},
             "url": "https://errors.pydantic.dev/2.8/v/greater_than_equal"},
        ]})
    );
}

#[tokio::test]
async fn interrogate_answers_a_caption_or_forges_errors() {
    // api.py `interrogateapi`: decode, then the model inside the queue.
    let target = Target::open().await;
    let image = png_with_text(8, 8, &[]);
    let answer = target
        .post("/sdapi/v1/interrogate", &json!({"image": image}))
        .await;
    assert_eq!(answer.status, 200);
    let body = answer.json();
    assert_eq!(body.as_object().map(|o| o.len()), Some(1));
    // A caption, or `<error>` from a Forge whose BLIP repository is missing.
    assert!(body["caption"].is_string());

    let unknown = target
        .post(
            "/sdapi/v1/interrogate",
            &json!({"image": image, "model": "nope"}),
        )
        .await;
    assert_eq!(
        (unknown.status.as_u16(), unknown.json()),
        (404, json!({"detail": "Model not found"}))
    );
    // The image defaults to "", which is not an image.
    let no_image = target.post("/sdapi/v1/interrogate", &json!({})).await;
    assert_eq!(
        (no_image.status.as_u16(), no_image.json()),
        (500, json!({"detail": "Invalid encoded image"}))
    );
    let null = target
        .post("/sdapi/v1/interrogate", &json!({"image": null}))
        .await;
    assert_eq!(null.status, 422);
    assert_eq!(
        null.json()["detail"][0],
        json!({"type": "string_type", "loc": ["body", "image"],
               "msg": "Input should be a valid string", "input": null,
               "url": "https://errors.pydantic.dev/2.8/v/string_type"})
    );
}
