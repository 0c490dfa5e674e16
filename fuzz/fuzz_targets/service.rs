//! The whole gateway fed one arbitrary request: the first byte picks the method, path,
//! content type and key; the rest is the body. Every answer is a response in the spec's
//! envelope (never a panic, never a 5xx from parsing), within a time bound.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use image_gateway::auth::StaticKeys;
use image_gateway::Gateway;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const KEY: &str = "pk_live_fuzz_0123456789";
const PATHS: [&str; 8] = [
    "/v1/images/edits",
    "/v1/images/generations",
    "/v1/images/compose",
    "/api/v1/upload",
    "/api/v1/files",
    "/api/v1/files/files/fuzz/0b7e7d4c-6f51-4a5b-9d6e-2a0c9b3e8f11_a.png",
    // The body is the query here (the usage log's filters).
    "/api/v1/usage",
    "/admin/v1/accounts/fuzz/deposits",
];
const TYPES: [&str; 4] = [
    "application/json",
    "multipart/form-data; boundary=XyZ",
    "multipart/form-data",
    "text/plain",
];

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
        Gateway::builder()
            .keys(keys)
            .admin_key("admin_fuzz")
            .build()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let method = if pick & 0x80 == 0 { "POST" } else { "GET" };
    let path = PATHS[usize::from(pick >> 4 & 0x7) % PATHS.len()];
    let content_type = TYPES[usize::from(pick >> 2 & 0x3)];
    let key = match (pick & 0x2 == 0, path.starts_with("/admin/")) {
        (true, _) => KEY,
        (false, true) => "admin_fuzz",
        (false, false) => "pk_wrong",
    };
    let query = std::str::from_utf8(body)
        .ok()
        .filter(|q| q.bytes().all(|b| b.is_ascii_graphic() && b != b'#'));
    // A query the URI type refuses would never reach a server: the bare path instead.
    let uri = match (path, query) {
        ("/api/v1/usage", Some(query)) => http::Uri::try_from(format!("{path}?{query}")).ok(),
        _ => None,
    }
    .unwrap_or_else(|| http::Uri::from_static(path));
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", content_type)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("request");
    let answer = runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(5), gateway().clone().oneshot(request)).await
    });
    let response = answer.expect("answered within 5 s").expect("infallible");
    assert!(
        !response.status().is_server_error(),
        "{} {path}: {}",
        method,
        response.status()
    );
});
