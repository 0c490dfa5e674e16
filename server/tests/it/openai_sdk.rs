//! The official OpenAI Python SDK, unchanged, against a real gateway.

use crate::common;
use crate::common::python;

use common::*;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_edits_with_one_image_and_with_a_list() {
    let server = reference_server().await;
    let dir = std::env::temp_dir().join(format!("igw-sdk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("photo.png"), png(48, 32)).unwrap();
    std::fs::write(dir.join("photo.jpg"), jpeg(20, 20)).unwrap();
    std::fs::write(dir.join("notes.txt"), b"just some text, not an image\n").unwrap();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/edit_with_openai.py");
    let python = python::python();
    let url = format!("http://{}", server.addr);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("GATEWAY_URL", url)
            .env("GATEWAY_KEY", ALICE_KEY)
            .env("PNG_PATH", dir.join("photo.png"))
            .env("JPEG_PATH", dir.join("photo.jpg"))
            .env("TEXT_PATH", dir.join("notes.txt"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 9);
}
