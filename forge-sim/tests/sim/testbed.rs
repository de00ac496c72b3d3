//! The simulator's own `/sim/` endpoints, and stopping the server.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::{fast, get, post, sim, small_txt2img};

#[tokio::test]
async fn journal_lists_everything_in_order_and_delete_clears_it() {
    let server = sim(fast()).await;
    post(
        &server,
        "/sdapi/v1/options",
        json!({"forge_inference_memory": 3072}),
    )
    .await;
    post(&server, "/sdapi/v1/txt2img", small_txt2img()).await;
    let (_, journal) = get(&server, "/sim/journal").await;
    let journal = journal.as_array().unwrap().clone();
    assert_eq!(journal.len(), 2);
    assert_eq!(journal[0]["seq"], 1);
    assert_eq!(journal[0]["kind"], "options");
    assert_eq!(
        journal[0]["changed"],
        json!({"forge_inference_memory": 3072.0})
    );
    assert_eq!(journal[0]["low_vram"], false);
    let generation = &journal[1];
    assert_eq!(generation["seq"], 2);
    for (key, value) in [
        ("kind", json!("generation")),
        ("route", json!("txt2img")),
        ("checkpoint", json!("v1-5-pruned-emaonly.safetensors")),
        ("family", json!("sd15")),
        ("forge_inference_memory", json!(3072.0)),
        ("gpu_weights_mib", json!(9216.0)),
        ("reloaded", json!(true)),
        ("outcome", json!("ok")),
        ("low_vram", json!(false)),
        ("slowdown", json!(1.0)),
        ("width", json!(512)),
        ("height", json!(512)),
        ("batch_size", json!(1)),
        ("n_iter", json!(1)),
        ("steps", json!(4)),
    ] {
        assert_eq!(generation[key], value, "{key}");
    }
    assert!(generation["task_id"]
        .as_str()
        .unwrap()
        .starts_with("task(txt2img-"));
    for key in ["duration_ms", "wall_ms", "started_ms", "ended_ms"] {
        assert!(generation[key].is_number(), "{key}");
    }

    let response = reqwest::Client::new()
        .delete(format!("{}/sim/journal", server.url()))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    assert!(server.state().journal().is_empty());
    post(&server, "/sdapi/v1/options", json!({"jpeg_quality": 81})).await;
    assert_eq!(server.state().journal()[0]["seq"], 3);
}

#[tokio::test]
async fn bytes_sends_exactly_n_bytes_with_content_length() {
    let server = sim(fast()).await;
    let n: u64 = 10 * 1024 * 1024 + 123;
    let response = reqwest::get(format!("{}/sim/bytes?n={n}", server.url()))
        .await
        .unwrap();
    assert_eq!(response.content_length(), Some(n));
    let mut stream = response.bytes_stream();
    let mut received: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk
            .iter()
            .enumerate()
            .all(|(i, &b)| b == ((received + i as u64) % 256) as u8));
        received += chunk.len() as u64;
    }
    assert_eq!(received, n);
}

#[tokio::test]
async fn sse_events_arrive_as_they_are_produced() {
    let server = sim(fast()).await;
    let started = Instant::now();
    let response = reqwest::get(format!("{}/sim/sse?count=3&interval_ms=300", server.url()))
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    let mut first_event_at = None;
    while let Some(chunk) = stream.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        if first_event_at.is_none() && text.contains("\n\n") {
            first_event_at = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    assert_eq!(
        text,
        "data: {\"n\": 0}\n\ndata: {\"n\": 1}\n\ndata: {\"n\": 2}\n\n"
    );
    assert!(total >= Duration::from_millis(600), "{total:?}");
    let first = first_event_at.unwrap();
    assert!(
        first < Duration::from_millis(300),
        "first event after {first:?}"
    );
}

#[tokio::test]
async fn websocket_echoes_text_and_binary() {
    let server = sim(fast()).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/sim/ws", server.addr))
        .await
        .unwrap();
    socket.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("hello")
    );
    socket.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn sink_counts_and_checksums_a_streamed_body() {
    let server = sim(fast()).await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..64).map(|_| Ok(vec![7u8; 65536])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/sim/sink", server.url()))
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer,
        json!({"bytes": 64 * 65536, "checksum": 7 * 64 * 65536})
    );
}

#[tokio::test]
async fn echo_describes_the_request_it_got() {
    let server = sim(fast()).await;
    let answer: Value = reqwest::Client::new()
        .put(format!("{}/sim/echo/some/path?x=1&y=2", server.url()))
        .header("x-test", "a")
        .body("12345")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["method"], "PUT");
    assert_eq!(answer["path"], "/sim/echo/some/path");
    assert_eq!(answer["query"], "x=1&y=2");
    assert_eq!(answer["headers"]["x-test"], "a");
    assert_eq!(answer["body_len"], 5);
}

#[tokio::test]
async fn delay_answers_after_the_delay() {
    let server = sim(fast()).await;
    let started = Instant::now();
    let (_, answer) = get(&server, "/sim/delay?ms=150").await;
    assert_eq!(answer, json!({"ok": true}));
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn stop_closes_open_connections() {
    let server = sim(fast()).await;
    let url = server.url();
    let response = reqwest::get(format!("{url}/sim/sse?count=1000&interval_ms=50"))
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    stream.next().await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(5), server.stop())
        .await
        .expect("stop returns promptly");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the open stream was closed");
    assert!(
        reqwest::get(format!("{url}/sim/journal")).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn run_lets_requests_in_flight_finish_after_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(forge_sim::run(listener, fast(), async {
        let _ = stopped.await;
    }));
    let request = tokio::spawn(reqwest::get(format!("{url}/sim/delay?ms=300")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"ok": true}));
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("run returns after the drain")
        .unwrap()
        .unwrap();
}
