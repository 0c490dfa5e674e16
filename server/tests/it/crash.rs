//! The gateway binary killed with SIGKILL while it holds money: after a restart the hold
//! expires and the balance is whole; balances, the journal and the opening balance survive.

use crate::common;

use std::time::{Duration, Instant};

use common::binary::{gateway_binary, Process};
use common::*;
use http::Method;

async fn balance(addr: std::net::SocketAddr) -> (i64, u64) {
    let req = http::Request::get("/api/v1/balance")
        .header("x-api-key", ALICE_KEY)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let v = send(addr, req).await.json();
    (
        v["available"].as_i64().unwrap(),
        v["held"].as_u64().unwrap(),
    )
}

fn edit(n: u32) -> Form {
    Form::new()
        .file("image", "a.png", "image/png", &png(8, 8))
        .text("model", "gpt-image-2")
        .text("prompt", "p")
        .text("n", &n.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_holding_then_restart_makes_the_balance_whole() {
    let binary = tokio::task::spawn_blocking(gateway_binary).await.unwrap();
    let data = temp_dir("crash");
    // First life: the opening balance, one paid edit.
    let first = Process::start(&binary, &data, 0, 0);
    let addr = first.addr;
    let client = TestServer::at(addr);
    // Restarts listen where the first did, so clients keep their address.
    let port = addr.port();
    assert_eq!(balance(addr).await, (100, 0));
    assert_eq!(client.edit_form(ALICE_KEY, edit(1)).await.images().len(), 1);
    assert_eq!(balance(addr).await, (90, 0));
    first.kill();

    // Second life: a slow edit holds 30, and the process dies with it.
    let second = Process::start(&binary, &data, port, 60_000);
    let pending =
        tokio::spawn(async move { TestServer::at(addr).edit_form(ALICE_KEY, edit(3)).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while balance(addr).await != (60, 30) {
        assert!(Instant::now() < deadline, "the hold never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.kill();
    let _ = pending.await;

    // Third life: the expired hold is released; nothing was topped up again.
    let _third = Process::start(&binary, &data, port, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = balance(addr).await;
        if now == (90, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "balance not whole after restart: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let req = http::Request::builder()
        .method(Method::GET)
        .uri("/api/v1/usage")
        .header("x-api-key", ALICE_KEY)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let usage = send(addr, req).await.json();
    assert_eq!(usage["data"].as_array().unwrap().len(), 1, "{usage}");
    assert_eq!(usage["data"][0]["amount"], 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_edit_lets_it_finish_and_leaves_the_ledger_whole() {
    let binary = tokio::task::spawn_blocking(gateway_binary).await.unwrap();
    let data = temp_dir("sigterm");
    let port = 0;

    let server = Process::start(&binary, &data, port, 1500);
    let addr = server.addr;
    // The restart listens where the first did, so clients keep their address.
    let port = addr.port();
    let edit =
        tokio::spawn(async move { TestServer::at(addr).edit_form(ALICE_KEY, edit(2)).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while balance(addr).await != (80, 20) {
        assert!(Instant::now() < deadline, "the hold never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exited_cleanly = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    let reply = edit.await.unwrap();
    assert_eq!(reply.images().len(), 2, "the in-flight edit got its answer");
    assert!(exited_cleanly, "the binary exits 0 after draining");

    // Restarted on the same data: charged exactly once, nothing held.
    let _again = Process::start(&binary, &data, port, 0);
    assert_eq!(balance(addr).await, (80, 0));
}
