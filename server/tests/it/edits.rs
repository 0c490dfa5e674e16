//! `POST /v1/images/edits` on a real server: both body methods, every shape the OpenAI SDKs
//! send, and every error of the spec's table this endpoint owns.

use crate::common;

use async_trait::async_trait;
use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{Empty, Full, StreamBody};
use image_gateway::backend::{BackendError, ImageBackend};
use image_gateway::catalog::ModelSpec;
use image_gateway::job::{EditJob, Image, Size};

use image_gateway::Gateway;

/// `(status, code, param)` of an expected error.
type Expected = (u16, &'static str, Option<&'static str>);

fn edit_form(image_field: &str, image: &[u8]) -> Form {
    Form::new()
        .file(image_field, "photo.png", "image/png", image)
        .text("model", "gpt-image-2")
        .text("prompt", "change background to city skyline at sunset")
}

#[tokio::test]
async fn multipart_single_image_returns_edited_images() {
    let server = reference_server().await;
    let form = edit_form("image", &png(40, 30))
        .text("n", "2")
        .text("size", "64x32");
    let reply = server.edit_form(ALICE_KEY, form).await;
    let images = reply.images();
    assert_eq!(images.len(), 2);
    for image in &images {
        assert_eq!(inspect(image), (image::ImageFormat::Png, 64, 32));
    }
    let v = reply.json();
    assert!(v["created"].as_u64().unwrap() > 1_700_000_000);
    let ids = v["picklyone_generation_ids"].as_array().unwrap();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    for id in ids {
        let id = id.as_str().unwrap();
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().to_string(), id);
    }
    // The spec's fields, and OpenAI's description of what was made.
    assert_eq!(
        v.as_object().unwrap().keys().collect::<Vec<_>>(),
        [
            "background",
            "created",
            "data",
            "output_format",
            "picklyone_generation_ids",
            "quality",
            "size",
            "usage"
        ]
    );
    assert_eq!(
        (&v["size"], &v["output_format"]),
        (&"64x32".into(), &"png".into())
    );
}

#[tokio::test]
async fn image_list_with_text_fields_before_and_after_the_files() {
    let server = reference_server().await;
    let form = Form::new()
        .text("model", "gpt-image-2")
        .file("image[]", "a.png", "image/png", &png(20, 20))
        .text("prompt", "blend")
        .file("image[]", "b.jpg", "image/jpeg", &jpeg(30, 10))
        .text("n", "1")
        .text("output_format", "jpeg");
    let images = server.edit_form(ALICE_KEY, form).await.images();
    assert_eq!(images.len(), 1);
    // The reference backend edits the first source, keeping its size for `auto`.
    assert_eq!(inspect(&images[0]), (image::ImageFormat::Jpeg, 20, 20));
}

#[tokio::test]
async fn text_fields_first_then_the_file() {
    let server = reference_server().await;
    let form = Form::new()
        .text("prompt", "p")
        .text("model", "gpt-image-2")
        .text("output_format", "webp")
        .file("image", "late.png", "application/octet-stream", &png(8, 8));
    let images = server.edit_form(ALICE_KEY, form).await.images();
    assert_eq!(inspect(&images[0]), (image::ImageFormat::WebP, 8, 8));
}

#[tokio::test]
async fn unknown_fields_do_not_break_a_request() {
    let server = reference_server().await;
    let form = edit_form("image", &png(8, 8))
        .file("mask", "mask.png", "image/png", &png(8, 8))
        .text("input_fidelity", "high")
        .text("output_compression", "80")
        .text("user", "someone")
        .text("response_format", "b64_json")
        .text("quality", "high")
        .text("background", "opaque");
    assert_eq!(server.edit_form(ALICE_KEY, form).await.images().len(), 1);

    let json = r#"{"model":"gpt-image-2","prompt":"p","generation_id":"a1b2c3d4-5678-90ab-cdef-1234567890ab",
                   "style":"vivid","input_fidelity":"low","output_compression":50,"user":"u","stream":false}"#;
    // Parsing passes; the unknown generation is the only complaint.
    let reply = server.edit_json(ALICE_KEY, json).await;
    assert_eq!(reply.error().1, "generation_not_found");
    // A mask is an image reference, never a silently ignored string.
    let json = r#"{"model":"gpt-image-2","prompt":"p","generation_id":"a1b2c3d4-5678-90ab-cdef-1234567890ab","mask":"x"}"#;
    let reply = server.edit_json(ALICE_KEY, json).await;
    assert_eq!(
        reply.error(),
        (400, "invalid_request".into(), Some("mask".into()))
    );
}

#[tokio::test]
async fn type_is_decided_by_bytes_not_by_name_or_content_type() {
    let server = reference_server().await;
    let text = b"this is a text file, whatever its name says".repeat(10);
    let form = Form::new()
        .file("image", "photo.png", "image/png", &text)
        .text("model", "gpt-image-2")
        .text("prompt", "p");
    let reply = server.edit_form(ALICE_KEY, form).await;
    assert_eq!(
        reply.error(),
        (400, "IMAGE_TYPE_UNSUPPORTED".into(), Some("image".into()))
    );

    // A real JPEG labelled as text is accepted.
    let form = Form::new()
        .file("image", "notes.txt", "text/plain", &jpeg(16, 16))
        .text("model", "gpt-image-2")
        .text("prompt", "p");
    assert_eq!(server.edit_form(ALICE_KEY, form).await.images().len(), 1);

    // Right magic number, broken body: a clear 400, not a 5xx.
    let mut broken = png(16, 16);
    broken.truncate(40);
    let reply = server
        .edit_form(ALICE_KEY, edit_form("image", &broken))
        .await;
    assert_eq!(
        reply.error(),
        (400, "invalid_request".into(), Some("image".into()))
    );
}

#[tokio::test]
async fn image_over_25_mib_is_image_too_large() {
    let server = reference_server().await;
    // 25.5 MiB: over the per-image limit, under the 26 MiB body limit.
    let mut big = png(4, 4);
    big.resize(25 * 1024 * 1024 + 512 * 1024, 0);
    let reply = server.edit_form(ALICE_KEY, edit_form("image", &big)).await;
    assert_eq!(
        reply.error(),
        (400, "IMAGE_TOO_LARGE".into(), Some("image".into()))
    );
}

#[tokio::test]
async fn body_over_26_mib_is_413_announced_or_streamed() {
    let server = reference_server().await;
    let thirty_mb = vec![b'a'; 30 * 1024 * 1024];

    // Announced by Content-Length: refused before a byte is read.
    let req = Request::post(EDITS)
        .header("authorization", format!("Bearer {ALICE_KEY}"))
        .header("content-type", "multipart/form-data; boundary=x")
        .body(Full::new(Bytes::from(thirty_mb.clone())))
        .unwrap();
    let reply = server.send(req).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error().1, "request_too_large");

    // Chunked, no length: cut off while streaming.
    let (content_type, head) = Form::new()
        .text("model", "gpt-image-2")
        .text("prompt", "p")
        .open_file("attachment");
    let chunks = std::iter::once(head).chain(
        thirty_mb
            .chunks(1024 * 1024)
            .map(Bytes::copy_from_slice)
            .collect::<Vec<_>>(),
    );
    let stream = futures_util::stream::iter(
        chunks.map(|c| Ok::<_, std::io::Error>(http_body::Frame::data(c))),
    );
    let req = Request::post(EDITS)
        .header("authorization", format!("Bearer {ALICE_KEY}"))
        .header("content-type", content_type)
        .body(StreamBody::new(stream))
        .unwrap();
    let reply = server.send(req).await;
    assert_eq!(reply.error().0, 413);
}

#[tokio::test]
async fn api_key_by_bearer_or_x_api_key_and_401_otherwise() {
    let server = reference_server().await;
    let (content_type, body) = edit_form("image", &png(8, 8)).finish();
    let request = |header: Option<(&str, String)>| {
        let mut builder = Request::post(EDITS).header("content-type", content_type.clone());
        if let Some((name, value)) = header {
            builder = builder.header(name, value);
        }
        builder.body(Full::new(body.clone())).unwrap()
    };
    let ok = server
        .send(request(Some(("x-api-key", ALICE_KEY.into()))))
        .await;
    assert_eq!(ok.images().len(), 1);
    let ok = server
        .send(request(Some((
            "authorization",
            format!("Bearer {BOB_KEY}"),
        ))))
        .await;
    assert_eq!(ok.images().len(), 1);

    let wrong = "pk_live_wrong_key_do_not_echo";
    for header in [
        None,
        Some(("authorization", format!("Bearer {wrong}"))),
        Some(("authorization", format!("Basic {ALICE_KEY}"))),
        Some(("authorization", "Bearer".to_string())),
        Some(("x-api-key", wrong.to_string())),
    ] {
        let reply = server.send(request(header)).await;
        assert_eq!(reply.error(), (401, "invalid_api_key".into(), None));
        let text = String::from_utf8_lossy(&reply.body);
        assert!(!text.contains(wrong) && !text.contains(ALICE_KEY), "{text}");
    }
}

#[tokio::test]
async fn json_errors_of_the_spec_table() {
    let server = reference_server().await;
    let gen = "a1b2c3d4-5678-90ab-cdef-1234567890ab";
    let own_key = "files/alice/0b7e7d4c-6f51-4a5b-9d6e-2a0c9b3e8f11_anchor.jpg";
    let bobs_key = "files/bob/0b7e7d4c-6f51-4a5b-9d6e-2a0c9b3e8f11_anchor.jpg";
    let cases: Vec<(String, Expected)> = vec![
        ("{not json".into(), (400, "invalid_request", None)),
        (
            r#"{"prompt":"p","generation_id":"x"}"#.into(),
            (400, "invalid_request", Some("model")),
        ),
        (
            format!(r#"{{"model":"gpt-image-2","generation_id":"{gen}"}}"#),
            (400, "invalid_request", Some("prompt")),
        ),
        (
            format!(r#"{{"model":"gpt-image-2","prompt":"","generation_id":"{gen}"}}"#),
            (400, "invalid_request", Some("prompt")),
        ),
        (
            r#"{"model":"gpt-image-2","prompt":"p"}"#.into(),
            (400, "invalid_request", Some("image_key")),
        ),
        (
            format!(
                r#"{{"model":"gpt-image-2","prompt":"p","image_key":"{own_key}","generation_id":"{gen}"}}"#
            ),
            (400, "invalid_request", Some("image_key")),
        ),
        (
            r#"{"model":"gpt-image-2","prompt":"p","generation_id":"not-a-uuid"}"#.into(),
            (400, "invalid_generation_id", Some("generation_id")),
        ),
        (
            r#"{"model":"gpt-image-2","prompt":"p","image_key":"files/alice/../../etc/passwd"}"#
                .into(),
            (400, "invalid_image_key", Some("image_key")),
        ),
        (
            format!(r#"{{"model":"gpt-image-2","prompt":"p","image_key":"{bobs_key}"}}"#),
            (400, "invalid_image_key", Some("image_key")),
        ),
        (
            format!(r#"{{"model":"dall-e-9","prompt":"p","generation_id":"{gen}"}}"#),
            (404, "model_not_found", Some("model")),
        ),
        (
            format!(r#"{{"model":"gpt-image-2","prompt":"p","generation_id":"{gen}","n":11}}"#),
            (400, "invalid_request", Some("n")),
        ),
        (
            format!(r#"{{"model":"gpt-image-2","prompt":"p","generation_id":"{gen}","n":0}}"#),
            (400, "invalid_request", Some("n")),
        ),
        (
            format!(
                r#"{{"model":"gpt-image-2","prompt":"p","generation_id":"{gen}","size":"1024x1024x"}}"#
            ),
            (400, "invalid_request", Some("size")),
        ),
        (
            format!(
                r#"{{"model":"gpt-image-2","prompt":"p","generation_id":"{gen}","quality":"ultra"}}"#
            ),
            (400, "invalid_request", Some("quality")),
        ),
        (
            format!(
                r#"{{"model":"gpt-image-2","prompt":"p","generation_id":"{gen}","background":"red"}}"#
            ),
            (400, "invalid_request", Some("background")),
        ),
        (
            format!(
                r#"{{"model":"gpt-image-2","prompt":"p","generation_id":"{gen}","output_format":"bmp"}}"#
            ),
            (400, "invalid_request", Some("output_format")),
        ),
        (
            format!(
                r#"{{"model":"gpt-image-2","prompt":"{}","generation_id":"{gen}"}}"#,
                "a".repeat(32_001)
            ),
            (400, "invalid_request", Some("prompt")),
        ),
    ];
    for (body, (status, code, param)) in cases {
        let reply = server.edit_json(ALICE_KEY, &body).await;
        assert_eq!(
            reply.error(),
            (status, code.to_owned(), param.map(str::to_owned)),
            "{}",
            &body[..body.len().min(120)]
        );
    }
}

#[tokio::test]
async fn multipart_validation_names_the_field() {
    let server = reference_server().await;
    let cases = [
        (
            Form::new().text("model", "gpt-image-2").text("prompt", "p"),
            (400, "invalid_request", Some("image")),
        ),
        (
            edit_form("image", &png(8, 8)).text("n", "one"),
            (400, "invalid_request", Some("n")),
        ),
        (
            edit_form("image", &png(8, 8)).text("prompt", "again"),
            (400, "invalid_request", Some("prompt")),
        ),
        (
            edit_form("image", &png(8, 8))
                .text("generation_id", "a1b2c3d4-5678-90ab-cdef-1234567890ab"),
            (400, "invalid_request", Some("generation_id")),
        ),
        (
            Form::new()
                .file("image", "a.png", "image/png", &png(8, 8))
                .text("model", "x")
                .text("prompt", "p"),
            (404, "model_not_found", Some("model")),
        ),
    ];
    for (form, (status, code, param)) in cases {
        let reply = server.edit_form(ALICE_KEY, form).await;
        assert_eq!(
            reply.error(),
            (status, code.to_owned(), param.map(str::to_owned))
        );
    }
    // The missing-image message names both ways to send one.
    let form = Form::new().text("model", "gpt-image-2").text("prompt", "p");
    let v = server.edit_form(ALICE_KEY, form).await.json();
    assert!(v["error"]["message"].as_str().unwrap().contains("image"));
}

#[tokio::test]
async fn bad_bodies_are_400_not_5xx() {
    let server = reference_server().await;
    let with = |content_type: &str, body: &'static [u8]| {
        Request::post(EDITS)
            .header("x-api-key", ALICE_KEY)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from_static(body)))
            .unwrap()
    };
    for req in [
        with("text/plain", b"hello"),
        with("multipart/form-data", b"--x\r\n"),
        with(
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nunterminated",
        ),
        with(
            "multipart/form-data; boundary=x",
            b"garbage without any boundary",
        ),
        with("application/json", b"\xff\xfe"),
    ] {
        let reply = server.send(req).await;
        assert_eq!(reply.error().0, 400, "{:?}", reply);
    }
}

#[tokio::test]
async fn routes_outside_the_endpoint() {
    let server = reference_server().await;
    let get = Request::get(EDITS)
        .header("x-api-key", ALICE_KEY)
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(server.send(get).await.error().1, "method_not_allowed");
    let other = Request::post("/v1/images/variations")
        .header("x-api-key", ALICE_KEY)
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(
        server.send(other).await.error(),
        (404, "not_found".into(), None)
    );
}

/// A backend whose every answer is scripted by the prompt.
struct Scripted;

#[async_trait]
impl ImageBackend for Scripted {
    async fn edit(&self, job: &EditJob) -> Result<Vec<Image>, BackendError> {
        let image = Image::new(Bytes::from(png(4, 4)), job.params.output_format);
        match job.params.prompt.as_str() {
            "moderate me" => Err(BackendError::ContentPolicy {
                message: "violence".into(),
            }),
            "bad size" => Err(BackendError::UnsupportedSize {
                size: job.params.size,
            }),
            "crash" => Err(BackendError::upstream("secret upstream detail at 10.0.0.7")),
            "nothing" => Ok(Vec::new()),
            "too many" => Ok(vec![image; job.params.n as usize + 3]),
            _ => Ok(vec![image; 1]),
        }
    }
}

#[tokio::test]
async fn backend_failures_map_to_the_spec_table() {
    let gateway = Gateway::builder()
        .keys(keys())
        .backend(Scripted)
        .model("gpt-image-2", ModelSpec::new(4, 0))
        .build();
    let server = TestServer::start(gateway).await;
    let form = |prompt: &str| {
        Form::new()
            .file("image", "a.png", "image/png", &png(4, 4))
            .text("model", "gpt-image-2")
            .text("prompt", prompt)
            .text("n", "2")
            .text("size", "333x777")
    };
    let reply = server.edit_form(ALICE_KEY, form("moderate me")).await;
    assert_eq!(
        reply.error(),
        (
            400,
            "content_policy_violation".into(),
            Some("prompt".into())
        )
    );
    let reply = server.edit_form(ALICE_KEY, form("bad size")).await;
    assert_eq!(
        reply.error(),
        (400, "invalid_request".into(), Some("size".into()))
    );
    assert!(String::from_utf8_lossy(&reply.body).contains("333x777"));
    let reply = server.edit_form(ALICE_KEY, form("crash")).await;
    assert_eq!(reply.error(), (502, "upstream_error".into(), None));
    assert!(!String::from_utf8_lossy(&reply.body).contains("10.0.0.7"));
    let reply = server.edit_form(ALICE_KEY, form("nothing")).await;
    assert_eq!(reply.error().1, "upstream_error");
    // Fewer than n is a success with what came back; more than n is cut to n.
    assert_eq!(
        server
            .edit_form(ALICE_KEY, form("one"))
            .await
            .images()
            .len(),
        1
    );
    assert_eq!(
        server
            .edit_form(ALICE_KEY, form("too many"))
            .await
            .images()
            .len(),
        2
    );
}

#[tokio::test]
async fn reference_backend_refuses_sizes_it_cannot_make() {
    let server = reference_server().await;
    let form = edit_form("image", &png(8, 8)).text("size", "99999x99999");
    let reply = server.edit_form(ALICE_KEY, form).await;
    assert_eq!(
        reply.error(),
        (400, "invalid_request".into(), Some("size".into()))
    );
    assert_eq!(
        "99999x99999".parse::<Size>().unwrap(),
        Size::Exact {
            width: 99999,
            height: 99999
        }
    );
}
