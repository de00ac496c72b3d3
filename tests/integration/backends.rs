//! Several backends: scheduling with model affinity, health, queue limits, retries.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use forge_sim::{SimServer, SimState};
use http::StatusCode;
use serde_json::{json, Value};

use crate::support::{client, get_json, sim_with, Proxy, XorShift, FLUX, SD15, SDXL};

fn backend_toml(url: &str, extra: &str) -> String {
    format!("[[backends]]\nurl = \"{url}\"\nvram_source = \"backend\"\n{extra}\n")
}

/// The right forge_inference_memory for a family on a card (the embedded profiles).
fn memory_for(card: u64, family: &str) -> f64 {
    match (card, family) {
        (24576, "flux") => 12288.0,
        (24576, "sdxl") => 17920.0,
        (24576, "sd15") => 22528.0,
        (12288, "flux") => 4096.0,
        (12288, "sdxl") => 5632.0,
        (12288, "sd15") => 10240.0,
        other => panic!("no expectation for {other:?}"),
    }
}

fn body(checkpoint: &str, task: &str, steps: u32) -> Value {
    json!({"prompt": "x", "steps": steps, "force_task_id": task,
           "override_settings": {"sd_model_checkpoint": checkpoint}})
}

/// Sends `requests` (checkpoint, task id) from `clients` concurrent clients; statuses by task.
async fn run_load(
    url: String,
    requests: Vec<(&'static str, String)>,
    clients: usize,
    steps: u32,
) -> BTreeMap<String, (u16, Value)> {
    let queue = Arc::new(Mutex::new(requests));
    let results = Arc::new(Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let queue = queue.clone();
        let results = results.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Some((checkpoint, task)) = queue.lock().unwrap().pop() else {
                    break;
                };
                let response = client()
                    .post(&url)
                    .json(&body(checkpoint, &task, steps))
                    .send()
                    .await
                    .expect("a response for every request");
                let status = response.status().as_u16();
                let answer: Value = response.json().await.unwrap_or(Value::Null);
                let previous = results.lock().unwrap().insert(task, (status, answer));
                assert!(previous.is_none(), "answered twice");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(results).unwrap().into_inner().unwrap()
}

struct Run {
    reloads: usize,
    max_bypassed: u64,
}

/// 300 generations, a seeded three-profile mix, 24 clients, three backends: two 24 GiB
/// and one 12 GiB that may serve only sd15 and sdxl.
async fn three_backend_run(scheduler: &str) -> Run {
    let cards = [24576u64, 24576, 12288];
    let mut sims = Vec::new();
    for card in cards {
        sims.push(sim_with(|c| c.vram_mib = card).await);
    }
    let config = format!(
        "{}{}{}[scheduler]\n{scheduler}\nqueue_per_backend = 300\nqueue_total = 300\n",
        backend_toml(&sims[0].url(), ""),
        backend_toml(&sims[1].url(), ""),
        backend_toml(&sims[2].url(), "profiles = [\"sd15\", \"sdxl\"]"),
    );
    let proxy = Proxy::start_toml(&config).await;
    let mut rng = XorShift(0x0ddb_a11c_0ffe_e123);
    let requests: Vec<(&str, String)> = (0..300)
        .map(|i| {
            (
                [FLUX, SDXL, SD15][(rng.next() % 3) as usize],
                format!("task({i})"),
            )
        })
        .collect();
    let expected: BTreeSet<String> = requests.iter().map(|(_, t)| t.clone()).collect();
    let results = run_load(proxy.url("/sdapi/v1/txt2img"), requests, 24, 4).await;
    assert_eq!(results.len(), 300, "every request answered once");
    for (task, (status, answer)) in &results {
        assert_eq!(*status, 200, "{task}: {answer}");
    }
    let mut ran = BTreeSet::new();
    let mut reloads = 0;
    for (sim, card) in sims.iter().zip(cards) {
        for g in sim
            .state()
            .journal()
            .iter()
            .filter(|e| e["kind"] == "generation")
        {
            let family = g["family"].as_str().unwrap();
            if card == 12288 {
                assert_ne!(family, "flux", "flux ran on the backend not allowed for it");
            }
            assert_eq!(g["forge_inference_memory"], memory_for(card, family), "{g}");
            assert!(
                ran.insert(g["task_id"].as_str().unwrap().to_owned()),
                "ran twice: {g}"
            );
            // A model read from its file again: what routing to a backend that has the
            // profile avoids. (Weights moved back from RAM also follow every generation
            // whose override_settings switched the checkpoint and restored it, as in Forge,
            // whatever the routing.)
            reloads += usize::from(g["load"] == "disk");
        }
    }
    assert_eq!(ran, expected, "every request ran exactly once");
    let status: Value = get_json(proxy.url("/proxy/status")).await;
    Run {
        reloads,
        max_bypassed: status["scheduler"]["max_bypassed"].as_u64().unwrap(),
    }
}

#[tokio::test]
async fn affinity_scheduling_halves_reloads_against_fifo_random_routing() {
    let affinity =
        three_backend_run("routing = \"affinity\"\nmax_bypass = 4\nmax_wait = \"60s\"").await;
    let baseline = three_backend_run("routing = \"random\"\nmax_bypass = 0").await;
    eprintln!(
        "reloads for 300 generations: affinity scheduling {}, FIFO with random routing {}",
        affinity.reloads, baseline.reloads
    );
    assert!(
        affinity.reloads * 2 <= baseline.reloads,
        "affinity {} vs baseline {}",
        affinity.reloads,
        baseline.reloads
    );
    assert!(
        affinity.max_bypassed <= 4,
        "passed over {} times",
        affinity.max_bypassed
    );
    assert_eq!(baseline.max_bypassed, 0);
}

async fn status(proxy: &Proxy) -> Value {
    get_json(proxy.url("/proxy/status")).await
}

/// Waits until `check` holds for the proxy's status.
async fn wait_for(proxy: &Proxy, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if check(&status(proxy).await) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn generations(state: &SimState) -> Vec<String> {
    state
        .journal()
        .iter()
        .filter(|e| e["kind"] == "generation" && e["outcome"] == "ok")
        .map(|e| e["task_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_backend_killed_mid_run_fails_only_its_running_generation_and_comes_back() {
    let a = sim_with(|c| c.time_scale = 0.02).await;
    let b = sim_with(|c| c.time_scale = 0.02).await;
    let a_addr = a.addr;
    let a_state = a.state().clone();
    let health = "[health]\ninterval = \"100ms\"\nunhealthy_after = 1\nhealthy_after = 1\n";
    let config = format!(
        "{}{}{health}",
        backend_toml(&a.url(), ""),
        backend_toml(&b.url(), "")
    );
    let proxy = Proxy::start_toml(&config).await;
    let requests: Vec<(&str, String)> = (0..40).map(|i| (SD15, format!("task(k{i})"))).collect();
    let load = tokio::spawn(run_load(proxy.url("/sdapi/v1/txt2img"), requests, 8, 20));
    // Kill backend A while it is generating.
    wait_for(&proxy, "A to run a generation", |s| {
        s["backends"][0]["running"].is_object() && generations(&a_state).len() >= 2
    })
    .await;
    a.stop().await;
    let results = load.await.unwrap();
    assert_eq!(results.len(), 40, "every request answered");
    let failed: Vec<(&String, &(u16, Value))> =
        results.iter().filter(|(_, (s, _))| *s != 200).collect();
    assert!(
        failed.len() <= 1,
        "only A's running generation may fail: {failed:?}"
    );
    for (task, (status, answer)) in &failed {
        assert_eq!(*status, 502, "{task}");
        assert_eq!(answer["error"], "BackendFailed", "{answer}");
    }
    let ran_a = generations(&a_state);
    let ran_b = generations(&b.state().clone());
    for (task, (status, _)) in &results {
        let times = ran_a.iter().chain(&ran_b).filter(|t| *t == task).count();
        if *status == 200 {
            assert_eq!(times, 1, "{task} ran {times} times");
        } else {
            assert!(!ran_b.contains(task), "{task} was sent twice");
        }
    }
    let s = status(&proxy).await;
    assert_eq!(s["backends"][0]["healthy"], false);
    assert!(
        s["backends"][0]["health"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{s}"
    );

    // A comes back on the same address: it gets work again.
    let listener = tokio::net::TcpListener::bind(a_addr)
        .await
        .expect("rebind A's address");
    let config = forge_sim::SimConfig {
        time_scale: 0.02,
        ..forge_sim::SimConfig::default()
    };
    let (stop_a, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(forge_sim::run(listener, config, async move {
        let _ = stopped.await;
    }));
    wait_for(&proxy, "A to be healthy again", |s| {
        s["backends"][0]["healthy"] == true
    })
    .await;
    let more: Vec<(&str, String)> = (0..10).map(|i| (SD15, format!("task(back{i})"))).collect();
    let results = run_load(proxy.url("/sdapi/v1/txt2img"), more, 4, 20).await;
    assert!(results.values().all(|(s, _)| *s == 200));
    let journal: Value = get_json(format!("http://{a_addr}/sim/journal")).await;
    let back_on_a = journal
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "generation")
        .count();
    assert!(back_on_a > 0, "A received work again");
    let _ = stop_a.send(());
    drop(b);
}

async fn slow_sim() -> SimServer {
    // A first SD 1.5 generation: about a second (model load included).
    sim_with(|c| c.time_scale = 0.2).await
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let sim = slow_sim().await;
    let config = format!(
        "{}[scheduler]\nqueue_per_backend = 1\nqueue_total = 1\n",
        backend_toml(&sim.url(), "")
    );
    let proxy = Proxy::start_toml(&config).await;
    let url = proxy.url("/sdapi/v1/txt2img");
    let first = tokio::spawn(client().post(&url).json(&body(SD15, "task(q1)", 20)).send());
    wait_for(&proxy, "the first to run", |s| {
        s["backends"][0]["running"].is_object()
    })
    .await;
    let second = tokio::spawn(client().post(&url).json(&body(SD15, "task(q2)", 20)).send());
    wait_for(&proxy, "the second to wait", |s| {
        s["backends"][0]["queue_length"] == 1
    })
    .await;
    let third = client()
        .post(&url)
        .json(&body(SD15, "task(q3)", 20))
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = third.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let answer: Value = third.json().await.unwrap();
    assert_eq!(answer["error"], "QueueFull");
    assert_eq!(
        answer["message"],
        format!("forge-vram-proxy: the generation queue is full (1 waiting); try again in {retry_after}s")
    );
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(second.await.unwrap().unwrap().status(), StatusCode::OK);
    let ran = generations(sim.state());
    assert_eq!(
        ran,
        ["task(q1)", "task(q2)"],
        "the refused one never reached Forge"
    );
}

#[tokio::test]
async fn a_client_that_disconnects_while_queued_never_reaches_forge() {
    let sim = slow_sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    let url = proxy.url("/sdapi/v1/txt2img");
    let first = tokio::spawn(
        client()
            .post(&url)
            .json(&body(SD15, "task(stays)", 20))
            .send(),
    );
    wait_for(&proxy, "the first to run", |s| {
        s["backends"][0]["running"].is_object()
    })
    .await;
    let leaver = tokio::spawn(
        client()
            .post(&url)
            .json(&body(SD15, "task(leaves)", 20))
            .send(),
    );
    wait_for(&proxy, "the second to queue", |s| {
        s["backends"][0]["queue_length"] == 1
    })
    .await;
    leaver.abort();
    wait_for(&proxy, "the queue to empty while the first runs", |s| {
        s["backends"][0]["queue_length"] == 0 && s["backends"][0]["running"].is_object()
    })
    .await;
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    // Longer than one generation: a forwarded leaver would be in the journal by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(generations(sim.state()), ["task(stays)"]);
}

#[tokio::test]
async fn progress_polls_follow_the_clients_running_generation() {
    let idle = sim_with(|_| {}).await;
    let busy = slow_sim().await;
    let config = format!(
        "{}{}",
        backend_toml(&idle.url(), "profiles = [\"flux\"]"),
        backend_toml(&busy.url(), "")
    );
    let proxy = Proxy::start_toml(&config).await;
    let url = proxy.url("/sdapi/v1/txt2img");
    let running = tokio::spawn(
        client()
            .post(&url)
            .json(&body(SD15, "task(followed)", 20))
            .send(),
    );
    wait_for(&proxy, "the generation to run on the second backend", |s| {
        s["backends"][1]["running"].is_object()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let progress: Value = get_json(proxy.url("/sdapi/v1/progress")).await;
        if progress["state"]["job_count"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the poll never reached the busy backend: {progress}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(running.await.unwrap().unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn a_client_forge_refuses_gets_forges_401_and_changes_nothing() {
    // Forge's --api-auth decides what a client may do, behind the proxy as without it: the
    // proxy's calls for a client carry that client's credentials, whatever `auth` the
    // backend has configured for the proxy's own background calls.
    let sim = sim_with(|c| c.api_auth = Some("forge:s3cret".into())).await;
    for configured in ["auth = \"forge:s3cret\"", ""] {
        let proxy = Proxy::start_toml(&backend_toml(&sim.url(), configured)).await;
        for (credentials, detail) in [
            (None, "Not authenticated"),
            (Some("guess"), "Incorrect username or password"),
        ] {
            // Flux over the SD 1.5 Forge has: a memory change, were it allowed.
            let mut request =
                client()
                    .post(proxy.url("/sdapi/v1/txt2img"))
                    .json(&body(FLUX, "task(refused)", 2));
            if let Some(password) = credentials {
                request = request.basic_auth("forge", Some(password));
            }
            let response = request.send().await.unwrap();
            let what = format!("{configured:?}, {credentials:?}");
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
            assert_eq!(response.headers()["www-authenticate"], "Basic", "{what}");
            assert!(response.headers().get("x-forge-proxy-error").is_none());
            assert_eq!(
                response.json::<Value>().await.unwrap(),
                json!({"detail": detail}),
                "{what}"
            );
        }
        assert_eq!(
            crate::support::journal_of(&sim, "options"),
            Vec::<Value>::new(),
            "nothing changed for a refused client ({configured})"
        );
    }
    // The right credentials: managed as before.
    let proxy = Proxy::start_toml(&backend_toml(&sim.url(), "")).await;
    let response = client()
        .post(proxy.url("/sdapi/v1/txt2img"))
        .basic_auth("forge", Some("s3cret"))
        .json(&body(FLUX, "task(allowed)", 2))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-forge-proxy-profile"], "flux");
    let proxys_calls: Vec<Value> = crate::support::journal_of(&sim, "options")
        .into_iter()
        .filter(|e| e["source"] == "api")
        .collect();
    assert_eq!(proxys_calls.len(), 1, "{proxys_calls:?}");
    assert_eq!(proxys_calls[0]["changed"]["forge_inference_memory"], 4096.0);
}

/// Polls `/proxy/status` until the first backend's health note is no longer "not checked yet".
async fn checked_backend(proxy: &Proxy) -> Value {
    for _ in 0..100 {
        let status = crate::support::get_json(proxy.url("/proxy/status")).await;
        let backend = status["backends"][0].clone();
        if backend["credentials"] != "not_checked" {
            return backend;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the health check never ran");
}

#[tokio::test]
async fn status_says_when_forge_needs_credentials_the_proxy_lacks() {
    // Forge's --api-auth protects /progress, the health check's route, too.
    let sim = sim_with(|c| c.api_auth = Some("forge:s3cret".into())).await;
    let health = "[health]\ninterval = \"50ms\"\n";

    let without = Proxy::start_toml(&format!("{}{health}", backend_toml(&sim.url(), ""))).await;
    let backend = checked_backend(&without).await;
    assert_eq!(backend["credentials"], "needed");
    assert_eq!(
        backend["health"],
        "credentials needed: check answered 401 Unauthorized; set backends[0].auth to Forge's --api-auth user:pass"
    );

    let wrong = Proxy::start_toml(&format!(
        "{}{health}",
        backend_toml(&sim.url(), "auth = \"forge:guess\"")
    ))
    .await;
    assert_eq!(checked_backend(&wrong).await["credentials"], "refused");

    let right = Proxy::start_toml(&format!(
        "{}{health}",
        backend_toml(&sim.url(), "auth = \"forge:s3cret\"")
    ))
    .await;
    let backend = checked_backend(&right).await;
    assert_eq!(backend["credentials"], "accepted");
    assert_eq!(backend["healthy"], true);
    assert_eq!(backend["health"], "check answered 200 OK");
}
