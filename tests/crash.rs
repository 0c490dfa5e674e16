//! The example server killed with SIGKILL while it holds money: after a restart the hold
//! expires and the balance is whole; balances, the journal and the opening balance survive.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::Method;

/// Builds the example and returns its executable.
fn example_binary() -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .args(["build", "--example", "gateway", "--message-format=json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo build runs");
    assert!(out.status.success(), "building the example failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == "gateway")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .expect("the example's executable path")
}

struct Example {
    child: Child,
}

impl Example {
    fn start(binary: &Path, data: &Path, port: u16, latency_ms: u64) -> Example {
        let mut child = Command::new(binary)
            .env("GATEWAY_ADDR", format!("127.0.0.1:{port}"))
            .env("GATEWAY_DATA_DIR", data)
            .env("GATEWAY_API_KEYS", format!("alice:{ALICE_KEY}"))
            .env("GATEWAY_DEMO_BALANCE", "100")
            .env("GATEWAY_PRICE_PER_IMAGE", "10")
            .env("GATEWAY_HOLD_TTL_SECS", "2")
            .env("GATEWAY_REFERENCE_LATENCY_MS", latency_ms.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the example starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let line = lines
                .next()
                .expect("the example printed its address")
                .unwrap();
            if line.contains("listening on") {
                break;
            }
        }
        // Keep draining so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Example { child }
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited cleanly.
    fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        self.child.wait().unwrap().success()
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    let binary = tokio::task::spawn_blocking(example_binary).await.unwrap();
    let data = temp_dir("crash");
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = TestServer::at(addr);

    // First life: the opening balance, one paid edit.
    let first = Example::start(&binary, &data, port, 0);
    assert_eq!(balance(addr).await, (100, 0));
    assert_eq!(client.edit_form(ALICE_KEY, edit(1)).await.images().len(), 1);
    assert_eq!(balance(addr).await, (90, 0));
    first.kill();

    // Second life: a slow edit holds 30, and the process dies with it.
    let second = Example::start(&binary, &data, port, 60_000);
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
    let _third = Example::start(&binary, &data, port, 0);
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
    let binary = tokio::task::spawn_blocking(example_binary).await.unwrap();
    let data = temp_dir("sigterm");
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let server = Example::start(&binary, &data, port, 1500);
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
    assert!(exited_cleanly, "the example exits 0 after draining");

    // Restarted on the same data: charged exactly once, nothing held.
    let _again = Example::start(&binary, &data, port, 0);
    assert_eq!(balance(addr).await, (80, 0));
}
