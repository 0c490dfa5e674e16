//! Every log line of a full run, at TRACE, holds no API key, admin key, upstream key or image
//! byte, and every request leaves a span with its id.

mod common;

use base64::Engine;
use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::Full;
use image_gateway::backend::UpstreamBackend;
use image_gateway::catalog::ModelSpec;
use image_gateway::Gateway;

const ADMIN_KEY: &str = "admin_key_never_logged_5150";
const UPSTREAM_KEY: &str = "sk-upstream-never-logged-8080";
const WRONG_KEY: &str = "pk_live_wrong_never_logged_77";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_run_logs_no_secret_and_no_image_bytes() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let server = TestServer::start(
        Gateway::builder()
            .keys(keys())
            .admin_key(ADMIN_KEY)
            .model("gpt-image-2", ModelSpec::new(4, 0))
            .build(),
    )
    .await;
    // A marker inside the image, so any logged image byte run is found.
    let mut image = png(16, 16);
    image.extend_from_slice(b"IMAGE-BYTES-MARKER-31337");
    let form = Form::new()
        .file("image", "a.png", "image/png", &image)
        .text("model", "gpt-image-2")
        .text("prompt", "p");
    let reply = server.edit_form(ALICE_KEY, form).await;
    assert_eq!(reply.images().len(), 1);
    let key = server
        .upload(BOB_KEY, &[("b.png", &image)])
        .await
        .uploaded_keys()
        .remove(0);
    let json = format!(r#"{{"model":"gpt-image-2","prompt":"p","image_key":"{key}"}}"#);
    assert_eq!(server.edit_json(BOB_KEY, &json).await.images().len(), 1);
    assert_eq!(server.edit_json(WRONG_KEY, &json).await.error().0, 401);
    let deposit = Request::post("/admin/v1/accounts/alice/deposits")
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .body(Full::new(Bytes::from_static(
            br#"{"amount":5,"reference":"r"}"#,
        )))
        .unwrap();
    assert_eq!(server.send(deposit).await.status, 200);
    assert_eq!(
        server
            .call(Method::GET, "/api/v1/balance", ALICE_KEY)
            .await
            .status,
        200
    );

    // An upstream that cannot be reached, with its own key.
    let (_refusing, port) = closed_port();
    let upstream = UpstreamBackend::builder(format!("http://127.0.0.1:{port}"))
        .api_key(UPSTREAM_KEY)
        .build()
        .unwrap();
    let proxied =
        TestServer::start(Gateway::builder().keys(keys()).backend(upstream).build()).await;
    let form = Form::new()
        .file("image", "a.png", "image/png", &image)
        .text("model", "gpt-image-2")
        .text("prompt", "p");
    assert_eq!(proxied.edit_form(ALICE_KEY, form).await.error().0, 502);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        text.contains("request finished"),
        "the run was logged:\n{text}"
    );
    assert!(
        text.contains("user=\"alice\"") || text.contains("user=alice"),
        "spans name the caller"
    );
    assert!(
        text.contains("image backend failed"),
        "the upstream failure was logged"
    );
    // A refused request's line says why, by the error's code.
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains("request finished") && (l.contains("status=401") || l.contains("status=502"))
        })
        .collect();
    assert_eq!(refused.len(), 2, "{text}");
    assert!(
        refused
            .iter()
            .any(|l| l.contains("code=\"invalid_api_key\"") || l.contains("code=invalid_api_key")),
        "{refused:?}"
    );
    assert!(
        refused.iter().any(|l| l.contains("upstream_error")),
        "{refused:?}"
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(&image);
    for secret in [
        ALICE_KEY,
        BOB_KEY,
        WRONG_KEY,
        ADMIN_KEY,
        UPSTREAM_KEY,
        "IMAGE-BYTES-MARKER",
        &b64[..40],
        "SU1BR0UtQllURVMt",
    ] {
        assert!(!text.contains(secret), "{secret:?} reached the logs");
    }
}
