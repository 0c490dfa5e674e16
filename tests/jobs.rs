//! Jobs outlive their connections, against the real binary on 127.0.0.1: streams longer
//! than the idle rule, clients that leave a begun render, the in-flight bound held by
//! abandoned work, and the async job API.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::binary::{gateway_binary, Process};
use common::*;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The binary's test settings: 100 for alice, 10 a image.
fn start(env: &[(&str, &str)]) -> (Process, TestServer, std::path::PathBuf) {
    let dir = temp_dir("jobs");
    let port = free_port();
    let process = Process::start_with(&gateway_binary(), &dir, port, env);
    let server = TestServer::at(SocketAddr::from(([127, 0, 0, 1], port)));
    (process, server, dir)
}

/// Alice's `(available, held, charged)`; her 100 deposited is all three.
async fn money(server: &TestServer) -> (i64, i64, i64) {
    let json = server
        .call(Method::GET, "/api/v1/balance", ALICE_KEY)
        .await
        .json();
    let available = json["available"].as_i64().unwrap();
    let held = json["held"].as_i64().unwrap();
    (available, held, 100 - available - held)
}

/// Alice's money once nothing is held any more (every job ended). A call refused `429`
/// (her in-flight slot is still taken by a job) is asked again.
async fn settled_money(server: &TestServer) -> (i64, i64, i64) {
    for _ in 0..1000 {
        let reply = server.call(Method::GET, "/api/v1/balance", ALICE_KEY).await;
        if reply.status == StatusCode::OK && reply.json()["held"] == 0 {
            return money(server).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("a hold never ended: {:?}", money(server).await);
}

/// Alice's stored files' keys, once there are `count` (outputs are stored just after their
/// charge).
async fn files(server: &TestServer, count: usize) -> Vec<String> {
    let mut keys = Vec::new();
    for _ in 0..500 {
        let list = server
            .call(Method::GET, "/api/v1/files?limit=100", ALICE_KEY)
            .await
            .json();
        keys = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["key"].as_str().unwrap().to_owned())
            .collect();
        if keys.len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    keys
}

/// POSTs a generation as alice, with `headers`.
async fn generate(server: &TestServer, json: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = http::Request::post("/v1/images/generations")
        .header("authorization", format!("Bearer {ALICE_KEY}"))
        .header("content-type", "application/json");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(
            json.to_owned(),
        )))
        .unwrap();
    server.send(req).await
}

/// Sends a JSON request on a raw socket and reads until the answer's head has arrived;
/// returns the head and the socket (dropping it is the client leaving).
async fn send_and_read_head(server: &TestServer, path: &str, json: &str) -> (String, TcpStream) {
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ALICE_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
        json.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    while !read.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the head");
        read.extend_from_slice(&buf[..n]);
    }
    (String::from_utf8_lossy(&read).into_owned(), socket)
}

/// Reads a streamed answer to its end: its `data:` events, and whether it ended cleanly
/// (the chunked body's last chunk) rather than by the connection being cut.
async fn read_events(mut socket: TcpStream, already: String) -> (Vec<serde_json::Value>, bool) {
    let mut text = already;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
        if text.ends_with("\r\n0\r\n\r\n") {
            break;
        }
    }
    let complete = text.ends_with("\r\n0\r\n\r\n");
    let events = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    (events, complete)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_three_times_longer_than_the_idle_rule_completes_and_is_charged() {
    let (_process, server, _dir) = start(&[
        ("GATEWAY_IDLE_TIMEOUT_SECS", "1"),
        ("GATEWAY_STREAM_KEEPALIVE_SECS", "1"),
        ("GATEWAY_REFERENCE_LATENCY_MS", "3500"),
    ]);
    let (head, socket) = send_and_read_head(
        &server,
        "/v1/images/generations",
        r#"{"model":"gpt-image-2","prompt":"p","stream":true,"size":"16x16"}"#,
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (events, complete) = read_events(socket, head).await;
    assert!(complete, "the stream ran to its end: {events:?}");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "image_generation.completed");
    assert_eq!(settled_money(&server).await, (90, 0, 10));
    // The idle rule itself still holds: a connection with nothing in flight is closed.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle connection was kept past the rule");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_streamed_render_keeps_the_in_flight_slot_and_is_charged() {
    let (_process, server, _dir) = start(&[
        ("GATEWAY_MAX_IN_FLIGHT", "1"),
        ("GATEWAY_REFERENCE_LATENCY_MS", "2000"),
    ]);
    let (head, socket) = send_and_read_head(
        &server,
        "/v1/images/generations",
        r#"{"model":"gpt-image-2","prompt":"p","stream":true,"partial_images":2,"size":"64x64"}"#,
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(socket);
    // The abandoned render still runs: it holds alice's one slot.
    let second = server
        .edit_json(
            ALICE_KEY,
            r#"{"model":"gpt-image-2","prompt":"p","size":"16x16"}"#,
        )
        .await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    // It ends charged, and its image is kept for alice.
    assert_eq!(settled_money(&server).await, (90, 0, 10));
    let kept = files(&server, 1).await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    // The slot is free again.
    let third = generate(
        &server,
        r#"{"model":"gpt-image-2","prompt":"p","size":"16x16"}"#,
        &[],
    )
    .await;
    assert_eq!(third.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_a_stream_after_partials_charges_the_job_every_round() {
    let (_process, server, _dir) = start(&[("GATEWAY_REFERENCE_LATENCY_MS", "900")]);
    for round in 1..=3i64 {
        let (head, mut socket) = send_and_read_head(
            &server,
            "/v1/images/generations",
            r#"{"model":"gpt-image-2","prompt":"p","stream":true,"partial_images":3,"size":"256x256"}"#,
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        // Read until the first partial image has arrived, then leave.
        let mut text = head;
        let mut buf = vec![0u8; 64 * 1024];
        while !text.contains("partial_image") {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0);
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        drop(socket);
        assert_eq!(
            settled_money(&server).await,
            (100 - 10 * round, 0, 10 * round)
        );
        assert_eq!(files(&server, round as usize).await.len() as i64, round);
    }
}
