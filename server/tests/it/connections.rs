//! Connection lockout without a key: thousands of sockets that send nothing, only the
//! HTTP/2 preface (or part of it), or one request and then keep alive in silence, from
//! several peer addresses. A normal client must still be answered at once: idle
//! connections are closed to make room at the cap, and no peer holds more than its share.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use image_gateway::server::ServeOptions;
use image_gateway::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn connect_from(ip: &str, addr: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(format!("{ip}:0").parse().unwrap()).ok()?;
    socket.connect(addr).await.ok()
}

/// Whether the server closed `socket` within `within`.
async fn closed(socket: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Idle {
    Silent,
    Http2Preface,
    HalfPreface,
    KeptAlive,
}

async fn idle_socket(ip: String, addr: SocketAddr, kind: Idle) -> Option<TcpStream> {
    let mut socket = connect_from(&ip, addr).await?;
    match kind {
        Idle::Silent => {}
        Idle::Http2Preface => socket.write_all(PREFACE).await.ok()?,
        Idle::HalfPreface => socket.write_all(&PREFACE[..16]).await.ok()?,
        Idle::KeptAlive => {
            let request = format!(
                "GET /api/v1/balance HTTP/1.1\r\nhost: x\r\nx-api-key: {ALICE_KEY}\r\n\r\n"
            );
            socket.write_all(request.as_bytes()).await.ok()?;
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await;
        }
    }
    Some(socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_sockets_of_both_protocols_do_not_lock_out_a_normal_client() {
    // The defaults: 1024 connections, 256 per peer, 30 s to a first request, 60 s idle.
    let server = TestServer::start_with(
        Gateway::builder().keys(keys()).build(),
        ServeOptions::default(),
    )
    .await;
    let addr = server.addr;
    let kinds = [
        Idle::Silent,
        Idle::Http2Preface,
        Idle::HalfPreface,
        Idle::KeptAlive,
    ];
    let mut opened = Vec::new();
    for peer in 0..8u8 {
        let kind = kinds[usize::from(peer) % kinds.len()];
        let ip = format!("127.0.0.{}", peer + 2);
        let batch: Vec<_> = (0..300)
            .map(|_| tokio::spawn(idle_socket(ip.clone(), addr, kind)))
            .collect();
        for socket in batch {
            if let Some(socket) = socket.await.unwrap() {
                opened.push(socket);
            }
        }
    }
    assert!(opened.len() >= 2000, "only {} sockets opened", opened.len());

    // The rule is an answer within a second; an eviction at the cap takes microseconds.
    for attempt in 0..3 {
        let started = Instant::now();
        let answered = tokio::time::timeout(
            Duration::from_secs(1),
            server.call(http::Method::GET, "/api/v1/balance", ALICE_KEY),
        )
        .await;
        let reply = answered.expect("a normal client was locked out");
        assert_eq!(reply.status, 200);
        println!(
            "normal client #{attempt} answered in {:?} after {} idle sockets connected",
            started.elapsed(),
            opened.len()
        );
    }
    let edit = Form::new()
        .file("image", "a.png", "image/png", &png(8, 8))
        .text("model", "gpt-image-2")
        .text("prompt", "p");
    let reply = tokio::time::timeout(Duration::from_secs(1), server.edit_form(ALICE_KEY, edit))
        .await
        .expect("an edit was locked out");
    assert_eq!(reply.images().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_holds_no_more_than_its_share() {
    let mut options = ServeOptions::default();
    options.max_connections_per_peer = 8;
    let server = TestServer::start_with(Gateway::builder().keys(keys()).build(), options).await;
    let mut sockets = Vec::new();
    for _ in 0..12 {
        sockets.push(connect_from("127.0.0.2", server.addr).await.unwrap());
        // One at a time, so the server sees them in order.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut open = 0;
    for socket in &mut sockets {
        if !closed(socket, Duration::from_millis(300)).await {
            open += 1;
        }
    }
    assert_eq!(open, 8, "one peer kept {open} connections");
    // Another peer is not affected.
    let reply = server
        .call(http::Method::GET, "/api/v1/balance", ALICE_KEY)
        .await;
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_preface_without_a_request_is_closed_at_the_first_request_deadline() {
    let mut options = ServeOptions::default();
    options.header_read_timeout = Duration::from_secs(1);
    let server = TestServer::start_with(Gateway::builder().keys(keys()).build(), options).await;
    let mut full = TcpStream::connect(server.addr).await.unwrap();
    full.write_all(PREFACE).await.unwrap();
    // A SETTINGS frame, as a real client sends, and then nothing.
    full.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(&PREFACE[..16]).await.unwrap();
    assert!(
        closed(&mut full, Duration::from_secs(10)).await,
        "preface-only HTTP/2 connection left open"
    );
    assert!(
        closed(&mut half, Duration::from_secs(10)).await,
        "half a preface left open"
    );
}

/// A request head and the first bytes of a 1 MB upload, sent from `ip`; the rest never
/// comes (a client trickling its body).
async fn slow_upload(ip: String, addr: SocketAddr) -> Option<TcpStream> {
    let mut socket = connect_from(&ip, addr).await?;
    let head = format!(
        "POST /api/v1/upload HTTP/1.1\r\nhost: x\r\nx-api-key: {ALICE_KEY}\r\n\
         content-type: multipart/form-data; boundary=XyZ\r\ncontent-length: 1000000\r\n\r\n--XyZ\r\n"
    );
    socket.write_all(head.as_bytes()).await.ok()?;
    Some(socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_from_five_addresses_do_not_lock_out_a_client_or_health_checks() {
    use common::binary::{gateway_binary, Process};
    let binary = tokio::task::spawn_blocking(gateway_binary).await.unwrap();
    let data = temp_dir("slow-uploads");
    let port = 0;
    // The binary's defaults: 1,024 connections, 256 per address.
    let gateway = Process::start_with(&binary, &data, port, &[]);
    let addr = gateway.addr;
    let mut open = Vec::new();
    for peer in 2..=6u8 {
        let ip = format!("127.0.0.{peer}");
        let batch: Vec<_> = (0..220)
            .map(|_| tokio::spawn(slow_upload(ip.clone(), addr)))
            .collect();
        for socket in batch {
            open.extend(socket.await.unwrap());
        }
    }
    assert_eq!(open.len(), 1100, "every slow upload connected");
    let server = TestServer::at(addr);
    // The rule: answered within a second. At the cap, the slowest body makes room.
    for round in 0..3 {
        let started = Instant::now();
        let health = tokio::time::timeout(
            Duration::from_secs(1),
            server.call(http::Method::GET, "/healthz", ALICE_KEY),
        )
        .await
        .expect("/healthz was locked out by slow uploads");
        assert_eq!(health.status, 200);
        let edit = Form::new()
            .file("image", "a.png", "image/png", &png(8, 8))
            .text("model", "gpt-image-2")
            .text("prompt", "p");
        let reply = tokio::time::timeout(Duration::from_secs(1), server.edit_form(ALICE_KEY, edit))
            .await
            .expect("an edit was locked out by slow uploads");
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        println!(
            "round {round}: /healthz and an edit answered in {:?} beside 1,100 slow uploads",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_of_an_address_never_keep_its_answering_client_out() {
    use common::binary::{gateway_binary, Process};
    let binary = tokio::task::spawn_blocking(gateway_binary).await.unwrap();
    let data = temp_dir("silent-own-address");
    let port = 0;
    let gateway = Process::start_with(&binary, &data, port, &[]);
    let addr = gateway.addr;
    // The client's own address holds its whole share (256) in silent sockets.
    let mut silent = Vec::new();
    for _ in 0..256 {
        silent.push(connect_from("127.0.0.1", addr).await.unwrap());
    }
    let server = TestServer::at(addr);
    for _ in 0..3 {
        let reply = tokio::time::timeout(
            Duration::from_secs(1),
            server.call(http::Method::GET, "/api/v1/balance", ALICE_KEY),
        )
        .await
        .expect("a silent socket of the same address kept the client out");
        assert_eq!(reply.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_forwarded_address_is_what_an_allow_list_checks() {
    use common::binary::{gateway_binary, Process};
    const ADMIN: &str = "adm_trusted_proxy_0123456789";
    let binary = tokio::task::spawn_blocking(gateway_binary).await.unwrap();
    let data = temp_dir("trusted-proxy");
    let port = 0;
    let gateway = Process::start_with(
        &binary,
        &data,
        port,
        &[
            ("GATEWAY_TRUSTED_PROXIES", "127.0.0.1/32"),
            ("GATEWAY_ADMIN_KEY", ADMIN),
        ],
    );
    let addr = gateway.addr;
    let made = send(
        addr,
        http::Request::post("/admin/v1/users/alice/keys")
            .header("authorization", format!("Bearer {ADMIN}"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                br#"{"name": "office", "ips": ["198.51.100.0/24"]}"#,
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    let key = made.json()["key"].as_str().unwrap().to_owned();
    // A raw request from `ip` with `forwarded` as its X-Forwarded-For: the status.
    let ask = |ip: &'static str, forwarded: Option<&'static str>| {
        let key = key.clone();
        async move {
            let mut socket = connect_from(ip, addr).await.unwrap();
            let xff = forwarded.map_or(String::new(), |f| format!("x-forwarded-for: {f}\r\n"));
            let head = format!(
                "GET /api/v1/balance HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\n{xff}connection: close\r\n\r\n"
            );
            socket.write_all(head.as_bytes()).await.unwrap();
            let mut answer = String::new();
            socket.read_to_string(&mut answer).await.unwrap();
            answer.split(' ').nth(1).unwrap_or_default().to_owned()
        }
    };
    // Through the trusted proxy, from the office's network: allowed.
    assert_eq!(ask("127.0.0.1", Some("198.51.100.7")).await, "200");
    // A spoofed first hop does not help: the last address the proxy appended counts.
    assert_eq!(
        ask("127.0.0.1", Some("198.51.100.7, 203.0.113.9")).await,
        "403"
    );
    // The proxy itself, with nothing forwarded, is not the office.
    assert_eq!(ask("127.0.0.1", None).await, "403");
    // From an address that is not a trusted proxy, the header is anyone's to write.
    assert_eq!(ask("127.0.0.2", Some("198.51.100.7")).await, "403");
}
