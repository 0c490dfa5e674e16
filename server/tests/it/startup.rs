//! Starting the gateway binary as a newcomer would: a host name for the address, and
//! settings that cannot work refused at once with one readable line, never a `Debug` dump.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::binary::gateway_binary;
use common::*;

/// Runs the binary with `env` until it exits; its exit success and its stderr.
fn run_to_exit(env: &[(&str, &str)]) -> (bool, String) {
    let data = temp_dir("startup");
    let out = Command::new(gateway_binary())
        .env("GATEWAY_DATA_DIR", &data)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(stderr: &str, says: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].starts_with("image-gateway: "), "{stderr}");
    assert!(lines[0].contains(says), "{stderr}");
    assert!(
        !stderr.contains("Custom {") && !stderr.contains("Os {"),
        "a Debug dump: {stderr}"
    );
}

#[test]
fn bad_key_lists_are_refused_at_start() {
    let (ok, stderr) = run_to_exit(&[("GATEWAY_API_KEYS", "alice:pk_same,bob:pk_same")]);
    assert!(!ok);
    assert_one_line_error(&stderr, "one key twice");
    let (ok, stderr) = run_to_exit(&[("GATEWAY_API_KEYS", "alice:pk_a,bob:")]);
    assert!(!ok);
    assert_one_line_error(&stderr, "empty user or key");
}

#[test]
fn an_address_in_use_is_one_line_with_its_cause() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (ok, stderr) = run_to_exit(&[("GATEWAY_ADDR", &addr)]);
    assert!(!ok);
    assert_one_line_error(&stderr, &format!("cannot listen on {addr}: "));
    assert!(stderr.to_lowercase().contains("in use"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_address_is_resolved() {
    let data = temp_dir("localhost");
    let binary = tokio::task::spawn_blocking(gateway_binary).await.unwrap();
    let mut child = Command::new(binary)
        .env("GATEWAY_ADDR", "localhost:0")
        .env("GATEWAY_DATA_DIR", &data)
        .env("GATEWAY_API_KEYS", format!("alice:{ALICE_KEY}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        let found = lines.find(|l| l.contains("listening on"));
        // Keep draining, so the server never writes into a closed pipe.
        std::thread::spawn(move || for _ in lines {});
        found
    })
    .await
    .unwrap()
    .expect("it printed where it listens");
    let addr: std::net::SocketAddr = line
        .rsplit("http://")
        .next()
        .unwrap()
        .trim()
        .parse()
        .expect("a socket address");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{line}");
    let reply = TestServer::at(addr)
        .call(http::Method::GET, "/api/v1/balance", ALICE_KEY)
        .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(reply.status, 200);
}
