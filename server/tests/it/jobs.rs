//! Jobs outlive their connections, against the real binary on 127.0.0.1: streams longer
//! than the idle rule, clients that leave a begun render, the in-flight bound held by
//! abandoned work, and the async job API.

use crate::common;
use crate::common::python;

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
    let port = 0;
    let process = Process::start_with(&gateway_binary(), &dir, port, env);
    let server = TestServer::at(process.addr);
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

/// POSTs a generation as `key`, with `headers`.
async fn post(server: &TestServer, key: &str, json: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = http::Request::post("/v1/images/generations")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let body = http_body_util::Full::new(bytes::Bytes::from(json.to_owned()));
    server.send(req.body(body).unwrap()).await
}

/// POSTs a generation as alice, with `headers`.
async fn generate(server: &TestServer, json: &str, headers: &[(&str, &str)]) -> Reply {
    post(server, ALICE_KEY, json, headers).await
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

const BOB: &str = "pk_live_bob_0123456789abcdef";

/// POSTs a generation with `Prefer: respond-async` as `key`.
async fn submit(server: &TestServer, key: &str, json: &str) -> Reply {
    post(server, key, json, &[("prefer", "respond-async")]).await
}

/// Reads the job at `id` until it has ended; returns it.
async fn ended(server: &TestServer, key: &str, id: &str) -> serde_json::Value {
    let path = format!("/v1/images/jobs/{id}");
    // Up to about a minute: a job waits for a running slot, or for a restart.
    for _ in 0..6000 {
        let reply = server.call(Method::GET, &path, key).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let job = reply.json();
        if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap()) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} never ended");
}

/// Reads an event stream until it ends or `stop` events have come: their ids and types.
async fn job_events(
    server: &TestServer,
    id: &str,
    last: Option<&str>,
    stop: Option<usize>,
) -> Vec<(String, String)> {
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let resume = last
        .map(|l| format!("last-event-id: {l}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "GET /v1/images/jobs/{id}/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ALICE_KEY}\r\n{resume}\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut text = String::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = Vec::new();
    loop {
        let n = socket.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            let id = event.lines().find_map(|l| l.strip_prefix("id: "));
            let data = event.lines().find_map(|l| l.strip_prefix("data: "));
            if let (Some(id), Some(data)) = (id, data) {
                let json: serde_json::Value = serde_json::from_str(data).unwrap();
                let kind = json["type"].as_str().unwrap_or("error").to_owned();
                events.push((id.to_owned(), kind));
            }
        }
        if stop.is_some_and(|s| events.len() >= s) || text.ends_with("\r\n0\r\n\r\n") {
            break;
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_job_is_accepted_at_once_then_read_back_with_the_synchronous_answer() {
    let keys = format!("alice:{ALICE_KEY},bob:{BOB}");
    let (process, server, dir) = start(&[
        ("GATEWAY_API_KEYS", &keys),
        ("GATEWAY_REFERENCE_LATENCY_MS", "300"),
    ]);
    let body = r#"{"model":"gpt-image-2","prompt":"p","n":2,"size":"16x16"}"#;
    let accepted = submit(&server, ALICE_KEY, body).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{:?}", accepted.body);
    let job = accepted.json();
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(job["object"], "image.job");
    assert_eq!(job["status"], "queued");
    assert_eq!(job["model"], "gpt-image-2");
    assert_eq!(job["n"], 2);
    assert!(job["created_at"].as_u64().unwrap() > 0);
    assert_eq!(
        accepted.headers["location"],
        format!("/v1/images/jobs/{id}").as_str()
    );
    assert_eq!(accepted.headers["preference-applied"], "respond-async");
    assert_eq!(accepted.headers["x-job-id"], id.as_str());
    // Its 20 is held from the start.
    assert_eq!(money(&server).await.1, 20);

    // Another user's job is not found, nor is a job id that names nothing.
    let theirs = server
        .call(Method::GET, &format!("/v1/images/jobs/{id}"), BOB)
        .await;
    assert_eq!(theirs.error().1, "job_not_found");
    let unknown = server
        .call(Method::GET, "/v1/images/jobs/not-a-job", ALICE_KEY)
        .await;
    assert_eq!(
        unknown.error(),
        (404, "job_not_found".into(), Some("job_id".into()))
    );

    let done = ended(&server, ALICE_KEY, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["started_at"].as_u64().unwrap() >= done["created_at"].as_u64().unwrap());
    assert!(done["finished_at"].as_u64().unwrap() >= done["started_at"].as_u64().unwrap());
    let result = &done["result"];
    assert!(result["created"].as_u64().unwrap() > 0);
    let ids = result["picklyone_generation_ids"].as_array().unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(result["data"].as_array().unwrap().len(), 2);
    use base64::Engine;
    let image = base64::engine::general_purpose::STANDARD
        .decode(result["data"][0]["b64_json"].as_str().unwrap())
        .unwrap();
    assert_eq!(inspect(&image), (image::ImageFormat::Png, 16, 16));
    // The same keys as a synchronous answer, and its images chain like one.
    let sync = generate(&server, body, &[]).await.json();
    let keys_of = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys_of(result), keys_of(&sync));
    let chained = server
        .edit_generation(ALICE_KEY, ids[0].as_str().unwrap())
        .await;
    assert_eq!(chained.status, StatusCode::OK);
    assert_eq!(settled_money(&server).await, (50, 0, 50));

    // Listed newest first, without image bytes, paged.
    let second = submit(
        &server,
        ALICE_KEY,
        r#"{"model":"gpt-image-2","prompt":"q","size":"16x16"}"#,
    )
    .await
    .json();
    let list = server
        .call(Method::GET, "/v1/images/jobs?limit=1", ALICE_KEY)
        .await
        .json();
    assert_eq!(list["data"][0]["id"], second["id"]);
    assert_eq!(list["has_more"], true);
    let after = list["next_after"].as_str().unwrap();
    let rest = server
        .call(
            Method::GET,
            &format!("/v1/images/jobs?after={after}"),
            ALICE_KEY,
        )
        .await
        .json();
    // Newest first: the chained edit, the synchronous generation (every answer whose hold
    // was taken is a job), then the first job.
    let rest = rest["data"].as_array().unwrap().clone();
    assert_eq!(rest.len(), 3, "{rest:?}");
    assert_eq!(rest[2]["id"], id.as_str());
    assert_eq!(
        rest[2]["picklyone_generation_ids"],
        result["picklyone_generation_ids"]
    );
    assert!(rest[2].get("result").is_none(), "{rest:?}");
    let bobs = server
        .call(Method::GET, "/v1/images/jobs", BOB)
        .await
        .json();
    assert_eq!(bobs["data"].as_array().unwrap().len(), 0);
    ended(&server, ALICE_KEY, second["id"].as_str().unwrap()).await;

    // Kept across a restart: the record is in the data dir.
    process.kill();
    let port = server.addr.port();
    let _again = Process::start_with(
        &gateway_binary(),
        &dir,
        port,
        &[("GATEWAY_API_KEYS", &keys)],
    );
    let after_restart = ended(&server, ALICE_KEY, &id).await;
    assert_eq!(after_restart["result"], done["result"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_submission_is_refused_as_a_synchronous_one_would_be() {
    let (_process, server, _dir) = start(&[
        ("GATEWAY_DEMO_BALANCE", "5"),
        ("GATEWAY_MAX_QUEUED_JOBS", "1"),
    ]);
    let poor = submit(
        &server,
        ALICE_KEY,
        r#"{"model":"gpt-image-2","prompt":"p"}"#,
    )
    .await;
    assert_eq!(poor.error().1, "insufficient_balance");
    assert!(poor.headers.get("x-job-id").is_none());
    let bad = submit(&server, ALICE_KEY, r#"{"model":"gpt-image-2","prompt":""}"#).await;
    assert_eq!(bad.error().0, 400);
    let nobody = submit(
        &server,
        "pk_live_nobody_000000000000",
        r#"{"model":"gpt-image-2","prompt":"p"}"#,
    )
    .await;
    assert_eq!(nobody.error().0, 401);
    // A webhook is refused: this gateway delivers none.
    let hooked = post(
        &server,
        ALICE_KEY,
        r#"{"model":"gpt-image-2","prompt":"p"}"#,
        &[
            ("prefer", "respond-async"),
            ("webhook-url", "https://example.com/hook"),
        ],
    )
    .await;
    assert_eq!(
        hooked.error(),
        (400, "invalid_request".into(), Some("webhook_url".into()))
    );
    let (available, held, _) = money(&server).await;
    assert_eq!((available, held), (5, 0), "nothing held or charged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_is_cancelled_and_refunded_and_a_running_one_is_not() {
    let (_process, server, _dir) = start(&[
        ("GATEWAY_MAX_RUNNING_JOBS", "1"),
        ("GATEWAY_MAX_QUEUED_JOBS", "2"),
        ("GATEWAY_REFERENCE_LATENCY_MS", "1500"),
    ]);
    let body = r#"{"model":"gpt-image-2","prompt":"p","size":"16x16"}"#;
    let first = submit(&server, ALICE_KEY, body).await.json();
    let first = first["id"].as_str().unwrap().to_owned();
    let second = submit(&server, ALICE_KEY, body).await.json();
    let second = second["id"].as_str().unwrap().to_owned();
    // Past the queue bound: refused, with a time to wait.
    let third = submit(&server, ALICE_KEY, body).await;
    assert_eq!(third.error().1, "too_many_queued_jobs");
    assert!(third.headers.contains_key("retry-after"));
    assert_eq!(money(&server).await.1, 20, "two holds");
    // The first runs (the only turn); the second waits for it.
    let path = |id: &str| format!("/v1/images/jobs/{id}");
    for _ in 0..500 {
        let job = server
            .call(Method::GET, &path(&first), ALICE_KEY)
            .await
            .json();
        if job["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let running = server.call(Method::DELETE, &path(&first), ALICE_KEY).await;
    assert_eq!(
        running.error(),
        (409, "job_not_cancellable".into(), Some("job_id".into()))
    );
    let cancelled = server.call(Method::DELETE, &path(&second), ALICE_KEY).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
    assert_eq!(cancelled.json()["status"], "cancelled");
    assert_eq!(
        money(&server).await.1,
        10,
        "the cancelled job's hold is released"
    );
    let again = server.call(Method::DELETE, &path(&second), ALICE_KEY).await;
    assert_eq!(again.error().1, "job_not_cancellable");
    assert_eq!(
        ended(&server, ALICE_KEY, &first).await["status"],
        "succeeded"
    );
    assert_eq!(
        ended(&server, ALICE_KEY, &second).await["status"],
        "cancelled"
    );
    assert_eq!(settled_money(&server).await, (90, 0, 10));
    assert_eq!(
        files(&server, 1).await.len(),
        1,
        "only the first job's image"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_s_events_resume_after_the_last_one_read() {
    let (_process, server, _dir) = start(&[("GATEWAY_REFERENCE_LATENCY_MS", "1500")]);
    let job = submit(
        &server,
        ALICE_KEY,
        r#"{"model":"gpt-image-2","prompt":"p","size":"64x64","partial_images":2}"#,
    )
    .await
    .json();
    let id = job["id"].as_str().unwrap();
    let first = job_events(&server, id, None, Some(1)).await;
    assert_eq!(
        first,
        [(
            "partial-0".to_owned(),
            "image_generation.partial_image".to_owned()
        )]
    );
    // The stream broke after the first event: reattached, nothing is lost or repeated.
    let rest = job_events(&server, id, Some("partial-0"), None).await;
    let ids: Vec<&str> = rest.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(ids, ["partial-1", "completed-0"], "{rest:?}");
    assert_eq!(rest[1].1, "image_generation.completed");
    // Once ended, the events are rebuilt from the record: the completed image.
    assert_eq!(ended(&server, ALICE_KEY, id).await["status"], "succeeded");
    let replay = job_events(&server, id, None, None).await;
    assert_eq!(
        replay,
        [(
            "completed-0".to_owned(),
            "image_generation.completed".to_owned()
        )]
    );
    assert!(job_events(&server, id, Some("completed-0"), None)
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_timeout_fails_and_is_refunded() {
    let (_process, server, _dir) = start(&[
        ("GATEWAY_JOB_TIMEOUT_SECS", "1"),
        ("GATEWAY_REFERENCE_LATENCY_MS", "4000"),
    ]);
    let job = submit(
        &server,
        ALICE_KEY,
        r#"{"model":"gpt-image-2","prompt":"p","size":"16x16"}"#,
    )
    .await
    .json();
    let done = ended(&server, ALICE_KEY, job["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"]["code"], "upstream_error");
    assert_eq!(done["error"]["type"], "server_error");
    assert_eq!(settled_money(&server).await, (100, 0, 0));
    let events = job_events(&server, job["id"].as_str().unwrap(), None, None).await;
    assert_eq!(events, [("error".to_owned(), "error".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_async_jobs_killed_mid_render_run_again_after_restart_charged_once() {
    // 1,000 deposited, 10 a job; renders of 5 s, half of them waiting for a running slot;
    // holds outlive the restart.
    let env = [
        ("GATEWAY_DEMO_BALANCE", "1000"),
        ("GATEWAY_REFERENCE_LATENCY_MS", "5000"),
        ("GATEWAY_MAX_RUNNING_JOBS", "50"),
        ("GATEWAY_HOLD_TTL_SECS", "120"),
    ];
    let (process, server, dir) = start(&env);
    let body = r#"{"model":"gpt-image-2","prompt":"p","size":"16x16"}"#;
    let submitted = futures_util::future::join_all((0..4).map(|_| async {
        let mut ids = Vec::new();
        for _ in 0..25 {
            let job = submit(&server, ALICE_KEY, body).await;
            assert_eq!(job.status, StatusCode::ACCEPTED, "{:?}", job.body);
            ids.push(job.json()["id"].as_str().unwrap().to_owned());
        }
        ids
    }))
    .await;
    let ids: Vec<String> = submitted.into_iter().flatten().collect();
    // Every job held, none settled: each is mid-render or queued when the process dies.
    assert_eq!(server.balance(ALICE_KEY).await, (0, 1000));
    process.kill();

    let port = server.addr.port();
    let _again = Process::start_with(&gateway_binary(), &dir, port, &env);
    let mut generations = std::collections::HashSet::new();
    for id in &ids {
        let job = ended(&server, ALICE_KEY, id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let made = job["result"]["picklyone_generation_ids"]
            .as_array()
            .unwrap();
        assert_eq!(made.len(), 1, "{job}");
        assert_eq!(job["result"]["data"].as_array().unwrap().len(), 1);
        assert!(generations.insert(made[0].as_str().unwrap().to_owned()));
    }
    // Charged once per job, nothing held: 1,000 = available + held + charged.
    assert_eq!(server.balance(ALICE_KEY).await, (0, 0));
    let usage = server
        .call(Method::GET, "/api/v1/usage?limit=100", ALICE_KEY)
        .await
        .json();
    let charges = usage["data"].as_array().unwrap();
    assert_eq!(charges.len(), 100, "one charge per job");
    assert!(charges
        .iter()
        .all(|e| e["amount"] == 10 && e["status"] == "charged"));
    let requests: std::collections::HashSet<&str> = charges
        .iter()
        .map(|e| e["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(requests.len(), 100, "each job's own request charged");
    let next = format!("/api/v1/usage?limit=100&after={}", usage["next_after"]);
    let rest = server.call(Method::GET, &next, ALICE_KEY).await.json();
    assert_eq!(rest["data"].as_array().unwrap().len(), 0, "{rest}");
    // Each output stored once: one file per job.
    assert_eq!(files(&server, 100).await.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_submits_an_async_job_and_reads_it_back() {
    let (_process, server, _dir) = start(&[("GATEWAY_REFERENCE_LATENCY_MS", "300")]);
    let script = r#"
import base64, os, time, openai
client = openai.OpenAI(base_url=os.environ["GATEWAY_URL"] + "/v1", api_key=os.environ["GATEWAY_KEY"], max_retries=0)
raw = client.images.with_raw_response.generate(
    model="gpt-image-2", prompt="a red fox", size="1024x1024",
    extra_headers={"Prefer": "respond-async"})
assert raw.status_code == 202, raw.status_code
assert raw.headers["preference-applied"] == "respond-async"
job = raw.http_response.json()
assert job["object"] == "image.job" and job["status"] == "queued", job
for _ in range(500):
    job = client.get(f"/images/jobs/{job['id']}", cast_to=object)
    if job["status"] not in ("queued", "running"):
        break
    time.sleep(0.02)
assert job["status"] == "succeeded", job
png = base64.b64decode(job["result"]["data"][0]["b64_json"])
assert png[:8] == b"\x89PNG\r\n\x1a\n"
listed = client.get("/images/jobs", cast_to=object)
assert listed["data"][0]["id"] == job["id"], listed
print("ok", len(job["result"]["picklyone_generation_ids"]))
"#;
    let (out, err) = python::run(script, format!("http://{}", server.addr), vec![]).await;
    assert_eq!(out, "ok 1", "{err}");
    assert_eq!(settled_money(&server).await, (90, 0, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_and_streamed_answers_name_their_job_and_a_broken_stream_reattaches() {
    let (_process, server, _dir) = start(&[("GATEWAY_REFERENCE_LATENCY_MS", "1500")]);
    let sync = generate(
        &server,
        r#"{"model":"gpt-image-2","prompt":"p","size":"16x16"}"#,
        &[],
    )
    .await;
    assert_eq!(sync.status, StatusCode::OK);
    let id = sync.headers["x-job-id"].to_str().unwrap().to_owned();
    let job = ended(&server, ALICE_KEY, &id).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(
        job["result"]["picklyone_generation_ids"],
        sync.json()["picklyone_generation_ids"]
    );
    // Refused before its hold: no job.
    let refused = generate(&server, r#"{"model":"gpt-image-2","prompt":""}"#, &[]).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.headers.get("x-job-id").is_none());

    // A stream names its job in its head; broken after the first partial, it is read on
    // through the job's events, nothing lost.
    let (head, mut socket) = send_and_read_head(
        &server,
        "/v1/images/generations",
        r#"{"model":"gpt-image-2","prompt":"p","stream":true,"partial_images":2,"size":"64x64"}"#,
    )
    .await;
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-job-id: "))
        .expect("x-job-id in the stream's head")
        .trim()
        .to_owned();
    let mut text = head;
    let mut buf = vec![0u8; 64 * 1024];
    while !text.contains("partial_image") {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0);
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(socket);
    let rest = job_events(&server, &id, Some("partial-0"), None).await;
    let ids: Vec<&str> = rest.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(ids, ["partial-1", "completed-0"], "{rest:?}");
    assert_eq!(ended(&server, ALICE_KEY, &id).await["status"], "succeeded");
    // A synchronous or streamed job is not cancelled through the API: its client leaves.
    let delete = server
        .call(Method::DELETE, &format!("/v1/images/jobs/{id}"), ALICE_KEY)
        .await;
    assert_eq!(delete.error().1, "job_not_cancellable");
    assert_eq!(settled_money(&server).await, (80, 0, 20));
}

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request a webhook receiver got: its path, its three webhook headers, its body.
#[derive(Clone, Debug)]
struct Hook {
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

/// A webhook receiver on 127.0.0.1, recording each request. With `refusals`, it answers
/// `302` (to a path of its own) first, then `500`, then `200` to every later request;
/// without, `200` at once.
struct Receiver {
    addr: SocketAddr,
    got: std::sync::Arc<std::sync::Mutex<Vec<Hook>>>,
}

impl Receiver {
    async fn start_on(listener: tokio::net::TcpListener, refusals: bool) -> Receiver {
        use hyper::service::service_fn;
        let addr = listener.local_addr().unwrap();
        let got: std::sync::Arc<std::sync::Mutex<Vec<Hook>>> = Default::default();
        let seen = got.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let header = |name: &str| {
                                req.headers()
                                    .get(name)
                                    .map(|v| v.to_str().unwrap().to_owned())
                                    .unwrap_or_default()
                            };
                            let mut hook = Hook {
                                path: req.uri().path().to_owned(),
                                id: header("webhook-id"),
                                timestamp: header("webhook-timestamp"),
                                signature: header("webhook-signature"),
                                body: String::new(),
                            };
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            hook.body = String::from_utf8(body.to_vec()).unwrap();
                            let count = {
                                let mut seen = seen.lock().unwrap();
                                seen.push(hook);
                                seen.len()
                            };
                            let mut answer = http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from_static(b"{}"),
                            ));
                            *answer.status_mut() = match count {
                                _ if !refusals => StatusCode::OK,
                                1 => {
                                    answer
                                        .headers_mut()
                                        .insert("location", "/redirected".parse().unwrap());
                                    StatusCode::FOUND
                                }
                                2 => StatusCode::INTERNAL_SERVER_ERROR,
                                _ => StatusCode::OK,
                            };
                            Ok::<_, std::convert::Infallible>(answer)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, got }
    }

    /// The requests so far, once there are at least `count` (within 20 s).
    async fn hooks(&self, count: usize) -> Vec<Hook> {
        for _ in 0..2000 {
            let got = self.got.lock().unwrap().clone();
            if got.len() >= count {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the receiver got {:?}", self.got.lock().unwrap());
    }
}

/// Checks a webhook's signature with Python's own HMAC, not the gateway's.
fn verify(hook: &Hook) {
    let script = "import base64,hmac,hashlib,sys\n\
        key=base64.b64decode(sys.argv[1][6:])\n\
        signed=(sys.argv[2]+'.'+sys.argv[3]+'.'+sys.argv[4]).encode()\n\
        print('v1,'+base64.b64encode(hmac.new(key,signed,hashlib.sha256).digest()).decode())";
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            WEBHOOK_SECRET,
            &hook.id,
            &hook.timestamp,
            &hook.body,
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        hook.signature,
        "{hook:?}"
    );
}

/// A submission with a `Webhook-Url`.
async fn submit_with_hook(server: &TestServer, url: &str) -> Reply {
    let json = r#"{"model":"gpt-image-2","prompt":"p","size":"16x16"}"#;
    let headers = [("prefer", "respond-async"), ("webhook-url", url)];
    post(server, ALICE_KEY, json, &headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_retried_until_taken_and_survive_a_restart() {
    let env = [
        ("GATEWAY_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("GATEWAY_WEBHOOK_ALLOW_HTTP_LOOPBACK", "true"),
        ("GATEWAY_WEBHOOK_RETRY_BASE_MS", "100"),
        ("GATEWAY_REFERENCE_LATENCY_MS", "200"),
        ("GATEWAY_ADMIN_KEY", "admin_0123456789abcdef"),
    ];
    let (process, server, dir) = start(&env);

    // SSRF targets are refused at submit; nothing is held for them.
    for bad in [
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "http://10.1.2.3:8080/hook",
        "https://localhost/hook",
        "ftp://example.com/hook",
        "not a url",
    ] {
        let refused = submit_with_hook(&server, bad).await;
        assert_eq!(
            refused.error(),
            (400, "invalid_request".into(), Some("webhook_url".into())),
            "{bad}"
        );
    }
    // Only an async job calls back.
    let json = r#"{"model":"gpt-image-2","prompt":"p"}"#;
    let sync = generate(&server, json, &[("webhook-url", "http://127.0.0.1:9/hook")]).await;
    assert_eq!(sync.error().2.as_deref(), Some("webhook_url"));
    assert_eq!(money(&server).await, (100, 0, 0));

    // A receiver that redirects, then fails, then takes it: the same event each time.
    let receiver = Receiver::start_on(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        true,
    )
    .await;
    let url = format!("http://{}/hook", receiver.addr);
    let job = submit_with_hook(&server, &url).await.json();
    let id = job["id"].as_str().unwrap().to_owned();
    let hooks = receiver.hooks(3).await;
    assert!(
        hooks.iter().all(|h| h.path == "/hook"),
        "no redirect followed: {hooks:?}"
    );
    assert!(hooks
        .iter()
        .all(|h| h.id == hooks[0].id && h.id.starts_with("msg_")));
    for hook in &hooks {
        verify(hook);
    }
    let event: serde_json::Value = serde_json::from_str(&hooks[2].body).unwrap();
    assert_eq!(event["type"], "image.job.succeeded");
    assert!(event["timestamp"].as_u64().unwrap() > 0);
    assert_eq!(event["data"]["id"], id.as_str());
    assert_eq!(event["data"]["status"], "succeeded");
    assert_eq!(event["data"]["n"], 1);
    let job = ended(&server, ALICE_KEY, &id).await;
    assert_eq!(
        event["data"]["picklyone_generation_ids"],
        job["result"]["picklyone_generation_ids"]
    );
    assert!(event["data"].get("b64_json").is_none() && !hooks[2].body.contains("b64"));
    // Taken: no more attempts.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.got.lock().unwrap().len(), 3);
    // Counted: the job by state, the attempts by outcome.
    let scrape = server
        .call(Method::GET, "/metrics", "admin_0123456789abcdef")
        .await;
    let text = String::from_utf8_lossy(&scrape.body).into_owned();
    for line in [
        "image_gateway_webhook_deliveries_total{outcome=\"retried\"} 2",
        "image_gateway_webhook_deliveries_total{outcome=\"delivered\"} 1",
        "image_gateway_jobs_ended_total{state=\"succeeded\"} 1",
        "image_gateway_jobs{state=\"running\"} 0",
        "image_gateway_jobs{state=\"queued\"} 0",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }

    // A receiver down across a restart still gets its event.
    let (down, port) = closed_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let job = submit_with_hook(&server, &url).await.json();
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(ended(&server, ALICE_KEY, &id).await["status"], "succeeded");
    process.kill();
    let listener = down.listen(64).unwrap();
    let late = Receiver::start_on(listener, false).await;
    let _again = Process::start_with(&gateway_binary(), &dir, server.addr.port(), &env);
    let hooks = late.hooks(1).await;
    let event: serde_json::Value = serde_json::from_str(&hooks[0].body).unwrap();
    assert_eq!(event["data"]["id"], id.as_str());
    verify(&hooks[0]);
}

/// A record of alice's async generation holding `hold`, left by a process that died after
/// `attempts` runs.
fn orphan(hold: image_gateway::ledger::HoldId, attempts: u32) -> image_gateway::jobs::JobRecord {
    use image_gateway::jobs::{Echo, JobRecord, Lease, Rerun};
    let params = image_gateway::job::EditParams::new("gpt-image-2", "p");
    let mut record = JobRecord::queued(
        image_gateway::id::JobId::new(),
        image_gateway::auth::UserId::new("alice").unwrap(),
        image_gateway::job::Operation::Generate,
        "gpt-image-2".into(),
        1,
        image_gateway::clock::unix_now(),
        Echo {
            size: "auto".into(),
            quality: "auto".into(),
            background: "auto".into(),
            output_format: "png".into(),
        },
    );
    record.rerun = Some(Rerun::new(
        image_gateway::job::Ticket::new(hold, Vec::new(), None),
        image_gateway::id::RequestId::new(),
        params,
    ));
    record.lease = Some(Lease {
        runner: "a process that died".into(),
        until: 0,
    });
    record.attempts = attempts;
    record
}

#[tokio::test]
async fn a_job_out_of_runs_or_whose_hold_ended_is_failed_and_charges_nothing() {
    use image_gateway::jobs::{JobRecords, JobStatus, MemoryJobs};
    use image_gateway::ledger::{Amount, Ledger, Memo, MemoryLedger};
    use std::sync::Arc;
    let alice = image_gateway::auth::UserId::new("alice").unwrap();
    let ledger = Arc::new(MemoryLedger::new());
    ledger.deposit(&alice, 100, "opening").await.unwrap();
    let hold = |memo: &str| {
        let ledger = ledger.clone();
        let (alice, memo) = (alice.clone(), Memo::new(memo, "gpt-image-2", 1));
        async move {
            let ttl = Duration::from_secs(600);
            ledger
                .hold(&alice, Amount::new(10), ttl, memo)
                .await
                .unwrap()
                .id
        }
    };
    // Three runs already: given up, its hold released.
    let spent = orphan(
        hold("spent").await,
        image_gateway::request::MAX_JOB_ATTEMPTS,
    );
    // Its hold ended (released) while its process was gone: not run, nothing charged.
    let ended = orphan(hold("ended").await, 1);
    ledger
        .release(ended.rerun.as_ref().unwrap().ticket.hold)
        .await
        .unwrap();
    // A live hold and a run left: run again and charged.
    let owed = orphan(hold("owed").await, 1);
    let records = Arc::new(MemoryJobs::new());
    for record in [&spent, &ended, &owed] {
        records.insert(record).await.unwrap();
    }
    let gateway = image_gateway::Gateway::builder()
        .ledger(ledger.clone())
        .model("gpt-image-2", image_gateway::catalog::ModelSpec::new(4, 10))
        .jobs(records.clone())
        .build();
    assert_eq!(gateway.job_runner().take_all().await.unwrap(), 3);
    let status = |id| {
        let (records, alice) = (records.clone(), alice.clone());
        async move {
            for _ in 0..500 {
                let record = records.get(&alice, id).await.unwrap().unwrap();
                if record.status.is_ended() {
                    return record;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("job {id} never ended");
        }
    };
    let given_up = status(spent.id).await;
    assert_eq!(given_up.status, JobStatus::Failed);
    assert_eq!(given_up.attempts, 4);
    assert_eq!(status(ended.id).await.status, JobStatus::Failed);
    let ran = status(owed.id).await;
    assert_eq!(ran.status, JobStatus::Succeeded, "{ran:?}");
    assert_eq!(ran.output.unwrap().generations.len(), 1);
    // 100 = 90 available + 10 charged (the job that ran); nothing held.
    let balance = ledger.balance(&alice).await.unwrap();
    assert_eq!((balance.available, balance.held), (90, 0));
}
