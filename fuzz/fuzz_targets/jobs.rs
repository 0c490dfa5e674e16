//! The job API and the async door fed arbitrary input where a client puts it: a job id in
//! the path, a page query, a `Last-Event-ID`, a `Prefer` header. Every answer is a response
//! (never a panic, never a 5xx from parsing), within a time bound.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use image_gateway::auth::StaticKeys;
use image_gateway::Gateway;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const KEY: &str = "pk_live_fuzz_0123456789";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn gateway() -> &'static Gateway {
    static GATEWAY: OnceLock<Gateway> = OnceLock::new();
    GATEWAY.get_or_init(|| {
        let _guard = runtime().enter();
        let keys = StaticKeys::new().with_key("fuzz", KEY).expect("key");
        Gateway::builder().keys(keys).build()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    // What a URI or a header value may carry; anything else never reaches a server.
    let visible = text.bytes().all(|b| b.is_ascii_graphic() && b != b'#' && b != b'?');
    let header = http::HeaderValue::from_str(text).ok();
    let (method, uri, name) = match pick % 5 {
        0 if visible => ("GET", format!("/v1/images/jobs?{text}"), None),
        1 if visible => ("GET", format!("/v1/images/jobs/{text}"), None),
        2 if visible => ("DELETE", format!("/v1/images/jobs/{text}"), None),
        3 => (
            "GET",
            "/v1/images/jobs/0190b6c4-7d2e-7a1b-9c3d-4e5f60718293/events".to_owned(),
            Some("last-event-id"),
        ),
        4 => ("POST", "/v1/images/generations".to_owned(), Some("prefer")),
        _ => return,
    };
    let Ok(uri) = http::Uri::try_from(uri) else {
        return;
    };
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json");
    if let (Some(name), Some(value)) = (name, header) {
        request = request.header(name, value);
    }
    let body = r#"{"model":"gpt-image-2","prompt":"p","size":"8x8"}"#;
    let request = request
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request");
    runtime().block_on(async {
        let answer =
            tokio::time::timeout(Duration::from_secs(5), gateway().clone().oneshot(request)).await;
        let response = answer.expect("answered within 5 s").expect("infallible");
        assert!(!response.status().is_server_error(), "{method}: {}", response.status());
        // An event stream of a job that does not exist ends at once: its body is read.
        let _ = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect()).await;
    });
});
