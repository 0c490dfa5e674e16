//! The last bytes of a request may arrive after its closing multipart delimiter: the
//! chunked terminator in a write of its own (the OpenAI Node SDK streaming a file), or an
//! epilogue. The gateway reads them before it answers, so the whole answer arrives and the
//! connection is not reset under the client.

use crate::common;
use crate::common::node;

use image_gateway::job::{EditJob, Image};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use image_gateway::backend::{BackendError, ImageBackend};
use image_gateway::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Answers at once with a large image, so the answer is ready before a late last byte of
/// the request arrives: the case where a server that does not wait for it cuts the answer.
struct InstantLarge(bytes::Bytes);

#[async_trait]
impl ImageBackend for InstantLarge {
    async fn edit(&self, job: &EditJob) -> Result<Vec<Image>, BackendError> {
        let image = Image::new(self.0.clone(), job.params.output_format);
        Ok(vec![image; job.params.n as usize])
    }
}

async fn instant_server() -> TestServer {
    // A noisy PNG compresses badly: about 300 KB.
    let noise = image::RgbImage::from_fn(320, 320, |x, y| {
        let v =
            (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)).wrapping_mul(2_246_822_519);
        image::Rgb([(v >> 24) as u8, (v >> 16) as u8, (v >> 8) as u8])
    });
    let mut png = std::io::Cursor::new(Vec::new());
    noise.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let backend = InstantLarge(png.into_inner().into());
    TestServer::start(Gateway::builder().keys(keys()).backend(backend).build()).await
}

/// A multipart edit whose answer is large (hundreds of KB of base64).
fn large_edit() -> (String, bytes::Bytes) {
    Form::new()
        .file("image", "a.png", "image/png", &png(320, 320))
        .text("model", "gpt-image-2")
        .text("prompt", "p")
        .text("n", "2")
        .finish()
}

/// Reads one HTTP/1.1 answer with a `content-length` to its end; panics if the connection
/// breaks first.
async fn read_answer(socket: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = socket
            .read(&mut chunk)
            .await
            .expect("the answer's head arrives");
        assert!(n > 0, "closed before the head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("a content-length");
    while buf.len() < head_end + length {
        let n = socket
            .read(&mut chunk)
            .await
            .expect("the whole answer arrives, no reset");
        assert!(
            n > 0,
            "closed after {} of {length} body bytes",
            buf.len() - head_end
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    (head, buf[head_end..head_end + length].to_vec())
}

fn assert_two_images(head: &str, body: &[u8]) {
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let answer: serde_json::Value = serde_json::from_slice(body).expect("whole JSON");
    assert_eq!(answer["data"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_terminator_that_comes_late_still_gets_the_whole_answer() {
    let server = instant_server().await;
    let (content_type, body) = large_edit();
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST {EDITS} HTTP/1.1\r\nhost: x\r\nx-api-key: {ALICE_KEY}\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    // The whole form, closing delimiter included, as one chunk...
    socket
        .write_all(format!("{:x}\r\n", body.len()).as_bytes())
        .await
        .unwrap();
    socket.write_all(&body).await.unwrap();
    socket.write_all(b"\r\n").await.unwrap();
    // ...and the terminator in a write of its own, a moment later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    socket.write_all(b"0\r\n\r\n").await.unwrap();
    let (head, body) = read_answer(&mut socket).await;
    assert_two_images(&head, &body);
    // The connection is still good for a second request.
    let again =
        format!("GET /api/v1/balance HTTP/1.1\r\nhost: x\r\nx-api-key: {ALICE_KEY}\r\n\r\n");
    socket.write_all(again.as_bytes()).await.unwrap();
    let (head, _) = read_answer(&mut socket).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epilogue_that_comes_late_still_gets_the_whole_answer() {
    let server = instant_server().await;
    let (content_type, body) = large_edit();
    let epilogue = vec![b'e'; 100 * 1024];
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST {EDITS} HTTP/1.1\r\nhost: x\r\nx-api-key: {ALICE_KEY}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len() + epilogue.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&body).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    socket.write_all(&epilogue).await.unwrap();
    let (head, body) = read_answer(&mut socket).await;
    assert_two_images(&head, &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_sdk_streaming_a_file_gets_every_answer_whole() {
    let server = instant_server().await;
    let dir = temp_dir("node-stream");
    std::fs::write(dir.join("photo.png"), png(320, 320)).unwrap();
    let modules = tokio::task::spawn_blocking(node::node_modules)
        .await
        .unwrap();
    // ESM resolves packages from the script's own folder up: run a copy placed beside them.
    let script = modules.parent().unwrap().join("edit_stream_node.mjs");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/sdk/edit_stream_node.mjs"
        ),
        &script,
    )
    .unwrap();
    let url = format!("http://{}", server.addr);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(&script)
            .env("GATEWAY_URL", url)
            .env("GATEWAY_KEY", ALICE_KEY)
            .env("PNG_PATH", dir.join("photo.png"))
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
