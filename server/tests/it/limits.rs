//! Limits on hostile or greedy clients, each proved just under and just over its bound.

use crate::common;

use image_gateway::job::{EditJob, Image};
use std::num::NonZeroU32;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::Full;
use image_gateway::auth::UserId;
use image_gateway::backend::{BackendError, ImageBackend};
use image_gateway::ratelimit::RateLimitLayer;
use image_gateway::Gateway;

#[tokio::test]
async fn requests_over_the_rate_are_429_with_retry_after() {
    let limits = RateLimitLayer::new()
        .per_minute(NonZeroU32::new(3).unwrap())
        .user_per_minute(UserId::new("bob").unwrap(), NonZeroU32::new(1).unwrap());
    let server =
        TestServer::start(Gateway::builder().keys(keys()).rate_limit(limits).build()).await;
    for i in 0..3 {
        let reply = server.call(Method::GET, "/api/v1/balance", ALICE_KEY).await;
        assert_eq!(reply.status, 200, "request {i} is within the rate");
    }
    let reply = server.call(Method::GET, "/api/v1/balance", ALICE_KEY).await;
    assert_eq!(reply.error(), (429, "rate_limit_exceeded".into(), None));
    let wait: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");

    assert_eq!(
        server
            .call(Method::GET, "/api/v1/balance", BOB_KEY)
            .await
            .status,
        200
    );
    assert_eq!(
        server
            .call(Method::GET, "/api/v1/balance", BOB_KEY)
            .await
            .error()
            .0,
        429,
        "bob's own rate is 1"
    );
    // Unauthenticated requests are the auth layer's: 401, not 429.
    let reply = server
        .call(Method::GET, "/api/v1/balance", "pk_unknown")
        .await;
    assert_eq!(reply.error().0, 401);
}

struct Slow;

#[async_trait]
impl ImageBackend for Slow {
    async fn edit(&self, job: &EditJob) -> Result<Vec<Image>, BackendError> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(vec![Image::new(
            Bytes::from(png(2, 2)),
            job.params.output_format,
        )])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_in_flight_bound_are_429() {
    let limits = RateLimitLayer::new().max_in_flight(2);
    let server = TestServer::start(
        Gateway::builder()
            .keys(keys())
            .backend(Slow)
            .rate_limit(limits)
            .build(),
    )
    .await;
    let edit = || {
        Form::new()
            .file("image", "a.png", "image/png", &png(2, 2))
            .text("model", "gpt-image-2")
            .text("prompt", "p")
    };
    let addr = server.addr;
    let tasks: Vec<_> = (0..3)
        .map(|i| {
            let (content_type, body) = edit().finish();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 50)).await;
                let req = Request::post(EDITS)
                    .header("x-api-key", ALICE_KEY)
                    .header("content-type", content_type)
                    .body(Full::new(body))
                    .unwrap();
                send(addr, req).await.status.as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 429]);
    // Bob has his own slots; alice's are free again once hers finished.
    assert_eq!(server.edit_form(BOB_KEY, edit()).await.status, 200);
    assert_eq!(server.edit_form(ALICE_KEY, edit()).await.status, 200);
}

fn with_parts(count: usize) -> Form {
    let mut form = Form::new()
        .file("image", "a.png", "image/png", &png(2, 2))
        .text("model", "gpt-image-2")
        .text("prompt", "p");
    for i in 3..count {
        form = form.text(&format!("extra_{i}"), "x");
    }
    form
}

#[tokio::test]
async fn parsing_limits_just_under_and_just_over() {
    let server = reference_server().await;
    // Parts: 64 allowed.
    assert_eq!(
        server.edit_form(ALICE_KEY, with_parts(64)).await.status,
        200
    );
    let reply = server.edit_form(ALICE_KEY, with_parts(65)).await;
    assert_eq!(reply.error(), (400, "invalid_request".into(), None));

    // A text field other than the prompt: 4 KiB.
    let form = |size: usize| with_parts(3).text("note", &"u".repeat(size));
    assert_eq!(
        server.edit_form(ALICE_KEY, form(4096)).await.status,
        200,
        "unused fields are skipped whatever their size"
    );
    // `user` is passed to the model: at most 256 visible characters.
    let form = |size: usize| with_parts(3).text("user", &"u".repeat(size));
    assert_eq!(server.edit_form(ALICE_KEY, form(256)).await.status, 200);
    assert_eq!(
        server.edit_form(ALICE_KEY, form(257)).await.error(),
        (400, "invalid_request".into(), Some("user".into()))
    );
    let form = |size: usize| with_parts(3).text("quality", &"h".repeat(size));
    assert_eq!(
        server
            .edit_form(ALICE_KEY, form(4096))
            .await
            .error()
            .2
            .as_deref(),
        Some("quality"),
        "within the size, a bad word"
    );
    let reply = server.edit_form(ALICE_KEY, form(4097)).await;
    assert_eq!(
        reply.error(),
        (400, "invalid_request".into(), Some("quality".into()))
    );
    assert!(String::from_utf8_lossy(&reply.body).contains("longer than 4096"));

    // The prompt: 32,000 characters.
    let prompt = |n: usize| {
        Form::new()
            .file("image", "a.png", "image/png", &png(2, 2))
            .text("model", "gpt-image-2")
            .text("prompt", &"é".repeat(n))
    };
    assert_eq!(
        server.edit_form(ALICE_KEY, prompt(32_000)).await.status,
        200
    );
    assert_eq!(
        server
            .edit_form(ALICE_KEY, prompt(32_001))
            .await
            .error()
            .2
            .as_deref(),
        Some("prompt")
    );

    // A JSON body (which may carry data URIs): the whole-body limit, 26 MiB.
    let json = |size: usize| {
        let head = r#"{"model":"gpt-image-2","prompt":"p","generation_id":"a1b2c3d4-5678-90ab-cdef-1234567890ab","pad":""#;
        let pad = size - head.len() - 2;
        format!("{head}{}\"}}", "x".repeat(pad))
    };
    let limit = 26 * 1024 * 1024;
    let under = json(limit);
    assert_eq!(under.len(), limit);
    assert_eq!(
        server.edit_json(ALICE_KEY, &under).await.error().1,
        "generation_not_found",
        "parsed"
    );
    let over = json(limit + 1);
    let reply = server.edit_json(ALICE_KEY, &over).await;
    assert_eq!(reply.error(), (413, "request_too_large".into(), None));
}

#[tokio::test]
async fn a_part_header_over_8_kib_is_400() {
    let server = reference_server().await;
    let with_header = |pad: usize| {
        let boundary = "----hdr-limit";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-image-2\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\nX-Pad: {}\r\n\r\np\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n",
            "p".repeat(pad)
        )
        .into_bytes();
        body.extend_from_slice(&png(2, 2));
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        Request::post(EDITS)
            .header("x-api-key", ALICE_KEY)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    // The header block is the pad plus about 60 bytes of Content-Disposition.
    assert_eq!(server.send(with_header(8000)).await.status, 200);
    let reply = server.send(with_header(8200)).await;
    assert_eq!(reply.error(), (400, "invalid_request".into(), None));
    assert!(String::from_utf8_lossy(&reply.body).contains("longer than 8192"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_sources_are_read_up_to_64_mib_and_refused_one_byte_over() {
    use image_gateway::source::MAX_NAMED_SOURCE_BYTES;
    use image_gateway::store::{FileKey, FileStore, MemoryFileStore};
    let store = std::sync::Arc::new(MemoryFileStore::new());
    let alice = UserId::new("alice").unwrap();
    // A valid PNG's head, padded: the reference backend decodes the first source.
    let stored = |len: usize| {
        let (store, alice) = (store.clone(), alice.clone());
        async move {
            let mut bytes = png(8, 8);
            bytes.resize(len, 0);
            let key = FileKey::new(&alice, uuid::Uuid::new_v4(), "big.png");
            store.put(&key, Bytes::from(bytes)).await.unwrap();
            key.as_str().to_owned()
        }
    };
    let half = MAX_NAMED_SOURCE_BYTES / 2;
    let (a, b, over) = (
        stored(half).await,
        stored(half).await,
        stored(half + 1).await,
    );
    let server =
        TestServer::start(Gateway::builder().keys(keys()).store(store.clone()).build()).await;
    let edit = |first: &str, second: &str| {
        format!(
            r#"{{"model":"gpt-image-2","prompt":"p","images":[{{"file_id":"{first}"}},{{"file_id":"{second}"}}]}}"#
        )
    };
    let at = server.edit_json(ALICE_KEY, &edit(&a, &b)).await;
    assert_eq!(at.status, 200, "exactly 64 MiB named: {:?}", at.error());
    let past = server.edit_json(ALICE_KEY, &edit(&a, &over)).await;
    assert_eq!(
        past.error(),
        (400, "invalid_request".into(), Some("images".into())),
        "one byte over"
    );
}
