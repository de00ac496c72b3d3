use super::*;
use crate::config::from_toml_str;
use crate::proxy::route::{self, Route};

const TOML: &str = r#"
[[access.keys]]
name = "viewer"
key = "read-key"
role = "read"

[[access.keys]]
name = "bot"
key = "generate-key"
role = "generate"
max_queued = 2

[[access.keys]]
name = "ops"
key_sha256 = "8c5a3f0e4d86a2f41e6ee0c9d0ff3e1b3c9b2b0a1a8e9b9e4a2f2e4b6c0d1e2f"
role = "admin"
"#;

fn access() -> Access {
    from_toml_str(TOML).unwrap().access
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

fn knock<'a>(method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> Knock<'a> {
    Knock {
        addr: None,
        peer: None,
        method,
        path,
        headers,
    }
}

fn need_of(method: Method, path: &str) -> Need {
    let routes = vec![
        "/sdapi/v1/txt2img".to_owned(),
        "/sdapi/v1/img2img".to_owned(),
    ];
    let decoded = route::decode(path);
    need(
        Route::classify(&method, path, &routes),
        &method,
        &decoded,
        &routes,
    )
}

#[test]
fn a_key_is_read_from_bearer_basic_or_x_api_key() {
    let access = access();
    let admitted = |h: HeaderMap| {
        admit(
            &access,
            Need::Role(Role::Read),
            knock(&Method::GET, "/", &h),
        )
        .map(|c| c.key_name().unwrap().to_owned())
    };
    assert_eq!(
        admitted(headers(&[("authorization", "Bearer generate-key")])).unwrap(),
        "bot"
    );
    assert_eq!(
        admitted(headers(&[("authorization", "bearer  read-key ")])).unwrap(),
        "viewer"
    );
    let basic = basic("any-user", "generate-key");
    assert_eq!(
        admitted(headers(&[("authorization", &basic)])).unwrap(),
        "bot"
    );
    assert_eq!(
        admitted(headers(&[("x-api-key", "read-key")])).unwrap(),
        "viewer"
    );
    assert_eq!(admitted(headers(&[])), Err(Denied::NoKey));
    assert_eq!(
        admitted(headers(&[("authorization", "Bearer nope")])),
        Err(Denied::UnknownKey)
    );
    assert_eq!(
        admitted(headers(&[("authorization", "Digest x")])),
        Err(Denied::NoKey)
    );
}

#[test]
fn a_key_given_as_its_sha256_matches_the_key() {
    let hex: String = Sha256::digest(b"ops-key")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let toml =
        format!("[[access.keys]]\nname = \"ops\"\nkey_sha256 = \"{hex}\"\nrole = \"admin\"\n");
    let access = from_toml_str(&toml).unwrap().access;
    let caller = admit(
        &access,
        Need::Role(Role::Admin),
        knock(
            &Method::POST,
            "/sdapi/v1/options",
            &headers(&[("x-api-key", "ops-key")]),
        ),
    )
    .unwrap();
    assert_eq!(caller.key_name(), Some("ops"));
}

#[test]
fn a_role_too_low_is_told_what_it_needs() {
    let denied = admit(
        &access(),
        Need::Role(Role::Admin),
        knock(
            &Method::POST,
            "/sdapi/v1/options",
            &headers(&[("authorization", "Bearer generate-key")]),
        ),
    )
    .unwrap_err();
    assert_eq!(
        denied.to_string(),
        "key \"bot\" (role generate) may not POST /sdapi/v1/options: that needs role admin"
    );
}

#[test]
fn health_and_readiness_are_open_and_everything_else_needs_its_role() {
    use Role::*;
    let cases = [
        (Method::GET, "/proxy/health", Need::Open),
        (Method::GET, "/proxy/ready", Need::Open),
        (Method::GET, "/proxy/status", Need::Role(Read)),
        (Method::GET, "/proxy/metrics", Need::Role(Read)),
        (Method::POST, "/proxy/plan/txt2img", Need::Role(Generate)),
        (Method::GET, "/sdapi/v1/progress", Need::Role(Read)),
        (Method::HEAD, "/sdapi/v1/sd-models", Need::Role(Read)),
        (Method::GET, "/sdapi/v1/options", Need::Role(Read)),
        (Method::POST, "/sdapi/v1/txt2img", Need::Role(Generate)),
        (Method::POST, "/sdapi/v1/%74xt2img", Need::Role(Generate)),
        (Method::POST, "/sdapi/v1/txt2img/", Need::Role(Generate)),
        (Method::POST, "/sdapi/v1/img2img", Need::Role(Generate)),
        (
            Method::POST,
            "/sdapi/v1/extra-single-image",
            Need::Role(Generate),
        ),
        (
            Method::POST,
            "/sdapi/v1/extra-batch-images",
            Need::Role(Generate),
        ),
        (Method::POST, "/sdapi/v1/png-info", Need::Role(Generate)),
        (Method::POST, "/sdapi/v1/interrogate", Need::Role(Generate)),
        (Method::POST, "/sdapi/v1/interrupt", Need::Role(Generate)),
        (Method::POST, "/sdapi/v1/skip", Need::Role(Generate)),
        (Method::POST, "/sdapi/v1/options", Need::Role(Admin)),
        (Method::POST, "/sdapi/v1/server-kill", Need::Role(Admin)),
        (Method::POST, "/sdapi/v1/server-%6Bill", Need::Role(Admin)),
        (
            Method::POST,
            "/sdapi/v1/unload-checkpoint",
            Need::Role(Admin),
        ),
        (
            Method::POST,
            "/sdapi/v1/reload-checkpoint",
            Need::Role(Admin),
        ),
        (
            Method::POST,
            "/sdapi/v1/refresh-checkpoints",
            Need::Role(Admin),
        ),
        (Method::POST, "/sdapi/v1/refresh-loras", Need::Role(Admin)),
        (Method::GET, "/", Need::Role(Admin)),
        (Method::POST, "/queue/join", Need::Role(Admin)),
        (Method::GET, "/file=outputs/x.png", Need::Role(Admin)),
        (Method::GET, "/docs", Need::Role(Admin)),
    ];
    for (method, path, expected) in cases {
        assert_eq!(need_of(method.clone(), path), expected, "{method} {path}");
    }
}

#[test]
fn without_keys_every_caller_is_let_in_with_its_own_credentials() {
    let access = Access::default();
    let caller = admit(
        &access,
        Need::Role(Role::Admin),
        knock(
            &Method::POST,
            "/sdapi/v1/server-kill",
            &headers(&[("authorization", "Basic dTpw")]),
        ),
    )
    .unwrap();
    assert!(caller.key.is_none());
    assert_eq!(caller.authorization.unwrap(), "Basic dTpw");
}

#[test]
fn keys_are_validated_by_name_with_one_source_each() {
    let err = |toml: &str| from_toml_str(toml).unwrap_err().to_string();
    assert_eq!(
        err("[[access.keys]]\nname = \"a\"\nrole = \"read\"\n"),
        "config key `access.keys[0]`: \"a\" is not valid: expected exactly one of key, key_sha256, key_env, key_file"
    );
    assert_eq!(
        err("[[access.keys]]\nname = \"a\"\nkey = \"x\"\nkey_env = \"Y\"\nrole = \"read\"\n"),
        "config key `access.keys[0]`: \"a\" is not valid: expected exactly one of key, key_sha256, key_env, key_file"
    );
    assert_eq!(
        err("[[access.keys]]\nname = \"a\"\nkey = \"x\"\nrole = \"root\"\n"),
        "config key `access.keys[0].role`: \"root\" is not valid: expected \"read\", \"generate\" or \"admin\""
    );
    assert_eq!(
        err("[[access.keys]]\nname = \"a\"\nkey = \"x\"\nrole = \"read\"\n[[access.keys]]\nname = \"a\"\nkey = \"y\"\nrole = \"read\"\n"),
        "config key `access.keys[1].name`: \"a\" is not valid: expected a name no other key has"
    );
    assert_eq!(
        err("[[access.keys]]\nname = \"a\"\nkey_sha256 = \"abc\"\nrole = \"read\"\n"),
        "config key `access.keys[0].key_sha256`: \"(hidden)\" is not valid: expected 64 hexadecimal digits: the SHA-256 of the key"
    );
    assert_eq!(
        err("[[access.keys]]\nname = \"a\"\nkey_env = \"FORGE_VRAM_PROXY_TEST_UNSET_KEY\"\nrole = \"read\"\n"),
        "config key `access.keys[0].key_env`: \"FORGE_VRAM_PROXY_TEST_UNSET_KEY\" is not valid: expected an environment variable that is set"
    );
    assert_eq!(
        err("[access]\ntrusted_proxies = [\"10.0.0.0/33\"]\n"),
        "config key `access.trusted_proxies[0]`: \"10.0.0.0/33\" is not valid: expected an address or CIDR range like 10.0.0.0/8"
    );
}
