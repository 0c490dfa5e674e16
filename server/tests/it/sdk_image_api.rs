//! The official OpenAI SDKs (Python and Node), unchanged, across the whole image API on a
//! billed gateway: models, generate, masked edits, streams read to the end and left early.

use crate::common;
use crate::common::node;
use crate::common::python;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use image::{Rgba, RgbaImage};
use image_gateway::auth::UserId;
use image_gateway::backend::ReferenceBackend;
use image_gateway::catalog::ModelSpec;
use image_gateway::ledger::{Ledger, MemoryLedger};
use image_gateway::Gateway;

const PRICE: u64 = 10;

/// A gateway charging [`PRICE`] per image, alice holding 1,000; each job takes 900 ms, so
/// a stream of two partials shows one every 300 ms.
async fn billed() -> (TestServer, Arc<MemoryLedger>) {
    let ledger = Arc::new(MemoryLedger::new());
    let alice = UserId::new("alice").unwrap();
    ledger.deposit(&alice, 1000, "credit").await.unwrap();
    let gateway = Gateway::builder()
        .keys(keys())
        .backend(ReferenceBackend::new().latency(Duration::from_millis(900)))
        .ledger(ledger.clone())
        .model("gpt-image-2", ModelSpec::new(4, PRICE))
        .build();
    (TestServer::start(gateway).await, ledger)
}

/// An 8x4 source and a mask whose left half is transparent (the area to edit).
fn source_and_mask(dir: &Path) {
    let source = RgbaImage::from_pixel(8, 4, Rgba([10, 20, 30, 255]));
    let mask = RgbaImage::from_fn(8, 4, |x, _| Rgba([0, 0, 0, if x < 4 { 0 } else { 255 }]));
    source.save(dir.join("source.png")).unwrap();
    mask.save(dir.join("mask.png")).unwrap();
}

fn assert_passed(out: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_generates_edits_with_a_mask_streams_and_lists_models() {
    let (server, ledger) = billed().await;
    let dir = temp_dir("sdk-python-images");
    source_and_mask(&dir);
    let python = python::python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/image_api_openai.py");
    let url = format!("http://{}", server.addr);
    let out_dir = dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("GATEWAY_URL", url)
            .env("GATEWAY_KEY", ALICE_KEY)
            .env("PRICE", PRICE.to_string())
            .env("SOURCE_PATH", out_dir.join("source.png"))
            .env("MASK_PATH", out_dir.join("mask.png"))
            .env("OUT_DIR", &out_dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_passed(&out);
    // The SDK's `mask=` reached the backend: only the transparent half changed.
    let masked = image::open(dir.join("masked.png")).unwrap().into_rgba8();
    assert_eq!(masked.get_pixel(1, 1), &Rgba([245, 235, 225, 255]));
    assert_eq!(masked.get_pixel(6, 1), &Rgba([10, 20, 30, 255]));
    let balance = ledger
        .balance(&UserId::new("alice").unwrap())
        .await
        .unwrap();
    assert_eq!(
        (balance.available, balance.held, balance.charged),
        (940, 0, 60),
        "four images read, and the two of the stream left after a partial"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_sdk_generates_edits_with_a_mask_streams_and_lists_models() {
    let (server, ledger) = billed().await;
    let dir = temp_dir("sdk-node-images");
    source_and_mask(&dir);
    let modules = tokio::task::spawn_blocking(node::node_modules)
        .await
        .unwrap();
    // ESM resolves packages from the script's own folder up: run a copy placed beside them.
    let script = modules.parent().unwrap().join("image_api_node.mjs");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/image_api_node.mjs"),
        &script,
    )
    .unwrap();
    let url = format!("http://{}", server.addr);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(&script)
            .env("GATEWAY_URL", url)
            .env("GATEWAY_KEY", ALICE_KEY)
            .env("PRICE", PRICE.to_string())
            .env("SOURCE_PATH", dir.join("source.png"))
            .env("MASK_PATH", dir.join("mask.png"))
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    assert_passed(&out);
    let balance = ledger
        .balance(&UserId::new("alice").unwrap())
        .await
        .unwrap();
    assert_eq!(
        (balance.available, balance.held, balance.charged),
        (950, 0, 50),
        "three images read, and the two of the stream left after a partial"
    );
}
