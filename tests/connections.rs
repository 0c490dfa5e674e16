//! Connection lockout without a key: thousands of sockets that send nothing, only the
//! HTTP/2 preface (or part of it), or one request and then keep alive in silence, from
//! several peer addresses. A normal client must still be answered at once: idle
//! connections are closed to make room at the cap, and no peer holds more than its share.

mod common;

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
