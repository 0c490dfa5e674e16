//! `https://` image URLs through the binary: an SSRF corpus refused before any connection,
//! and a loopback TLS server reached only under the test-only root certificate setting.

use crate::common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::binary::{gateway_binary, Process};
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A listener that counts the connections it accepts and answers none of them.
async fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (addr, accepted)
}

/// An HTTPS server on loopback for `localhost`, signed by a root of its own (written as PEM
/// to `ca_path`), counting the TLS connections it accepts.
async fn tls_server(ca_path: &std::path::Path) -> (u16, Arc<AtomicUsize>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    std::fs::write(ca_path, ca.pem()).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| answer(req, port));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, accepted)
}

async fn answer(req: Request<Incoming>, port: u16) -> Result<Response<Full<Bytes>>, Infallible> {
    let redirect = |to: String| {
        Response::builder()
            .status(StatusCode::FOUND)
            .header("location", to)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    Ok(match req.uri().path() {
        "/a.png" => Response::new(Full::new(Bytes::from(png(12, 12)))),
        "/text" => Response::new(Full::new(Bytes::from_static(b"not an image at all"))),
        "/cap" => Response::new(Full::new(Bytes::from(padded_png(CAP)))),
        "/over-cap" => Response::new(Full::new(Bytes::from(padded_png(CAP + 1)))),
        "/to-self" => redirect(format!("https://localhost:{port}/a.png")),
        "/to-metadata" => redirect("https://169.254.169.254/latest/meta-data".into()),
        "/to-loopback-literal" => redirect(format!("https://127.0.0.1:{port}/a.png")),
        "/to-http" => redirect(format!("http://localhost:{port}/a.png")),
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    })
}

/// The fetch cap of the in-process test below.
const CAP: usize = 4096;

/// A PNG padded with zeros to exactly `len` bytes (its type is still read from its head).
fn padded_png(len: usize) -> Vec<u8> {
    let mut bytes = png(4, 4);
    bytes.resize(len, 0);
    bytes
}

async fn compose(port: u16, url: &str) -> Reply {
    let body = format!(r#"{{"model":"gpt-image-2","prompt":"p","image_urls":["{url}"]}}"#);
    let req = Request::post("/v1/images/compose")
        .header("authorization", format!("Bearer {ALICE_KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    send(SocketAddr::from(([127, 0, 0, 1], port)), req).await
}

async fn balance(port: u16) -> i64 {
    let req = Request::get("/api/v1/balance")
        .header("authorization", format!("Bearer {ALICE_KEY}"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let reply = send(SocketAddr::from(([127, 0, 0, 1], port)), req).await;
    reply.json()["available"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssrf_corpus_is_refused_before_any_connection_is_made() {
    let (listener, accepted) = counting_listener().await;
    let p = listener.port();
    let dir = temp_dir("ssrf");
    let gateway = Process::start_with(&gateway_binary(), &dir, 0, &[]);
    let port = gateway.addr.port();
    let corpus = [
        format!("https://127.0.0.1:{p}/a.png"),
        format!("https://127.1:{p}/a.png"),
        format!("https://2130706433:{p}/a.png"),
        format!("https://0x7f000001:{p}/a.png"),
        format!("https://0x7f.1:{p}/a.png"),
        format!("https://0177.0.0.1:{p}/a.png"),
        format!("https://0177.1:{p}/a.png"),
        format!("https://0:{p}/a.png"),
        format!("https://0.0.0.0:{p}/a.png"),
        format!("https://[::1]:{p}/a.png"),
        format!("https://[::]:{p}/a.png"),
        format!("https://[::ffff:127.0.0.1]:{p}/a.png"),
        format!("https://[::ffff:7f00:1]:{p}/a.png"),
        format!("https://[0:0:0:0:0:ffff:127.0.0.1]:{p}/a.png"),
        format!("https://localhost:{p}/a.png"),
        format!("https://LOCALHOST.:{p}/a.png"),
        format!("http://127.0.0.1:{p}/a.png"),
        format!("http://localhost:{p}/a.png"),
        format!("https://alice:secret@localhost:{p}/a.png"),
        "https://169.254.169.254/latest/meta-data/".to_owned(),
        "https://[fd00:ec2::254]/latest/meta-data/".to_owned(),
        "https://10.0.0.1/a.png".to_owned(),
        "https://172.16.5.4/a.png".to_owned(),
        "https://192.168.0.1/a.png".to_owned(),
        "https://100.64.0.1/a.png".to_owned(),
        "https://224.0.0.1/a.png".to_owned(),
        "https://[fe80::1]/a.png".to_owned(),
        "ftp://example.com/a.png".to_owned(),
        "file:///etc/passwd".to_owned(),
        "data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=".to_owned(),
    ];
    for url in &corpus {
        let reply = compose(port, url).await;
        let (status, code, param) = reply.error();
        assert_eq!(status, 400, "{url}: {code}");
        assert_eq!(param.as_deref(), Some("image_urls"), "{url}: {code}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "no connection reached the listener"
    );
    assert_eq!(balance(port).await, 100, "nothing was held or charged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_tls_server_is_fetched_only_under_the_test_root_and_redirects_are_checked() {
    let dir = temp_dir("fetch-tls");
    let ca = dir.join("ca.pem");
    let (tls_port, accepted) = tls_server(&ca).await;
    let binary = gateway_binary();

    // Without the setting, `localhost` resolves to a refused address: no connection.
    let plain = Process::start_with(&binary, &dir.join("plain"), 0, &[]);
    let reply = compose(
        plain.addr.port(),
        &format!("https://localhost:{tls_port}/a.png"),
    )
    .await;
    assert_eq!(reply.error().0, 400);
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    drop(plain);

    let ca_setting = ca.to_str().unwrap();
    let trusting = Process::start_with(
        &binary,
        &dir.join("trusting"),
        0,
        &[("GATEWAY_URL_FETCH_TEST_CA", ca_setting)],
    );
    let port = trusting.addr.port();
    let reply = compose(port, &format!("https://localhost:{tls_port}/a.png")).await;
    assert_eq!(reply.images().len(), 1);
    let reply = compose(port, &format!("https://localhost:{tls_port}/to-self")).await;
    assert_eq!(
        reply.images().len(),
        1,
        "a redirect to an allowed URL is followed"
    );
    assert_eq!(balance(port).await, 80, "two composes charged");
    for (path, code) in [
        ("/to-metadata", "invalid_request"),
        ("/to-loopback-literal", "invalid_request"),
        ("/to-http", "invalid_request"),
        ("/text", "IMAGE_TYPE_UNSUPPORTED"),
        ("/missing", "invalid_request"),
    ] {
        let reply = compose(port, &format!("https://localhost:{tls_port}{path}")).await;
        assert_eq!(reply.error().1, code, "{path}");
    }
    // OpenAI's JSON edit names an image by URL the same way.
    let body = format!(
        r#"{{"model":"gpt-image-2","prompt":"p","images":[{{"image_url":"https://localhost:{tls_port}/a.png"}}]}}"#
    );
    let req = Request::post(EDITS)
        .header("authorization", format!("Bearer {ALICE_KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let reply = send(trusting.addr, req).await;
    assert_eq!(reply.images().len(), 1);
    assert_eq!(balance(port).await, 70);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_image_at_its_cap_is_taken_and_one_byte_more_is_refused() {
    use image_gateway::fetch::{FetchConfig, UrlFetcher};
    let dir = temp_dir("fetch-cap");
    let ca = dir.join("ca.pem");
    let (tls_port, _) = tls_server(&ca).await;
    let mut config = FetchConfig::default();
    config.max_bytes = CAP as u64;
    config.extra_root = Some(std::fs::read(&ca).unwrap());
    config.allow_loopback = true;
    let gateway = image_gateway::Gateway::builder()
        .keys(keys())
        .fetcher(UrlFetcher::new(config).unwrap())
        .build();
    let server = TestServer::start(gateway).await;
    let port = server.addr.port();
    let reply = compose(port, &format!("https://localhost:{tls_port}/cap")).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let reply = compose(port, &format!("https://localhost:{tls_port}/over-cap")).await;
    assert_eq!(
        reply.error(),
        (400, "IMAGE_TOO_LARGE".into(), Some("image_urls".into()))
    );
}
