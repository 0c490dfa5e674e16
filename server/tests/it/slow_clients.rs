//! Slowloris and friends: trickling clients are cut off by the server's deadlines while a
//! normal client keeps being served, and connections beyond the cap wait their turn.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use image_gateway::server::ServeOptions;
use image_gateway::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn options(max_connections: usize) -> ServeOptions {
    let mut options = ServeOptions::default();
    options.header_read_timeout = Duration::from_secs(1);
    options.body_read_timeout = Duration::from_secs(1);
    options.max_connections = max_connections;
    options
}

fn edit() -> Form {
    Form::new()
        .file("image", "a.png", "image/png", &png(4, 4))
        .text("model", "gpt-image-2")
        .text("prompt", "p")
}

/// Sends `head` one byte at a time every `every`, until the server closes the socket;
/// returns whether it did close it within `within`.
async fn trickle(
    addr: std::net::SocketAddr,
    head: &'static [u8],
    every: Duration,
    within: Duration,
) -> bool {
    let Ok(mut socket) = TcpStream::connect(addr).await else {
        return false;
    };
    let started = Instant::now();
    for byte in head.iter().cycle() {
        if started.elapsed() > within {
            return false;
        }
        if socket.write_all(&[*byte]).await.is_err() {
            return true;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(every, socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => return true, // an answer (408) and then close
            Err(_) => {}
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_trickling_clients_do_not_stop_a_normal_one() {
    let server =
        TestServer::start_with(Gateway::builder().keys(keys()).build(), options(1024)).await;
    let addr = server.addr;
    let head: &'static [u8] = b"POST /v1/images/edits HTTP/1.1\r\nhost: x\r\nx-pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let tricklers: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn(trickle(
                addr,
                head,
                Duration::from_millis(250),
                Duration::from_secs(10),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = server.edit_form(ALICE_KEY, edit()).await;
    assert_eq!(
        reply.images().len(),
        1,
        "the normal client is served meanwhile"
    );
    let mut closed = 0;
    for t in tricklers {
        closed += usize::from(t.await.unwrap());
    }
    assert_eq!(closed, 200, "every trickling connection was cut off");
}

#[tokio::test]
async fn a_trickled_body_is_answered_408() {
    let server = TestServer::start_with(Gateway::builder().keys(keys()).build(), options(16)).await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /v1/images/edits HTTP/1.1\r\nhost: x\r\nx-api-key: {ALICE_KEY}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let started = Instant::now();
    loop {
        let _ = socket.write_all(b" ").await;
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(200), socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}}")
            || started.elapsed() > Duration::from_secs(10)
        {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_an_idle_connection_is_closed_to_make_room() {
    let mut options = options(2);
    // Long enough that only eviction can free a slot within the test.
    options.header_read_timeout = Duration::from_secs(60);
    let server = TestServer::start_with(Gateway::builder().keys(keys()).build(), options).await;
    let mut a = TcpStream::connect(server.addr).await.unwrap();
    let mut b = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reply = tokio::time::timeout(Duration::from_secs(10), server.edit_form(ALICE_KEY, edit()))
        .await
        .expect("a silent connection was closed to make room");
    assert_eq!(reply.images().len(), 1);
    let mut buf = [0u8; 16];
    let mut closed = 0;
    for socket in [&mut a, &mut b] {
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(200), socket.read(&mut buf)).await
        {
            closed += 1;
        }
    }
    assert!(closed >= 1, "no silent connection was closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_with_every_connection_busy_a_new_one_waits_its_turn() {
    let backend =
        image_gateway::backend::ReferenceBackend::new().latency(Duration::from_millis(600));
    let gateway = Gateway::builder().keys(keys()).backend(backend).build();
    let server = TestServer::start_with(gateway, options(2)).await;
    let (done, mut order) = tokio::sync::mpsc::unbounded_channel();
    for name in ["busy", "busy", "late"] {
        let (client, done) = (TestServer::at(server.addr), done.clone());
        tokio::spawn(async move {
            let reply = client.edit_form(ALICE_KEY, edit()).await;
            done.send((name, reply.images().len())).unwrap();
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut finished = Vec::new();
    for _ in 0..3 {
        let next = tokio::time::timeout(Duration::from_secs(30), order.recv()).await;
        finished.push(next.expect("every client is answered").unwrap());
    }
    assert!(
        finished.iter().all(|(_, images)| *images == 1),
        "{finished:?}"
    );
    assert_eq!(
        finished[0].0, "busy",
        "the late one was served before a slot was free"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let server = TestServer::start_with(Gateway::builder().keys(keys()).build(), options(16)).await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let request =
        format!("GET /api/v1/balance HTTP/1.1\r\nhost: x\r\nx-api-key: {ALICE_KEY}\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then silence: the server must close the connection.
    let closed = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "still open: {closed:?}"
    );
}

/// The answer's status line to a `GET /v1/models` whose head carries `pad` bytes of one
/// extra header, sent whole.
async fn status_with_head_padding(addr: std::net::SocketAddr, pad: usize) -> String {
    let head = format!(
        "GET /v1/models HTTP/1.1\r\nhost: x\r\nx-api-key: {ALICE_KEY}\r\nx-pad: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(pad)
    );
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    answer.lines().next().unwrap_or_default().to_owned()
}

/// hyper's read buffer is capped at 64 KiB per connection (it bounds what a connection
/// holds after a large body); a request head must fit in it. Just under the cap a request is
/// served; past it the head is refused `431` and the connection closed.
#[tokio::test]
async fn a_request_head_is_read_up_to_64_kib_and_refused_past_it() {
    let server = TestServer::start(Gateway::builder().keys(keys()).build()).await;
    let served = status_with_head_padding(server.addr, 60 * 1024).await;
    assert_eq!(served, "HTTP/1.1 200 OK");
    let refused = status_with_head_padding(server.addr, 70 * 1024).await;
    assert!(refused.starts_with("HTTP/1.1 431"), "{refused:?}");
}
