//! The gateway mounted as the examples show: inside an axum app beside its own routes, and
//! in a hand-written hyper accept loop.

use crate::common;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use image_gateway::Gateway;

#[tokio::test]
async fn inside_an_axum_app_beside_its_own_routes() {
    let gateway = Gateway::builder().keys(keys()).build();
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .fallback_service(gateway);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let health = send(
        addr,
        Request::get("/health")
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await;
    assert_eq!(&health.body[..], b"ok");
    let (content_type, body) = Form::new()
        .file("image", "a.png", "image/png", &png(6, 6))
        .text("model", "gpt-image-2")
        .text("prompt", "p")
        .finish();
    let edit = Request::post(EDITS)
        .header("authorization", format!("Bearer {ALICE_KEY}"))
        .header("content-type", content_type)
        .body(Full::new(body))
        .unwrap();
    assert_eq!(send(addr, edit).await.images().len(), 1);
    let anonymous = Request::post(EDITS).body(Full::<Bytes>::default()).unwrap();
    assert_eq!(send(addr, anonymous).await.error().1, "invalid_api_key");
    // Every other endpoint of the gateway is there too, and an unknown path is its JSON 404.
    let server = TestServer::at(addr);
    let uploaded = server.upload(ALICE_KEY, &[("a.png", &png(6, 6))]).await;
    assert_eq!(uploaded.uploaded_keys().len(), 1);
    for path in ["/api/v1/files", "/api/v1/balance", "/api/v1/usage"] {
        let reply = server.call(http::Method::GET, path, ALICE_KEY).await;
        assert_eq!(reply.status, 200, "{path}");
    }
    let unknown = server.call(http::Method::GET, "/nowhere", ALICE_KEY).await;
    assert_eq!(unknown.error().1, "not_found");
}

#[tokio::test]
async fn in_a_plain_hyper_accept_loop() {
    let gateway = Gateway::builder().keys(keys()).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(gateway.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let json = r#"{"model":"gpt-image-2","prompt":"p","generation_id":"not-a-uuid"}"#;
    let req = Request::post(EDITS)
        .header("x-api-key", ALICE_KEY)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(json.as_bytes())))
        .unwrap();
    assert_eq!(send(addr, req).await.error().1, "invalid_generation_id");
}
