//! A `provider = "gemini"` deployment through the binary, against a loopback server that
//! speaks the Gemini API's `generateContent` (v1beta): what each OpenAI field becomes, how
//! Gemini's refusals and failures are answered, and what is charged.

use crate::common;
use crate::upstream::{routed_binary_with, start_mock, Script, UPSTREAM_KEY};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// What the loopback Gemini answers each call.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// A text part, then one PNG as inline data.
    Image,
    /// `promptFeedback.blockReason`, no candidates.
    Blocked,
    /// A candidate stopped by `IMAGE_SAFETY`, no image.
    Unsafe,
    /// `429 RESOURCE_EXHAUSTED`.
    Exhausted,
    /// `429` to the first call, `400 INVALID_ARGUMENT` to the others.
    ExhaustedThenInvalid,
}

/// One call as received.
#[derive(Clone, Debug)]
struct Call {
    path: String,
    key: Option<String>,
    authorization: Option<String>,
    body: serde_json::Value,
}

struct Gemini {
    addr: SocketAddr,
    answer: Mutex<Answer>,
    calls: Mutex<Vec<Call>>,
    /// Images answered in all: what Google would bill.
    rendered: AtomicUsize,
}

async fn handle(
    gemini: Arc<Gemini>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (key, authorization) = (header("x-goog-api-key"), header("authorization"));
    let path = req.uri().path().to_owned();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    gemini.calls.lock().unwrap().push(Call {
        path,
        key,
        authorization,
        body: serde_json::from_slice(&body).unwrap(),
    });
    let call = gemini.calls.lock().unwrap().len() - 1;
    let answer = match *gemini.answer.lock().unwrap() {
        Answer::ExhaustedThenInvalid if call == 0 => Answer::Exhausted,
        answer => answer,
    };
    let (status, json) = match answer {
        Answer::Image => {
            gemini.rendered.fetch_add(1, Ordering::SeqCst);
            (
                StatusCode::OK,
                serde_json::json!({
                    "candidates": [{
                        "content": {"role": "model", "parts": [
                            {"text": "Here is the image"},
                            {"inlineData": {"mimeType": "image/png", "data": STANDARD.encode(png(8, 8))}},
                        ]},
                        "finishReason": "STOP",
                        "index": 0,
                    }],
                    "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 1290},
                    "modelVersion": "gemini-2.5-flash-image",
                }),
            )
        }
        Answer::Blocked => (
            StatusCode::OK,
            serde_json::json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}),
        ),
        Answer::Unsafe => (
            StatusCode::OK,
            serde_json::json!({"candidates": [{"finishReason": "IMAGE_SAFETY", "index": 0}]}),
        ),
        Answer::Exhausted => (
            StatusCode::TOO_MANY_REQUESTS,
            serde_json::json!({"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}}),
        ),
        Answer::ExhaustedThenInvalid => (
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": {"code": 400, "message": "Request contains an invalid argument.", "status": "INVALID_ARGUMENT"}}),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(json.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(response)
}

async fn start_gemini(answer: Answer) -> Arc<Gemini> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gemini = Arc::new(Gemini {
        addr: listener.local_addr().unwrap(),
        answer: Mutex::new(answer),
        calls: Mutex::new(Vec::new()),
        rendered: AtomicUsize::new(0),
    });
    let served = gemini.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let gemini = served.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| handle(gemini.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    gemini
}

/// The TOML of a Gemini deployment at `addr`, with `extra` lines.
fn deployment(addr: SocketAddr, extra: &str) -> String {
    format!(
        "[[models.\"gpt-image-2\".upstreams]]\nprovider = \"gemini\"\nurl = \"http://{addr}\"\n\
         key_env = \"UPSTREAM_TEST_KEY\"\nmodel = \"gemini-2.5-flash-image\"\n{extra}"
    )
}

/// The binary with `gemini` first (priority 1) and an OpenAI-compatible deployment at
/// `openai` behind it.
fn gemini_then_openai(
    gemini: &Gemini,
    openai: SocketAddr,
) -> (common::binary::Process, TestServer) {
    routed_binary_with(
        &format!(
            "{}priority = 1\n[[models.\"gpt-image-2\".upstreams]]\nurl = \"http://{openai}\"\n",
            deployment(gemini.addr, ""),
        ),
        &[],
    )
}

fn form(fields: &[(&str, &str)]) -> Form {
    let mut form = Form::new()
        .text("model", "gpt-image-2")
        .text("prompt", "put it on a beach");
    for (name, value) in fields {
        form = form.text(name, value);
    }
    form.file("image", "a.png", "image/png", &png(10, 10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gemini_deployment_gets_generate_content_and_every_field_is_sent_mapped_or_refused() {
    let gemini = start_gemini(Answer::Image).await;
    let (_process, server) = routed_binary_with(&deployment(gemini.addr, ""), &[]);

    // Sent and mapped: the prompt and the image as parts, the size as ratio and tier, `n`
    // as two calls, the model in the path, the key as `x-goog-api-key`; `stream` and
    // `response_format` are the gateway's own.
    let reply = server
        .edit_form(
            ALICE_KEY,
            form(&[
                ("n", "2"),
                ("size", "1536x1024"),
                ("quality", "auto"),
                ("background", "auto"),
                ("output_format", "png"),
                ("moderation", "auto"),
                ("response_format", "b64_json"),
            ]),
        )
        .await;
    assert_eq!(reply.images().len(), 2, "{:?}", reply.body);
    let calls = gemini.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    for call in &calls {
        assert_eq!(
            call.path,
            "/v1beta/models/gemini-2.5-flash-image:generateContent"
        );
        assert_eq!(call.key.as_deref(), Some(UPSTREAM_KEY));
        assert_eq!(call.authorization, None);
        let parts = &call.body["contents"][0]["parts"];
        assert_eq!(call.body["contents"][0]["role"], "user");
        assert_eq!(parts[0]["text"], "put it on a beach");
        assert_eq!(parts[1]["inline_data"]["mime_type"], "image/png");
        let sent = STANDARD
            .decode(parts[1]["inline_data"]["data"].as_str().unwrap())
            .unwrap();
        assert_eq!(sent, png(10, 10), "the source image, byte for byte");
        assert_eq!(parts.as_array().unwrap().len(), 2);
        assert_eq!(
            call.body["generationConfig"],
            serde_json::json!({
                "responseModalities": ["IMAGE"],
                "imageConfig": {"aspectRatio": "3:2", "imageSize": "2K"},
            })
        );
        assert_eq!(
            call.body.as_object().unwrap().len(),
            2,
            "nothing else: {}",
            call.body
        );
    }
    // Two images came, two charged.
    assert_eq!(server.balance(ALICE_KEY).await, (80, 0));

    // A streamed edit without partials is the gateway's stream of the final image.
    let reply = server
        .edit_form(ALICE_KEY, form(&[("stream", "true")]))
        .await;
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    assert!(text.contains("image_edit.completed"), "{text}");
    assert_eq!(server.balance(ALICE_KEY).await, (70, 0));

    // A generation is the prompt alone; `auto` sends no imageConfig.
    let req = Request::post("/v1/images/generations")
        .header("authorization", format!("Bearer {ALICE_KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-image-2","prompt":"a lighthouse"}"#,
        )))
        .unwrap();
    assert_eq!(server.send(req).await.images().len(), 1);
    let generation = gemini.calls.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        generation.body["contents"][0]["parts"],
        serde_json::json!([{"text": "a lighthouse"}])
    );
    assert_eq!(
        generation.body["generationConfig"],
        serde_json::json!({"responseModalities": ["IMAGE"]})
    );
    assert_eq!(server.balance(ALICE_KEY).await, (60, 0));

    // Refused, naming the field, before anything is sent; nothing charged.
    let before = gemini.calls.lock().unwrap().len();
    let refused: [(&[(&str, &str)], &str); 8] = [
        (&[("quality", "high")], "quality"),
        (&[("background", "transparent")], "background"),
        (&[("output_format", "jpeg")], "output_format"),
        (&[("output_compression", "80")], "output_compression"),
        (&[("moderation", "low")], "moderation"),
        (&[("input_fidelity", "high")], "input_fidelity"),
        (&[("user", "u-7")], "user"),
        (&[("size", "1000x333")], "size"),
    ];
    for (fields, param) in refused {
        let reply = server.edit_form(ALICE_KEY, form(fields)).await;
        assert_eq!(
            (reply.status.as_u16(), reply.error().2.as_deref()),
            (400, Some(param)),
            "{fields:?}: {:?}",
            reply.body
        );
    }
    // A stream has begun when the backend refuses: the refusal is its error event.
    let reply = server
        .edit_form(
            ALICE_KEY,
            form(&[("stream", "true"), ("partial_images", "2")]),
        )
        .await;
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    assert!(text.contains(r#""param":"partial_images""#), "{text}");
    assert!(!text.contains("completed"), "{text}");
    let masked = form(&[]).file("mask", "m.png", "image/png", &png(10, 10));
    let reply = server.edit_form(ALICE_KEY, masked).await;
    assert_eq!(
        (reply.status.as_u16(), reply.error().2.as_deref()),
        (400, Some("mask"))
    );
    assert_eq!(gemini.calls.lock().unwrap().len(), before);
    assert_eq!(server.balance(ALICE_KEY).await, (60, 0));
    assert_eq!(gemini.rendered.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_in_drop_fields_is_rendered_without_instead_of_refused() {
    let gemini = start_gemini(Answer::Image).await;
    let (_process, server) = routed_binary_with(
        &deployment(gemini.addr, "drop_fields = [\"user\", \"quality\"]\n"),
        &[],
    );
    let reply = server
        .edit_form(ALICE_KEY, form(&[("user", "u-7"), ("quality", "high")]))
        .await;
    assert_eq!(reply.images().len(), 1, "{:?}", reply.body);
    let call = gemini.calls.lock().unwrap()[0].clone();
    assert!(!call.body.to_string().contains("u-7"), "{}", call.body);
    assert_eq!(server.balance(ALICE_KEY).await, (90, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_refusals_are_content_policy_violations_that_never_fall_back_and_429_does() {
    let gemini = start_gemini(Answer::Blocked).await;
    let openai = start_mock(Script::Images(1)).await;
    let (_process, server) = gemini_then_openai(&gemini, openai.addr);
    for answer in [Answer::Blocked, Answer::Unsafe] {
        *gemini.answer.lock().unwrap() = answer;
        let reply = server
            .edit_form(ALICE_KEY, form(&[("size", "1024x1024")]))
            .await;
        assert_eq!(
            reply.error(),
            (
                400,
                "content_policy_violation".into(),
                Some("prompt".into())
            ),
            "{answer:?}: {:?}",
            reply.body
        );
        assert_eq!(openai.calls.load(Ordering::SeqCst), 0, "{answer:?}");
        assert_eq!(server.balance(ALICE_KEY).await, (100, 0), "{answer:?}");
    }
    // Gemini did not take the work: the next deployment renders, charged once.
    *gemini.answer.lock().unwrap() = Answer::Exhausted;
    let reply = server
        .edit_form(ALICE_KEY, form(&[("size", "1024x1024")]))
        .await;
    assert_eq!(reply.images().len(), 1, "{:?}", reply.body);
    assert_eq!(openai.calls.load(Ordering::SeqCst), 1);
    assert_eq!(gemini.rendered.load(Ordering::SeqCst), 0);
    assert_eq!(server.balance(ALICE_KEY).await, (90, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_several_calls_falls_back_only_when_no_call_was_taken() {
    // n = 2 is two calls: one answered 429 (not taken), one 400 (taken and refused). The
    // job's error is the refusal's, so no other deployment renders it.
    let gemini = start_gemini(Answer::ExhaustedThenInvalid).await;
    let openai = start_mock(Script::Images(2)).await;
    let (_process, server) = gemini_then_openai(&gemini, openai.addr);
    let reply = server
        .edit_form(ALICE_KEY, form(&[("n", "2"), ("size", "1024x1024")]))
        .await;
    assert_eq!(reply.status, 502, "{:?}", reply.body);
    assert_eq!(gemini.calls.lock().unwrap().len(), 2);
    assert_eq!(openai.calls.load(Ordering::SeqCst), 0, "no fallback");
    assert_eq!(server.balance(ALICE_KEY).await, (100, 0));
}
