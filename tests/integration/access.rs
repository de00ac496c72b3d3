//! Client keys and roles: who may do what, how a key is presented, and that Forge never sees
//! one.

use std::time::Duration;

use base64::Engine as _;
use http::StatusCode;
use serde_json::{json, Value};

use crate::support::{
    client, get_json_as, journal_of, proxy_error, sim, sim_with, Proxy, FLUX, SD15,
};
use crate::webuiapi::run_client_at;

const READ: &str = "read-key-7f3a";
const GENERATE: &str = "generate-key-91bc";
const GENERATE_2: &str = "other-bot-key-55d0";
const ADMIN: &str = "admin-key-c2e8";

fn keys_toml(extra: &str) -> String {
    format!(
        r#"
[[access.keys]]
name = "viewer"
key = "{READ}"
role = "read"

[[access.keys]]
name = "discord-bot"
key = "{GENERATE}"
role = "generate"
{extra}

[[access.keys]]
name = "other-bot"
key = "{GENERATE_2}"
role = "generate"

[[access.keys]]
name = "ops"
key = "{ADMIN}"
role = "admin"
"#
    )
}

/// How a client presents its key.
#[derive(Clone, Copy, Debug)]
enum Style {
    Bearer,
    Basic,
    ApiKey,
}

fn with_key(request: reqwest::RequestBuilder, key: &str, style: Style) -> reqwest::RequestBuilder {
    match style {
        Style::Bearer => request.bearer_auth(key),
        Style::Basic => request.basic_auth("any-user", Some(key)),
        Style::ApiKey => request.header("x-api-key", key),
    }
}

async fn keyed_proxy(sim: &forge_sim::SimServer, backend_extra: &str, key_extra: &str) -> Proxy {
    Proxy::start(
        &sim.url(),
        &format!("{backend_extra}\n{}", keys_toml(key_extra)),
    )
    .await
}

/// One request to the proxy, with `key` (if any) presented in `style`; its status.
async fn status_of(
    proxy: &Proxy,
    method: &str,
    path: &str,
    key: Option<&str>,
    style: Style,
) -> u16 {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client().request(method.clone(), proxy.url(path));
    if method == reqwest::Method::POST {
        let body = match path {
            "/sdapi/v1/txt2img" | "/proxy/plan/txt2img" => {
                json!({"prompt": "role check", "steps": 1, "override_settings": {"sd_model_checkpoint": SD15}})
            }
            "/sdapi/v1/options" => json!({"jpeg_quality": 80}),
            _ => json!({}),
        };
        request = request.json(&body);
    }
    if let Some(key) = key {
        request = with_key(request, key, style);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn each_role_may_do_its_routes_and_no_more() {
    let sim = sim().await;
    let proxy = keyed_proxy(&sim, "", "").await;
    // (method, path, least role: 0 open, 1 read, 2 generate, 3 admin)
    let routes = [
        ("GET", "/proxy/health", 0),
        ("GET", "/proxy/ready", 0),
        ("GET", "/proxy/status", 1),
        ("GET", "/proxy/metrics", 1),
        ("GET", "/sdapi/v1/sd-models", 1),
        ("GET", "/sdapi/v1/options", 1),
        ("GET", "/sdapi/v1/progress", 1),
        ("POST", "/proxy/plan/txt2img", 2),
        ("POST", "/sdapi/v1/txt2img", 2),
        ("POST", "/sdapi/v1/png-info", 2),
        ("POST", "/sdapi/v1/interrupt", 2),
        ("POST", "/sdapi/v1/skip", 2),
        ("POST", "/sdapi/v1/options", 3),
        ("POST", "/sdapi/v1/unload-checkpoint", 3),
        ("POST", "/sdapi/v1/refresh-checkpoints", 3),
        ("GET", "/", 3),
    ];
    let keys = [(1, READ), (2, GENERATE), (3, ADMIN)];
    let styles = [Style::Bearer, Style::Basic, Style::ApiKey];
    let mut checked = 0;
    for (i, (method, path, least)) in routes.iter().enumerate() {
        let anonymous = status_of(&proxy, method, path, None, Style::Bearer).await;
        if *least == 0 {
            assert_eq!(anonymous, 200, "{method} {path} without a key");
        } else {
            assert_eq!(anonymous, 401, "{method} {path} without a key");
        }
        for (j, (rank, key)) in keys.iter().enumerate() {
            let style = styles[(i + j) % styles.len()];
            let status = status_of(&proxy, method, path, Some(key), style).await;
            if rank >= least {
                assert!(
                    status != 401 && status != 403,
                    "{method} {path} with role {rank} ({style:?}) was refused: {status}"
                );
            } else {
                assert_eq!(status, 403, "{method} {path} with role {rank} ({style:?})");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, routes.len() * keys.len());
}

#[tokio::test]
async fn no_key_is_a_401_with_a_challenge_and_a_low_role_a_403_naming_the_role() {
    let sim = sim().await;
    let proxy = keyed_proxy(&sim, "", "").await;

    let missing = client()
        .get(proxy.url("/sdapi/v1/sd-models"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        missing.headers()["www-authenticate"],
        "Basic realm=\"forge-vram-proxy\""
    );
    let text = "forge-vram-proxy: this proxy needs a client key: send it as Authorization: Bearer KEY, as the password of HTTP Basic, or as X-Api-Key";
    assert_eq!(
        missing.json::<Value>().await.unwrap(),
        proxy_error("Unauthorized", text)
    );

    let unknown = client()
        .get(proxy.url("/sdapi/v1/sd-models"))
        .bearer_auth("not-a-key")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        unknown.headers()["www-authenticate"],
        "Basic realm=\"forge-vram-proxy\""
    );
    let text = "forge-vram-proxy: the client key is not one of this proxy's keys";
    assert_eq!(
        unknown.json::<Value>().await.unwrap(),
        proxy_error("Unauthorized", text)
    );

    let low = client()
        .post(proxy.url("/sdapi/v1/options"))
        .basic_auth("me", Some(GENERATE))
        .json(&json!({"jpeg_quality": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(low.status(), StatusCode::FORBIDDEN);
    assert!(!low.headers().contains_key("www-authenticate"));
    let text = "forge-vram-proxy: key \"discord-bot\" (role generate) may not POST /sdapi/v1/options: that needs role admin";
    assert_eq!(
        low.json::<Value>().await.unwrap(),
        proxy_error("Forbidden", text)
    );
    assert!(
        journal_of(&sim, "options").is_empty(),
        "nothing refused reached Forge"
    );
}

#[tokio::test]
async fn forge_never_sees_a_client_key_and_gets_the_backends_own_credentials() {
    let sim = sim_with(|c| c.api_auth = Some("forge:s3cret".into())).await;
    let proxy = keyed_proxy(&sim, "auth = \"forge:s3cret\"", "").await;
    let styles = [Style::Bearer, Style::Basic, Style::ApiKey];
    for (i, key) in [READ, GENERATE, ADMIN].iter().enumerate() {
        let style = styles[i];
        let listed = with_key(client().get(proxy.url("/sdapi/v1/sd-models")), key, style);
        assert_eq!(listed.send().await.unwrap().status(), StatusCode::OK);
    }
    for (i, key) in [GENERATE, ADMIN].iter().enumerate() {
        let generated = with_key(client().post(proxy.url("/sdapi/v1/txt2img")), key, styles[i + 1])
            .json(&json!({"prompt": "keyed", "steps": 1, "override_settings": {"sd_model_checkpoint": FLUX}}));
        assert_eq!(generated.send().await.unwrap().status(), StatusCode::OK);
    }
    let set = with_key(
        client().post(proxy.url("/sdapi/v1/options")),
        ADMIN,
        Style::ApiKey,
    )
    .json(&json!({"jpeg_quality": 77}));
    assert_eq!(set.send().await.unwrap().status(), StatusCode::OK);

    let backend_auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("forge:s3cret")
    );
    let requests = sim.state().requests();
    assert!(requests.len() >= 6, "{requests:?}");
    for request in &requests {
        let headers = request["headers"].as_object().unwrap();
        for value in headers.values() {
            let value = value.as_str().unwrap();
            for key in [READ, GENERATE, GENERATE_2, ADMIN] {
                assert!(!value.contains(key), "Forge saw a client key: {request}");
            }
            let encoded =
                |k: &str| base64::engine::general_purpose::STANDARD.encode(format!("any-user:{k}"));
            assert!(
                !value.contains(&encoded(GENERATE)),
                "Forge saw a client key: {request}"
            );
        }
        assert!(!headers.contains_key("x-api-key"), "{request}");
        assert_eq!(headers["authorization"], backend_auth.as_str(), "{request}");
    }
}

#[tokio::test]
async fn a_key_with_max_queued_waiting_generations_gets_429_with_retry_after() {
    let sim = sim_with(|c| c.time_scale = 0.002).await;
    let proxy = keyed_proxy(&sim, "", "max_queued = 1").await;
    let long =
        json!({"prompt": "long", "steps": 400, "override_settings": {"sd_model_checkpoint": SD15}});
    let send = |key: &'static str, body: Value| {
        let url = proxy.url("/sdapi/v1/txt2img");
        tokio::spawn(async move { client().post(url).bearer_auth(key).json(&body).send().await })
    };
    let running = send(GENERATE, long.clone());
    wait_until(&proxy, |s| s["backends"][0]["running"].is_object()).await;
    let waiting = send(GENERATE, long.clone());
    wait_until(&proxy, |s| {
        s["backends"][0]["queue"]
            .as_array()
            .is_some_and(|q| q.len() == 1)
    })
    .await;

    let refused = client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .bearer_auth(GENERATE)
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "{retry}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "KeyQueueFull");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("forge-vram-proxy: key \"discord-bot\" has 1 generations waiting, its limit (access.keys max_queued); try again in "),
        "{body}"
    );

    // Another key is not limited by this one's queue.
    let other = send(GENERATE_2, json!({"prompt": "other", "steps": 1}));
    wait_until(&proxy, |s| {
        s["backends"][0]["queue"]
            .as_array()
            .is_some_and(|q| q.len() == 2)
    })
    .await;
    for handle in [running, waiting, other] {
        assert_eq!(handle.await.unwrap().unwrap().status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn interrupt_from_another_key_leaves_the_generation_running() {
    let sim = sim_with(|c| c.time_scale = 0.002).await;
    let proxy = keyed_proxy(&sim, "", "").await;
    let url = proxy.url("/sdapi/v1/txt2img");
    let body =
        json!({"prompt": "mine", "steps": 300, "override_settings": {"sd_model_checkpoint": SD15}});
    let first = tokio::spawn({
        let (url, body) = (url.clone(), body.clone());
        async move {
            client()
                .post(url)
                .bearer_auth(GENERATE)
                .json(&body)
                .send()
                .await
        }
    });
    wait_until(&proxy, |s| s["backends"][0]["running"].is_object()).await;

    for (path, answer) in [
        ("/sdapi/v1/interrupt", json!({})),
        ("/sdapi/v1/skip", Value::Null),
    ] {
        let other = client()
            .post(proxy.url(path))
            .bearer_auth(GENERATE_2)
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), StatusCode::OK, "{path}");
        assert_eq!(
            other.json::<Value>().await.unwrap(),
            answer,
            "answered as Forge does when nothing runs"
        );
    }
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    let ran = journal_of(&sim, "generation");
    assert_eq!(ran.last().unwrap()["outcome"], "ok", "{ran:?}");
    assert_eq!(ran.last().unwrap()["steps"], 300);

    // The key's own interrupt reaches Forge.
    let second = tokio::spawn(async move {
        client()
            .post(url)
            .bearer_auth(GENERATE)
            .json(&body)
            .send()
            .await
    });
    wait_until(&proxy, |s| s["backends"][0]["running"].is_object()).await;
    let own = client()
        .post(proxy.url("/sdapi/v1/interrupt"))
        .bearer_auth(GENERATE)
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), StatusCode::OK);
    assert_eq!(second.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(
        journal_of(&sim, "generation").last().unwrap()["outcome"],
        "interrupted"
    );
}

#[tokio::test]
async fn status_shows_other_keys_decisions_only_to_admins_and_counts_requests_per_key() {
    let sim = sim().await;
    let proxy = keyed_proxy(&sim, "", "").await;
    for key in [GENERATE, GENERATE_2] {
        let response = client()
            .post(proxy.url("/sdapi/v1/txt2img"))
            .bearer_auth(key)
            .json(&json!({"prompt": "who", "steps": 1, "override_settings": {"sd_model_checkpoint": FLUX}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let decisions = |key: &'static str| {
        let url = proxy.url("/proxy/status");
        async move {
            let status: Value = get_json_as(url, key).await;
            status["decisions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["key"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(decisions(ADMIN).await, ["discord-bot", "other-bot"]);
    assert_eq!(decisions(GENERATE).await, ["discord-bot"]);
    assert!(decisions(READ).await.is_empty());

    let metrics = client()
        .get(proxy.url("/proxy/metrics"))
        .bearer_auth(READ)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"forge_proxy_client_requests_total{key="discord-bot",route="txt2img",status="200"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn webuiapi_with_set_auth_and_a_key_as_password_runs_a_generation() {
    let sim = sim().await;
    let proxy = keyed_proxy(&sim, "", "").await;
    let seen = run_client_at("webuiapi_auth.py", proxy.addr.port(), &[GENERATE]).await;
    assert_eq!(seen["images"], 1, "{seen}");
    assert_eq!(seen["seed"], 5);
    assert_eq!(seen["models"], 3);
    assert_eq!(journal_of(&sim, "generation").len(), 1);
}

/// Polls `/proxy/status` (as an admin) until `ready` holds, for at most 10 s.
async fn wait_until(proxy: &Proxy, ready: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status: Value = get_json_as(proxy.url("/proxy/status"), ADMIN).await;
        if ready(&status) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
