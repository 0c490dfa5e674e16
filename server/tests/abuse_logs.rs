//! Protocol abuse is logged once per connection at most: an HTTP/2 client that opens and
//! resets thousands of streams (rapid reset) must not flood the operator's logs, and a
//! normal client is served meanwhile.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::StreamBody;
use hyper_util::rt::{TokioExecutor, TokioIo};
use image_gateway::Gateway;

type Never =
    futures_util::stream::Pending<Result<http_body::Frame<Bytes>, std::convert::Infallible>>;

/// Opens `streams` requests whose bodies never come, each reset a moment later.
async fn rapid_reset(addr: std::net::SocketAddr, streams: usize) {
    let Ok(socket) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    let Ok((mut sender, connection)) = hyper::client::conn::http2::handshake::<
        _,
        _,
        StreamBody<Never>,
    >(TokioExecutor::new(), TokioIo::new(socket))
    .await
    else {
        return;
    };
    tokio::spawn(connection);
    for _ in 0..streams {
        if sender.ready().await.is_err() {
            return; // the server closed the connection: the defence worked
        }
        let req = Request::post(EDITS)
            .header("x-api-key", ALICE_KEY)
            .header("content-type", "application/json")
            .body(StreamBody::new(futures_util::stream::pending()))
            .unwrap();
        let answer = sender.send_request(req);
        // Sent, then dropped before any answer: the client resets the stream.
        let _ = tokio::time::timeout(Duration::from_micros(200), answer).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_logged_at_most_once_per_connection() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let server = TestServer::start(Gateway::builder().keys(keys()).build()).await;
    let connections = 4;
    let attacks: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(rapid_reset(server.addr, 2_000)))
        .collect();
    let reply = server
        .call(http::Method::GET, "/api/v1/balance", ALICE_KEY)
        .await;
    assert_eq!(
        reply.status, 200,
        "a normal client is served during the attack"
    );
    for attack in attacks {
        attack.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    let loud = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count();
    let all = text.lines().count();
    println!("{all} lines at INFO and above, {loud} at WARN and above, for {connections} connections:\n{text}");
    assert!(loud <= connections, "{loud} WARN/ERROR lines:\n{text}");
    // INFO: one line per request that was answered, none per reset stream.
    assert!(
        all <= 2 * connections + 4,
        "{all} lines:\n{}",
        &text[..text.len().min(2000)]
    );
}
