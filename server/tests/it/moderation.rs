//! Moderation before money, against the binary: a flagged prompt is `400
//! content_policy_violation` with nothing held or run, by a word list or an
//! OpenAI-compatible `/v1/moderations` (a loopback server); a failing service is `503`
//! unless the gateway fails open.

use crate::common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::binary::{gateway_binary, Process};
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

const GENERATE: &str = "/v1/images/generations";

async fn generate(server: &TestServer, prompt: &str, headers: &[(&str, &str)]) -> Reply {
    let body = serde_json::json!({"model": "gpt-image-2", "prompt": prompt, "size": "16x16"});
    let mut req = Request::post(GENERATE)
        .header("x-api-key", ALICE_KEY)
        .header("content-type", "application/json");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    server
        .send(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
}

fn start(env: &[(&str, &str)]) -> (Process, TestServer) {
    let process = Process::start_with(&gateway_binary(), &temp_dir("moderation"), 0, env);
    let server = TestServer::at(process.addr);
    (process, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_word_list_refuses_before_the_hold() {
    let (_process, server) = start(&[
        ("GATEWAY_MODERATION", "words"),
        ("GATEWAY_MODERATION_WORDS", "gore, red wedding"),
    ]);
    for prompt in ["Some GORE please", "the red wedding, painted"] {
        let reply = generate(&server, prompt, &[]).await;
        assert_eq!(reply.status, 400, "{:?}", reply.body);
        assert_eq!(
            reply.error(),
            (
                400,
                "content_policy_violation".into(),
                Some("prompt".into())
            )
        );
        // Async: refused as a synchronous request is, no job made.
        let submitted = generate(&server, prompt, &[("prefer", "respond-async")]).await;
        assert_eq!(submitted.status, 400);
        assert!(submitted.headers.get("x-job-id").is_none());
    }
    assert_eq!(server.balance(ALICE_KEY).await, (100, 0));
    let reply = generate(&server, "a gorilla at a wedding", &[]).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(server.balance(ALICE_KEY).await, (90, 0));
}

/// Whether a moderation request's input holds an image 13 pixels wide (the images tests
/// mean to be flagged), read from its `data:` URL's PNG header.
fn flags_an_image(body: &str) -> bool {
    use base64::Engine;
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        return false;
    };
    let Some(inputs) = json["input"].as_array() else {
        return false;
    };
    inputs.iter().any(|input| {
        let url = input["image_url"]["url"].as_str().unwrap_or_default();
        let data = url.split_once(";base64,").map_or("", |(_, d)| d);
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap_or_default();
        png.len() > 20 && png[16..20] == 13u32.to_be_bytes()
    })
}

/// A loopback `/v1/moderations`: flags prompts holding "flag-me" and images 13 pixels wide,
/// answers 500 to those holding "break-me"; records each request body and its
/// authorization.
async fn moderation_api() -> (std::net::SocketAddr, Arc<Mutex<Vec<(String, String)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let recorded = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: Request<hyper::body::Incoming>| {
                        let recorded = recorded.clone();
                        async move {
                            let auth = req
                                .headers()
                                .get("authorization")
                                .map(|v| v.to_str().unwrap().to_owned())
                                .unwrap_or_default();
                            assert_eq!(req.uri().path(), "/v1/moderations");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let text = String::from_utf8_lossy(&body).into_owned();
                            recorded.lock().unwrap().push((text.clone(), auth));
                            let (status, answer) = if text.contains("break-me") {
                                (StatusCode::INTERNAL_SERVER_ERROR, r#"{"error":{}}"#)
                            } else if flags_an_image(&text) {
                                (
                                    StatusCode::OK,
                                    r#"{"id":"m","results":[{"flagged":true,"categories":{"sexual":true}}]}"#,
                                )
                            } else if text.contains("flag-me") {
                                (
                                    StatusCode::OK,
                                    r#"{"id":"m","results":[{"flagged":true,"categories":{"violence":true,"hate":false}}]}"#,
                                )
                            } else {
                                (
                                    StatusCode::OK,
                                    r#"{"id":"m","results":[{"flagged":false,"categories":{"violence":false}}]}"#,
                                )
                            };
                            let mut response =
                                Response::new(Full::new(Bytes::from_static(answer.as_bytes())));
                            *response.status_mut() = status;
                            Ok::<_, Infallible>(response)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_moderation_endpoint_refuses_flagged_prompts_and_fails_closed() {
    let (addr, seen) = moderation_api().await;
    let url = format!("http://{addr}");
    let env = [
        ("GATEWAY_MODERATION", "openai"),
        ("GATEWAY_MODERATION_URL", url.as_str()),
        ("GATEWAY_MODERATION_KEY", "sk-moderation-test"),
    ];
    let (_closed, server) = start(&env);
    let flagged = generate(&server, "please flag-me", &[]).await;
    assert_eq!(flagged.status, 400, "{:?}", flagged.body);
    assert_eq!(flagged.error().1, "content_policy_violation");
    assert!(flagged.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("violence"));
    let failing = generate(&server, "break-me", &[]).await;
    assert_eq!(failing.status, 503, "{:?}", failing.body);
    assert_eq!(failing.error().1, "moderation_unavailable");
    assert!(failing.headers.get("retry-after").is_some());
    assert_eq!(
        server.balance(ALICE_KEY).await,
        (100, 0),
        "nothing held or charged"
    );
    let clean = generate(&server, "a calm lake", &[]).await;
    assert_eq!(clean.status, 200, "{:?}", clean.body);
    assert_eq!(server.balance(ALICE_KEY).await, (90, 0));
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        for (body, auth) in seen.iter() {
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(json["model"], "omni-moderation-latest");
            assert!(json["input"].is_string());
            assert_eq!(auth, "Bearer sk-moderation-test");
        }
    }

    // Failing open: the same failure lets the request through.
    let mut open = env.to_vec();
    open.push(("GATEWAY_MODERATION_FAIL_OPEN", "on"));
    let (_open, server) = start(&open);
    let through = generate(&server, "break-me", &[]).await;
    assert_eq!(through.status, 200, "{:?}", through.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_images_are_checked_after_they_are_read_and_before_the_hold() {
    let (addr, seen) = moderation_api().await;
    let url = format!("http://{addr}");
    let (_process, server) = start(&[
        ("GATEWAY_MODERATION", "openai"),
        ("GATEWAY_MODERATION_URL", url.as_str()),
        ("GATEWAY_MODERATION_IMAGES", "on"),
    ]);
    let edit = |image: Vec<u8>| {
        Form::new()
            .text("model", "gpt-image-2")
            .text("prompt", "a calm lake")
            .file("image", "a.png", "image/png", &image)
    };
    let flagged = server.edit_form(ALICE_KEY, edit(png(13, 13))).await;
    assert_eq!(flagged.status, 400, "{:?}", flagged.body);
    assert_eq!(flagged.error().1, "content_policy_violation");
    let message = flagged.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("a source image was flagged"), "{message}");
    assert!(message.contains("sexual"), "{message}");
    // Nothing held, charged, or kept: the flagged upload is not among alice's files.
    assert_eq!(server.balance(ALICE_KEY).await, (100, 0));
    let files = server
        .call(http::Method::GET, "/api/v1/files", ALICE_KEY)
        .await
        .json();
    assert_eq!(files["data"].as_array().map(Vec::len), Some(0), "{files}");
    let clean = server.edit_form(ALICE_KEY, edit(png(10, 10))).await;
    assert_eq!(clean.status, 200, "{:?}", clean.body);
    assert_eq!(server.balance(ALICE_KEY).await, (90, 0));
    // Each request: its prompt, then its image as a data: URL.
    let seen = seen.lock().unwrap();
    let inputs: Vec<serde_json::Value> = seen
        .iter()
        .map(|(body, _)| serde_json::from_str::<serde_json::Value>(body).unwrap()["input"].clone())
        .collect();
    assert_eq!(inputs.len(), 4, "{inputs:?}");
    for pair in inputs.chunks(2) {
        assert_eq!(pair[0], "a calm lake");
        let url = pair[1][0]["image_url"]["url"].as_str().unwrap();
        assert!(url.starts_with("data:image/png;base64,"), "{url}");
        assert_eq!(pair[1][0]["type"], "image_url");
    }
}
