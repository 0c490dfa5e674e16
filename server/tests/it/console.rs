//! The console in a real browser: Debian's chromium driven by playwright-core
//! (`tests/console/console.mjs`) against the binary on loopback. Screenshots of each page are
//! written to `target/console-screenshots/`.

use crate::common;
use crate::common::node;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::binary::{gateway_binary, Process};
use common::*;
use http::{Method, StatusCode};

const ADMIN_KEY: &str = "adm_console_secret_0123456789";
const CHROMIUM: &str = "/usr/bin/chromium";

/// Debian's chromium, installed when missing and this runs as root (as CI does); never a
/// browser downloaded by a test tool. Without it the test fails with the reason.
fn chromium() {
    if Path::new(CHROMIUM).exists() {
        return;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root {
        let installed = Command::new("sh")
            .args([
                "-c",
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium",
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(installed, "apt-get install chromium failed");
    }
    assert!(
        Path::new(CHROMIUM).exists(),
        "the console tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_makes_chains_downloads_and_cleans_up_images_in_the_browser() {
    tokio::task::spawn_blocking(chromium).await.unwrap();
    let modules = tokio::task::spawn_blocking(node::playwright_modules)
        .await
        .unwrap();
    // ESM resolves packages from the script's own folder up: run a copy placed beside them.
    let script = modules.parent().unwrap().join("console.mjs");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console/console.mjs"),
        &script,
    )
    .unwrap();
    let dir = temp_dir("console");
    std::fs::write(dir.join("source.png"), png(320, 240)).unwrap();
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");

    let gateway = Process::start_with(
        &gateway_binary(),
        &dir,
        0,
        &[
            ("GATEWAY_ADMIN_KEY", ADMIN_KEY),
            // Long enough for the partial images to arrive one by one.
            // (and for a job to be seen running, then reattached after a reload).
            ("GATEWAY_REFERENCE_LATENCY_MS", "1500"),
        ],
    );
    let url = format!("http://{}", gateway.addr);
    let out = tokio::task::spawn_blocking({
        let (url, dir, shots) = (url.clone(), dir.clone(), shots.clone());
        move || {
            Command::new("node")
                .arg(&script)
                .env("GATEWAY_URL", url)
                .env("GATEWAY_KEY", ALICE_KEY)
                .env("ADMIN_KEY", ADMIN_KEY)
                .env("PRICE", "10")
                .env("BALANCE", "100")
                .env("SOURCE_PATH", dir.join("source.png"))
                .env("SHOTS", shots)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("CHARGED 40"), "{stdout}");

    // What the browser did is what the gateway holds.
    let server = TestServer::at(
        url.trim_start_matches("http://")
            .parse::<SocketAddr>()
            .unwrap(),
    );
    let balance = server
        .call(Method::GET, "/api/v1/balance", ALICE_KEY)
        .await
        .json();
    assert_eq!(
        (balance["available"].as_i64(), balance["held"].as_i64()),
        (Some(60), Some(0))
    );
    let files = server
        .call(Method::GET, "/api/v1/files", ALICE_KEY)
        .await
        .json();
    let keys: Vec<&str> = files["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys.len(),
        4,
        "the uploads deleted, the outputs kept: {keys:?}"
    );
    assert!(keys.iter().all(|k| k.contains("_generation.")));
    for page in [
        "01-sign-in",
        "04-images",
        "06-account",
        "07-history",
        "08-files",
        "09-keys",
        "11-reattached",
    ] {
        assert!(
            shots.join(format!("{page}.png")).exists(),
            "no screenshot of {page}"
        );
    }
}

#[tokio::test]
async fn console_files_carry_a_strict_policy_and_nothing_else_is_served() {
    use image_gateway::console::ConsoleLayer;
    use tower::Layer;
    let gateway = ConsoleLayer.layer(image_gateway::Gateway::builder().keys(keys()).build());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(image_gateway::server::serve(
        listener,
        gateway,
        image_gateway::server::ServeOptions::default(),
        std::future::pending(),
    ));
    let get = |path: &'static str| async move {
        send(
            addr,
            http::Request::get(path)
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
    };
    let redirect = get("/console").await;
    assert_eq!(redirect.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(redirect.headers["location"], "/console/");
    for (path, kind) in [
        ("/console/", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let reply = get(path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert!(reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
        let csp = reply.headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(reply.headers["x-content-type-options"], "nosniff");
    }
    let page = String::from_utf8(get("/console/").await.body.to_vec()).unwrap();
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "nothing from elsewhere"
    );
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "no inline script or style"
    );
    assert_eq!(
        get("/console/../Cargo.toml").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get("/console/secret").await.status, StatusCode::NOT_FOUND);
    // The API behind is untouched: still a key or 401.
    assert_eq!(
        get("/api/v1/balance").await.status,
        StatusCode::UNAUTHORIZED
    );
}
