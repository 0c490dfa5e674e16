//! The whole image API on the real stack: generations, compose, OpenAI's JSON edit shape,
//! masks, streaming and the model list, each billed by the same money rules.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use image::{Rgba, RgbaImage};
use image_gateway::auth::UserId;
use image_gateway::catalog::ModelSpec;
use image_gateway::ledger::{Ledger, MemoryLedger};
use image_gateway::Gateway;
use tokio::net::TcpStream;

const PRICE: u64 = 10;

struct Billed {
    server: TestServer,
    ledger: Arc<MemoryLedger>,
}

/// A gateway whose one model costs [`PRICE`] per image, alice holding 1,000, its reference
/// backend taking `latency` per job (spread over its partial images).
async fn billed(latency: Duration) -> Billed {
    let ledger = Arc::new(MemoryLedger::new());
    ledger.deposit(&alice(), 1000, "credit").await.unwrap();
    let backend = image_gateway::backend::ReferenceBackend::new().latency(latency);
    let gateway = Gateway::builder()
        .keys(keys())
        .backend(backend)
        .ledger(ledger.clone())
        .model("gpt-image-2", ModelSpec::new(4, PRICE))
        .model(
            "dall-e-3",
            ModelSpec::new(1, PRICE).with_qualities(["standard", "hd"]),
        )
        .stream_keepalive(Duration::from_millis(100))
        .build();
    Billed {
        server: TestServer::start(gateway).await,
        ledger,
    }
}

fn alice() -> UserId {
    UserId::new("alice").unwrap()
}

impl Billed {
    /// (available, held, charged) of alice.
    async fn money(&self) -> (i64, u64, u64) {
        let b = self.ledger.balance(&alice()).await.unwrap();
        (b.available, b.held, b.charged)
    }

    async fn post(&self, path: &str, json: &str) -> Reply {
        let req = Request::post(path)
            .header("authorization", format!("Bearer {ALICE_KEY}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(json.to_owned())))
            .unwrap();
        self.server.send(req).await
    }
}

fn data_uri(png: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

fn pixels(bytes: &[u8]) -> RgbaImage {
    image::load_from_memory(bytes).unwrap().into_rgba8()
}

fn encode(image: &RgbaImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[tokio::test]
async fn a_generation_is_billed_and_its_outputs_chain_into_an_edit_and_a_compose() {
    let b = billed(Duration::ZERO).await;
    let reply = b
        .post(
            "/v1/images/generations",
            r#"{"model":"gpt-image-2","prompt":"a red fox","n":2,"aspect_ratio":"3:2","response_format":"url"}"#,
        )
        .await;
    let images = reply.images();
    assert_eq!(images.len(), 2);
    assert_eq!(pixels(&images[0]).dimensions(), (1536, 1024));
    let ids = reply.generation_ids();
    assert_eq!(b.money().await, (1000 - 2 * PRICE as i64, 0, 2 * PRICE));

    let edited = b.server.edit_generation(ALICE_KEY, &ids[0]).await;
    assert_eq!(edited.images().len(), 1);
    let composed = b
        .post(
            "/v1/images/compose",
            &format!(
                r#"{{"model":"gpt-image-2","prompt":"side by side","generation_ids":["{}","{}"],"size":"64x32"}}"#,
                ids[0], ids[1]
            ),
        )
        .await;
    assert_eq!(pixels(&composed.images()[0]).dimensions(), (64, 32));
    // A compose output chains like any other.
    let chained = b
        .server
        .edit_generation(ALICE_KEY, &composed.generation_ids()[0])
        .await;
    assert_eq!(chained.images().len(), 1);
    assert_eq!(b.money().await.2, 5 * PRICE);
}

#[tokio::test]
async fn answers_say_what_was_made_as_openai_describes_its_images() {
    let b = billed(Duration::ZERO).await;
    let source = data_uri(&png(48, 32));
    let cases = [
        // (output_format, background asked, expected background, quality)
        ("jpeg", "auto", "opaque", "high"),
        ("png", "transparent", "transparent", "low"),
        ("png", "auto", "transparent", "auto"),
        ("webp", "opaque", "opaque", "medium"),
    ];
    for (format, asked, background, quality) in cases {
        let reply = b
            .post(
                "/v1/images/edits",
                &format!(
                    r#"{{"model":"gpt-image-2","prompt":"p","n":2,"images":[{{"image_url":"{source}"}}],
                    "size":"auto","output_format":"{format}","background":"{asked}","quality":"{quality}"}}"#
                ),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let answer = reply.json();
        // `auto` answers the size it became: the source's.
        assert_eq!(answer["size"], "48x32", "{format}");
        assert_eq!(answer["output_format"], format);
        assert_eq!(answer["background"], background, "{format} {asked}");
        assert_eq!(answer["quality"], quality);
        assert_eq!(answer["usage"]["images"], 2);
        assert_eq!(answer["usage"]["total_tokens"], 0);
        assert_eq!(answer["data"].as_array().unwrap().len(), 2);
    }
}

#[tokio::test]
async fn a_compose_mixes_a_key_a_generation_and_a_data_uri_and_refuses_four_or_duplicates() {
    let b = billed(Duration::ZERO).await;
    let red = encode(&RgbaImage::from_pixel(8, 8, Rgba([255, 0, 0, 255])));
    let blue = encode(&RgbaImage::from_pixel(8, 8, Rgba([0, 0, 255, 255])));
    let green = encode(&RgbaImage::from_pixel(8, 8, Rgba([0, 255, 0, 255])));
    let key = b
        .server
        .upload(ALICE_KEY, &[("red.png", &red)])
        .await
        .uploaded_keys()[0]
        .clone();
    let generated = b
        .post(
            "/v1/images/generations",
            r#"{"model":"gpt-image-2","prompt":"p","size":"8x8"}"#,
        )
        .await
        .generation_ids()[0]
        .clone();
    let body = format!(
        r#"{{"model":"gpt-image-2","prompt":"p","image_keys":["{key}"],"generation_ids":["{generated}"],"image_urls":["{}"],"size":"24x8"}}"#,
        data_uri(&blue)
    );
    let mut reply = b.post("/v1/images/compose", &body).await;
    for _ in 0..50 {
        if reply.status != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        reply = b.post("/v1/images/compose", &body).await;
    }
    let out = pixels(&reply.images()[0]);
    assert_eq!(
        out.get_pixel(2, 4),
        &Rgba([255, 0, 0, 255]),
        "the key's strip"
    );
    assert_eq!(
        out.get_pixel(21, 4),
        &Rgba([0, 0, 255, 255]),
        "the data URI's strip"
    );
    let sources = reply.headers["x-source-image-keys"].to_str().unwrap();
    assert_eq!(sources.split(',').count(), 3, "{sources}");
    let charged = b.money().await.2;

    let four = format!(
        r#"{{"model":"gpt-image-2","prompt":"p","image_keys":["{key}"],"generation_ids":["{generated}"],"image_urls":["{}","{}"]}}"#,
        data_uri(&blue),
        data_uri(&green)
    );
    let refused = b.post("/v1/images/compose", &four).await;
    assert_eq!(refused.error().0, 400);
    // The same image twice: a generation and its own stored file, named two ways.
    let stored = format!("files/alice/{generated}_generation.png");
    let twice = format!(
        r#"{{"model":"gpt-image-2","prompt":"p","image_keys":["{stored}"],"generation_ids":["{generated}"]}}"#
    );
    let refused = b.post("/v1/images/compose", &twice).await;
    assert_eq!(
        refused.error(),
        (400, "invalid_request".into(), Some("image_keys".into()))
    );
    assert_eq!(b.money().await.2, charged, "refusals charge nothing");
}

#[tokio::test]
async fn masks_edit_only_their_transparent_area_as_json_and_as_multipart() {
    let b = billed(Duration::ZERO).await;
    let source = RgbaImage::from_pixel(8, 4, Rgba([10, 20, 30, 255]));
    let mask = RgbaImage::from_fn(8, 4, |x, _| Rgba([0, 0, 0, if x < 4 { 0 } else { 255 }]));
    let (source, mask) = (encode(&source), encode(&mask));
    let check = |bytes: &[u8]| {
        let out = pixels(bytes);
        assert_eq!(out.get_pixel(1, 1), &Rgba([245, 235, 225, 255]), "edited");
        assert_eq!(out.get_pixel(6, 1), &Rgba([10, 20, 30, 255]), "kept");
    };
    // OpenAI's JSON shape: the source by file_id (an upload's key), the mask as a data URI.
    let key = b
        .server
        .upload(ALICE_KEY, &[("s.png", &source)])
        .await
        .uploaded_keys()[0]
        .clone();
    let json = format!(
        r#"{{"model":"gpt-image-2","prompt":"p","images":[{{"file_id":"{key}"}}],"mask":{{"image_url":"{}"}}}}"#,
        data_uri(&mask)
    );
    check(&b.post("/v1/images/edits", &json).await.images()[0]);
    // The SDK's multipart shape.
    let form = Form::new()
        .text("model", "gpt-image-2")
        .text("prompt", "p")
        .file("image", "s.png", "image/png", &source)
        .file("mask", "m.png", "image/png", &mask);
    check(&b.server.edit_form(ALICE_KEY, form).await.images()[0]);
    // A mask of the wrong size is the client's error, and costs nothing.
    let before = b.money().await;
    let form = Form::new()
        .text("model", "gpt-image-2")
        .text("prompt", "p")
        .file("image", "s.png", "image/png", &source)
        .file("mask", "m.png", "image/png", &png(3, 3));
    let reply = b.server.edit_form(ALICE_KEY, form).await;
    assert_eq!(reply.error().0, 400);
    assert_eq!(b.money().await, before);
}

#[tokio::test]
async fn models_and_qualities_are_open_strings_checked_against_the_catalog() {
    let b = billed(Duration::ZERO).await;
    let generate = |model: &str, quality: &str, size: &str| {
        format!(r#"{{"model":"{model}","prompt":"p","quality":"{quality}","size":"{size}"}}"#)
    };
    let ok = b
        .post(
            "/v1/images/generations",
            &generate("dall-e-3", "hd", "16x16"),
        )
        .await;
    assert_eq!(ok.images().len(), 1);
    for (body, expected) in [
        (
            generate("dall-e-3", "high", "16x16"),
            (400, "invalid_request", Some("quality")),
        ),
        (
            generate("gpt-image-2", "hd", "16x16"),
            (400, "invalid_request", Some("quality")),
        ),
        (
            generate("gpt-image-2", "HIGH", "16x16"),
            (400, "invalid_request", Some("quality")),
        ),
        (
            generate("gpt-image-3", "auto", "16x16"),
            (404, "model_not_found", Some("model")),
        ),
        (
            generate("gpt-image-2", "auto", "1024 x 1024"),
            (400, "invalid_request", Some("size")),
        ),
        (
            generate("gpt-image-2", "auto", "large"),
            (400, "invalid_request", Some("size")),
        ),
        (
            generate("gpt-image-2", "auto", "12345678x12345678"),
            (400, "invalid_request", Some("size")),
        ),
    ] {
        let reply = b.post("/v1/images/generations", &body).await;
        let (status, code, param) = expected;
        assert_eq!(
            reply.error(),
            (status, code.to_owned(), param.map(str::to_owned)),
            "{body}"
        );
    }
    // A well-formed size the model cannot make is refunded: the spec's auto-refund.
    let before = b.money().await;
    let reply = b
        .post(
            "/v1/images/generations",
            &generate("gpt-image-2", "auto", "9999x9999"),
        )
        .await;
    assert_eq!(reply.error().2.as_deref(), Some("size"));
    assert_eq!(b.money().await, before);
}

#[tokio::test]
async fn models_are_listed_in_openai_shape() {
    let b = billed(Duration::ZERO).await;
    let reply = b.server.call(Method::GET, "/v1/models", ALICE_KEY).await;
    assert_eq!(reply.status, StatusCode::OK);
    let v = reply.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "dall-e-3");
    assert_eq!(v["data"][1]["id"], "gpt-image-2");
    assert_eq!(v["data"][1]["object"], "model");
    let anonymous = b
        .server
        .call(Method::GET, "/v1/models", "pk_live_nobody")
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

/// A streamed request read as it arrives; `stop_after` events end the read (the connection
/// is then dropped, as a client that leaves).
async fn stream(
    b: &Billed,
    path: &str,
    json: &str,
    stop_after: Option<usize>,
) -> (StatusCode, Vec<serde_json::Value>, String) {
    let stream = TcpStream::connect(b.server.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let req = Request::post(path)
        .header("host", "gateway")
        .header("authorization", format!("Bearer {ALICE_KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json.to_owned())))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status();
    let mut body = res.into_body();
    let mut text = String::new();
    let mut events = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.unwrap().into_data() else {
            continue;
        };
        text.push_str(std::str::from_utf8(&data).unwrap());
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                events.push(serde_json::from_str(data).unwrap());
            } else if !event.starts_with(": keep-alive") {
                panic!("unexpected frame {event:?}");
            }
        }
        if stop_after.is_some_and(|n| events.len() >= n) {
            connection.abort();
            return (status, events, text);
        }
    }
    (status, events, text)
}

#[tokio::test]
async fn a_full_stream_sends_partials_then_completed_images_and_charges_them() {
    let b = billed(Duration::from_millis(300)).await;
    let (status, events, _) = stream(
        &b,
        "/v1/images/edits",
        &format!(
            r#"{{"model":"gpt-image-2","prompt":"p","images":[{{"image_url":"{}"}}],"n":2,"stream":true,"partial_images":2,"size":"64x64"}}"#,
            data_uri(&png(32, 32))
        ),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "image_edit.partial_image",
            "image_edit.partial_image",
            "image_edit.completed",
            "image_edit.completed"
        ]
    );
    assert_eq!(events[1]["partial_image_index"], 1);
    for event in &events {
        assert_eq!(event["size"], "64x64");
        assert_eq!(event["output_format"], "png");
        assert!(event["created_at"].as_u64().unwrap() > 0);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(event["b64_json"].as_str().unwrap())
            .unwrap();
        assert!(bytes.starts_with(b"\x89PNG"));
    }
    assert!(events[2]["usage"].is_object());
    // The completed images are reachable by their ids, and were charged.
    let id = events[3]["picklyone_generation_id"].as_str().unwrap();
    assert_eq!(
        b.server.edit_generation(ALICE_KEY, id).await.status,
        StatusCode::OK
    );
    assert_eq!(b.money().await, (1000 - 3 * PRICE as i64, 0, 3 * PRICE));
}

#[tokio::test]
async fn a_generation_stream_names_its_events_and_sends_keepalives_while_silent() {
    let b = billed(Duration::from_millis(600)).await;
    let (status, events, _) = stream(
        &b,
        "/v1/images/generations",
        r#"{"model":"gpt-image-2","prompt":"p","stream":true,"partial_images":1,"size":"16x16"}"#,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "image_generation.partial_image",
            "image_generation.completed"
        ]
    );
    // 300 ms between steps with a 100 ms keep-alive: comments were sent (the reader skips
    // them; a raw read sees them).
    let raw = raw_stream(
        &b,
        r#"{"model":"gpt-image-2","prompt":"p","stream":true,"size":"16x16"}"#,
    )
    .await;
    assert!(raw.contains(": keep-alive\n\n"), "{raw}");
}

async fn raw_stream(b: &Billed, json: &str) -> String {
    let req = Request::post("/v1/images/generations")
        .header("authorization", format!("Bearer {ALICE_KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json.to_owned())))
        .unwrap();
    let reply = b.server.send(req).await;
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    String::from_utf8(reply.body.to_vec()).unwrap()
}

#[tokio::test]
async fn a_client_that_leaves_after_the_first_partial_is_charged_and_its_images_are_kept() {
    let b = billed(Duration::from_millis(600)).await;
    let (status, events, _) = stream(
        &b,
        "/v1/images/generations",
        r#"{"model":"gpt-image-2","prompt":"p","n":2,"stream":true,"partial_images":2,"size":"16x16"}"#,
        Some(1),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(events[0]["type"], "image_generation.partial_image");
    // A partial image is work done: the job runs to its end and is charged for both images.
    let mut money = b.money().await;
    for _ in 0..200 {
        if money.1 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        money = b.money().await;
    }
    assert_eq!(money, (1000 - 2 * PRICE as i64, 0, 2 * PRICE));
    // Both outputs are kept for the client that left: listed, and usable by id.
    let mut listed = serde_json::Value::Null;
    for _ in 0..200 {
        listed = b
            .server
            .call(Method::GET, "/api/v1/files", ALICE_KEY)
            .await
            .json();
        if listed["data"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(2), "{listed}");
}

#[tokio::test]
async fn a_stream_refused_before_its_hold_is_a_plain_json_error_and_one_failing_after_is_an_error_frame(
) {
    let b = billed(Duration::ZERO).await;
    let (status, _, text) = stream(
        &b,
        "/v1/images/generations",
        r#"{"model":"gpt-image-2","prompt":"p","n":4,"stream":true,"size":"16x16"}"#,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let req = Request::post("/v1/images/generations")
        .header("authorization", format!("Bearer {BOB_KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-image-2","prompt":"p","stream":true}"#,
        )))
        .unwrap();
    let reply = b.server.send(req).await; // bob holds nothing
    assert_eq!(reply.error().1, "insufficient_balance");
    // A size over the reference backend's cap fails after the hold: an error frame, and
    // the hold released.
    let (status, events, text) = stream(
        &b,
        "/v1/images/generations",
        r#"{"model":"gpt-image-2","prompt":"p","stream":true,"size":"9000x9000"}"#,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{events:?} {text}");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["error"]["param"], "size");
    assert_eq!(b.money().await.1, 0);
}

#[tokio::test]
async fn a_compose_streams_as_edit_events_and_a_client_leaving_after_a_completed_image_pays_for_all_completed(
) {
    let b = billed(Duration::from_millis(300)).await;
    let body = format!(
        r#"{{"model":"gpt-image-2","prompt":"p","image_urls":["{}"],"n":2,"stream":true,"partial_images":1,"size":"16x16"}}"#,
        data_uri(&png(8, 8))
    );
    let (status, events, _) = stream(&b, "/v1/images/compose", &body, None).await;
    assert_eq!(status, StatusCode::OK);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "image_edit.partial_image",
            "image_edit.completed",
            "image_edit.completed"
        ]
    );
    assert_eq!(b.money().await, (1000 - 2 * PRICE as i64, 0, 2 * PRICE));

    // Leaving after the first completed event: both images were settled (and stored) before
    // their events were due, so both are charged and both are reachable.
    let (_, events, _) = stream(&b, "/v1/images/compose", &body, Some(2)).await;
    assert_eq!(events[1]["type"], "image_edit.completed");
    assert_eq!(b.money().await, (1000 - 4 * PRICE as i64, 0, 4 * PRICE));
    let id = events[1]["picklyone_generation_id"].as_str().unwrap();
    assert_eq!(
        b.server.edit_generation(ALICE_KEY, id).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_streamed_request_retried_with_its_idempotency_key_replays_its_images_uncharged() {
    let b = billed(Duration::ZERO).await;
    let send = || async {
        let req = Request::post("/v1/images/generations")
            .header("authorization", format!("Bearer {ALICE_KEY}"))
            .header("content-type", "application/json")
            .header("idempotency-key", "stream-once")
            .body(Full::new(Bytes::from_static(
                br#"{"model":"gpt-image-2","prompt":"p","stream":true,"size":"16x16"}"#,
            )))
            .unwrap();
        let reply = b.server.send(req).await;
        assert_eq!(reply.headers["content-type"], "text/event-stream");
        let text = String::from_utf8(reply.body.to_vec()).unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
            .collect::<Vec<_>>()
    };
    let first = send().await;
    let again = send().await;
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0]["picklyone_generation_id"],
        again[0]["picklyone_generation_id"]
    );
    assert_eq!(b.money().await.2, PRICE, "charged once");
}

#[tokio::test]
async fn an_edit_takes_sixteen_images_and_refuses_seventeen_uncharged() {
    let b = billed(Duration::ZERO).await;
    let form = |count: usize| {
        (0..count).fold(
            Form::new().text("model", "gpt-image-2").text("prompt", "p"),
            |form, i| form.file("image[]", &format!("{i}.png"), "image/png", &png(4, 4)),
        )
    };
    assert_eq!(
        b.server.edit_form(ALICE_KEY, form(16)).await.images().len(),
        1
    );
    let charged = b.money().await;
    let reply = b.server.edit_form(ALICE_KEY, form(17)).await;
    assert_eq!(
        reply.error(),
        (400, "invalid_request".into(), Some("image".into()))
    );
    assert_eq!(b.money().await, charged);
}

/// Sends a streamed request and hangs up `after` it was sent, whatever has arrived.
async fn stream_and_leave(b: &Billed, json: &str, after: Duration) {
    let stream = TcpStream::connect(b.server.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let req = Request::post("/v1/images/generations")
        .header("host", "gateway")
        .header("authorization", format!("Bearer {ALICE_KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json.to_owned())))
        .unwrap();
    let read = async {
        if let Ok(res) = sender.send_request(req).await {
            let mut body = res.into_body();
            while body.frame().await.is_some() {}
        }
    };
    let _ = tokio::time::timeout(after, read).await;
    connection.abort();
}

#[tokio::test]
async fn streams_left_at_every_moment_charge_exactly_the_images_that_became_reachable() {
    // 200 ms of work in three steps (two partials); 20 clients leave at moments spread from
    // the start to past the end: before the hold, while the backend works, between its
    // answer, the settle and the stored outputs, and after the completed events.
    let b = billed(Duration::from_millis(200)).await;
    let body = r#"{"model":"gpt-image-2","prompt":"p","n":2,"stream":true,"partial_images":2,"size":"8x8"}"#;
    // One stream read to its end tells how long the window is on this machine and load.
    let started = std::time::Instant::now();
    stream_and_leave(&b, body, Duration::from_secs(30)).await;
    let window = started.elapsed() * 2;
    let runs = 20u32;
    for step in 0..runs {
        stream_and_leave(&b, body, window * step / runs).await;
    }
    // Every hold ends (settled or released) once the work has stopped.
    let mut money = b.money().await;
    for _ in 0..200 {
        if money.1 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        money = b.money().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (available, held, charged) = b.money().await;
    assert_eq!(held, 0, "every hold ended");
    assert_eq!(available + charged as i64, 1000, "conservation");
    // Generations have no sources: every stored file is an output. Each reachable one was
    // charged, and nothing else was.
    let listed = b
        .server
        .call(Method::GET, "/api/v1/files?limit=100", ALICE_KEY)
        .await
        .json();
    let reachable = listed["data"].as_array().unwrap().len() as u64;
    assert_eq!(charged, reachable * PRICE, "{listed}");
    assert_eq!(
        reachable % 2,
        0,
        "a job's two images are charged and stored together"
    );
}
