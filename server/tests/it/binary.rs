//! The `image-gateway` binary as an operator meets it: `--help` and `--version`, a demo key
//! that survives a restart, and CORS for browser clients (off unless origins are listed).

use crate::common;

use std::process::Command;

use common::binary::{gateway_binary, Process};
use common::*;
use http::{Method, Request};
use http_body_util::Empty;

fn run_with_args(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(gateway_binary())
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_setting_the_configuration_page_documents() {
    let (ok, help, _) = run_with_args(&["--help"]);
    assert!(ok);
    assert!(help.starts_with("image-gateway "), "{help}");
    let page = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/configuration.md"
    ))
    .unwrap();
    let documented: Vec<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|name| name.starts_with("GATEWAY_") || *name == "RUST_LOG")
        .collect();
    assert!(
        documented.len() >= 20,
        "the settings table of docs/configuration.md: {documented:?}"
    );
    for name in &documented {
        assert!(help.contains(name), "--help does not print {name}");
    }
    let printed = help
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.starts_with("GATEWAY_"))
        .count();
    assert_eq!(
        printed + 1,
        documented.len(),
        "docs/configuration.md and --help list the same settings"
    );

    let (ok, version, _) = run_with_args(&["--version"]);
    assert!(ok);
    assert_eq!(
        version.trim(),
        format!("image-gateway {}", env!("CARGO_PKG_VERSION"))
    );
    let (ok, _, stderr) = run_with_args(&["--port"]);
    assert!(!ok);
    assert!(stderr.contains("unknown argument `--port`"), "{stderr}");
}

/// Starts the binary with no `GATEWAY_API_KEYS` and returns its stdout up to the demo key.
fn start_demo(data: &std::path::Path, port: u16) -> (std::process::Child, Vec<String>) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(gateway_binary())
        .env("GATEWAY_ADDR", format!("127.0.0.1:{port}"))
        .env("GATEWAY_DATA_DIR", data)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.contains("demo API key");
        seen.push(line);
        if done {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (child, seen)
}

fn demo_key_of(lines: &[String]) -> String {
    let line = lines.iter().find(|l| l.contains("demo API key")).unwrap();
    line.rsplit(' ').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_key_survives_a_restart() {
    let data = temp_dir("demo-key");
    let (mut first, lines) = {
        let data = data.clone();
        tokio::task::spawn_blocking(move || start_demo(&data, 0))
            .await
            .unwrap()
    };
    let key = demo_key_of(&lines);
    // The restart listens where the first start did.
    let addr: std::net::SocketAddr = lines
        .iter()
        .find_map(|l| l.split_once("listening on http://"))
        .map(|(_, addr)| addr.trim().parse().unwrap())
        .expect("the address it listens on");
    let port = addr.port();
    assert!(
        lines.iter().any(|l| l.contains("(user `demo`, new")),
        "{lines:?}"
    );
    let server = TestServer::at(addr);
    assert_eq!(
        server
            .call(Method::GET, "/api/v1/balance", &key)
            .await
            .status,
        200
    );
    first.kill().unwrap();
    first.wait().unwrap();

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("demo-key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "readable by the owner only");
    }

    let (mut second, lines) = {
        let data = data.clone();
        tokio::task::spawn_blocking(move || start_demo(&data, port))
            .await
            .unwrap()
    };
    assert!(lines.iter().any(|l| l.contains("reused")), "{lines:?}");
    assert_eq!(demo_key_of(&lines), key);
    let status = server
        .call(Method::GET, "/api/v1/balance", &key)
        .await
        .status;
    second.kill().unwrap();
    second.wait().unwrap();
    assert_eq!(status, 200, "the old key still works after the restart");
}

fn preflight(server: &TestServer, origin: &str) -> Request<Empty<bytes::Bytes>> {
    Request::builder()
        .method(Method::OPTIONS)
        .uri(server.url(EDITS))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,x-stainless-os",
        )
        .body(Empty::new())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_origins_get_cors_and_a_preflight_needs_no_key() {
    let binary = tokio::task::spawn_blocking(gateway_binary).await.unwrap();
    let port = 0;
    let process = Process::start_with(
        &binary,
        &temp_dir("cors"),
        port,
        &[(
            "GATEWAY_CORS_ORIGINS",
            "https://chat.example, http://localhost:3210",
        )],
    );
    let server = TestServer::at(process.addr);

    let answer = server
        .send(preflight(&server, "https://chat.example"))
        .await;
    assert!(answer.status.is_success(), "{:?}", answer.status);
    let headers = &answer.headers;
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://chat.example"
    );
    assert!(headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert!(headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("x-stainless-os"));

    // An answer the page must read, an error included, carries the origin and exposes the
    // request id.
    let refused = server
        .send(
            Request::builder()
                .uri(server.url("/api/v1/balance"))
                .header("origin", "http://localhost:3210")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await;
    assert_eq!(refused.error().1, "invalid_api_key");
    assert_eq!(
        refused.headers["access-control-allow-origin"],
        "http://localhost:3210"
    );
    assert!(refused.headers["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("x-request-id"));

    // An origin not on the list gets no allow header: the browser keeps the answer from it.
    let stranger = server
        .send(preflight(&server, "https://evil.example"))
        .await;
    assert!(stranger
        .headers
        .get("access-control-allow-origin")
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_off_by_default() {
    let binary = tokio::task::spawn_blocking(gateway_binary).await.unwrap();
    let port = 0;
    let process = Process::start_with(&binary, &temp_dir("no-cors"), port, &[]);
    let server = TestServer::at(process.addr);
    let answer = server
        .send(preflight(&server, "https://chat.example"))
        .await;
    assert!(answer.headers.get("access-control-allow-origin").is_none());
    // Without CORS an OPTIONS request is the gateway's to answer, and it needs a key.
    assert_eq!(answer.error().1, "invalid_api_key");
}
