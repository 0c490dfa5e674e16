//! Decoder bombs against the gateway binary as its own process, its peak resident memory
//! read from `/proc`: inflating ancillary chunks (`iCCP`, `zTXt`, `iTXt`, each 1 GiB
//! inflated), a 4096 x 4096 16-bit source, a header claiming 65535 x 65535 pixels, and
//! the largest legitimate source, eight at a time. The gateway must answer each one
//! (rendered, or `400`), and its peak memory must stay inside the documented bound.

use crate::common;

use std::io::Write;

use bytes::Bytes;
use common::binary::{gateway_binary, Process};
use common::*;
use flate2::write::ZlibEncoder;
use flate2::Compression;

/// What the server may reach at its peak while under this test's load: 2 renders (one per
/// core) of at most 64 MiB of pixels each, eight bodies of a few MB, and the process's own
/// base. The bombs took 950 MB each before their chunks were dropped.
const PEAK_BOUND: u64 = 320 * 1024 * 1024;

/// `bytes` zeros, zlib-compressed.
fn zlib_zeros(bytes: usize) -> Vec<u8> {
    let mut encoder = ZlibEncoder::new(Vec::new(), Compression::best());
    let zeros = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(zeros.len());
        encoder.write_all(&zeros[..n]).unwrap();
        left -= n;
    }
    encoder.finish().unwrap()
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

/// A PNG of `width` x `height` (colour type 6, RGBA) at `depth` bits, all zeros, with the
/// ancillary chunks `extra` before its pixels.
fn png_of(width: u32, height: u32, depth: u8, extra: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[depth, 6, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    for (kind, data) in extra {
        chunk(&mut out, kind, data);
    }
    let row = 1 + width as usize * 4 * usize::from(depth / 8);
    let pixels = if u64::from(width) * u64::from(height) > 1 << 28 {
        // A header that lies: a few rows are enough to be refused.
        zlib_zeros(row * 4)
    } else {
        zlib_zeros(row * height as usize)
    };
    chunk(&mut out, b"IDAT", &pixels);
    chunk(&mut out, b"IEND", b"");
    out
}

fn edit_of(image: &[u8]) -> Form {
    Form::new()
        .file("image", "bomb.png", "image/png", image)
        .text("model", "gpt-image-2")
        .text("prompt", "p")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoder_bombs_are_answered_within_the_memory_bound() {
    let binary = tokio::task::spawn_blocking(gateway_binary).await.unwrap();
    let corpus = tokio::task::spawn_blocking(|| {
        let gib = zlib_zeros(1 << 30);
        let iccp = [b"x\0\0".as_slice(), &gib].concat();
        let ztxt = [b"k\0\0".as_slice(), &gib].concat();
        let itxt = [b"k\0\x01\0\0\0".as_slice(), &gib].concat();
        let corpus: Vec<(&'static str, Bytes, u16)> = vec![
            (
                "iCCP 1 GiB",
                png_of(64, 64, 8, &[(b"iCCP", iccp)]).into(),
                200,
            ),
            (
                "zTXt 1 GiB",
                png_of(64, 64, 8, &[(b"zTXt", ztxt)]).into(),
                200,
            ),
            (
                "iTXt 1 GiB",
                png_of(64, 64, 8, &[(b"iTXt", itxt)]).into(),
                200,
            ),
            ("4096x4096 16-bit", png_of(4096, 4096, 16, &[]).into(), 400),
            (
                "65535x65535 header",
                png_of(65535, 65535, 8, &[]).into(),
                400,
            ),
            ("3840x2160 RGBA", png_of(3840, 2160, 8, &[]).into(), 200),
        ];
        corpus
    })
    .await
    .unwrap();
    let data = temp_dir("bombs");
    let port = 0;
    let server = Process::start_with(
        &binary,
        &data,
        port,
        &[
            ("GATEWAY_MAX_RENDERS", "2"),
            ("GATEWAY_PRICE_PER_IMAGE", "0"),
        ],
    );
    let addr = server.addr;
    let at_rest = server.peak_rss();

    for (name, image, status) in &corpus {
        let edits: Vec<_> = (0..8)
            .map(|_| {
                let (image, client) = (image.clone(), TestServer::at(addr));
                tokio::spawn(async move { client.edit_form(ALICE_KEY, edit_of(&image)).await })
            })
            .collect();
        for edit in edits {
            let reply = edit.await.unwrap();
            assert_eq!(
                reply.status.as_u16(),
                *status,
                "{name}: {}",
                String::from_utf8_lossy(&reply.body[..reply.body.len().min(300)])
            );
            if *status == 400 {
                assert_eq!(reply.error().2.as_deref(), Some("image"), "{name}");
            }
        }
        let peak = server.peak_rss();
        println!(
            "{name} ({} bytes) x 8: peak RSS {} MiB (at rest {} MiB)",
            image.len(),
            peak >> 20,
            at_rest >> 20
        );
        assert!(
            peak < PEAK_BOUND,
            "{name}: peak RSS {} MiB over the bound",
            peak >> 20
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_abandoned_large_renders_are_bounded_and_charged() {
    let binary = tokio::task::spawn_blocking(gateway_binary).await.unwrap();
    let source = tokio::task::spawn_blocking(|| png_of(3840, 2160, 8, &[]))
        .await
        .unwrap();
    let data = temp_dir("abandoned-renders");
    let port = 0;
    // Demo balance 100, price 10 per image: sixteen one-image edits cost 160 if all ran.
    let server = Process::start_with(
        &binary,
        &data,
        port,
        &[
            ("GATEWAY_MAX_RENDERS", "2"),
            ("GATEWAY_DEMO_BALANCE", "1000"),
        ],
    );
    let addr = server.addr;
    let (content_type, body) = edit_of(&source).finish();
    for _ in 0..16 {
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST {EDITS} HTTP/1.1\r\nhost: x\r\nx-api-key: {ALICE_KEY}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        tokio::io::AsyncWriteExt::write_all(&mut socket, head.as_bytes())
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut socket, &body)
            .await
            .unwrap();
        // Gone 150 ms later, long before its render (queued behind the others) ends.
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            drop(socket);
        });
    }
    let client = TestServer::at(addr);
    let mut last = (0, 0);
    for _ in 0..600 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let balance = client
            .call(http::Method::GET, "/api/v1/balance", ALICE_KEY)
            .await
            .json();
        last = (
            balance["available"].as_i64().unwrap(),
            balance["held"].as_u64().unwrap(),
        );
        if last == (1000 - 16 * 10, 0) {
            break;
        }
    }
    let peak = server.peak_rss();
    println!(
        "16 abandoned 3840x2160 renders: peak RSS {} MiB",
        peak >> 20
    );
    assert_eq!(
        last,
        (840, 0),
        "every abandoned render was charged, none free"
    );
    assert!(
        peak < PEAK_BOUND,
        "peak RSS {} MiB over the bound",
        peak >> 20
    );
}

/// A JSON edit naming `keys` as OpenAI's `images` references.
fn named_edit(keys: &[String]) -> String {
    let images: Vec<String> = keys
        .iter()
        .map(|k| format!(r#"{{"file_id":"{k}"}}"#))
        .collect();
    format!(
        r#"{{"model":"gpt-image-2","prompt":"p","images":[{}]}}"#,
        images.join(",")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_sources_are_not_read_before_the_caller_could_pay() {
    const ADMIN: &str = "adm_named_sources_0123456789";
    let binary = tokio::task::spawn_blocking(gateway_binary).await.unwrap();
    let data = temp_dir("named-sources");
    let port = 0;
    let server = Process::start_with(
        &binary,
        &data,
        port,
        &[("GATEWAY_DEMO_BALANCE", "0"), ("GATEWAY_ADMIN_KEY", ADMIN)],
    );
    let addr = server.addr;
    let client = TestServer::at(addr);
    // Sixteen distinct 10 MB uploads: uploading is free, and each is a valid PNG's head
    // followed by padding.
    let mut big = png(8, 8);
    big.resize(10 << 20, 0);
    let mut keys = Vec::new();
    for i in 0..16 {
        let name = format!("big-{i}.png");
        keys.extend(
            client
                .upload(ALICE_KEY, &[(&name, &big)])
                .await
                .uploaded_keys(),
        );
    }
    let at_rest = server.peak_rss();

    // The same image named twice is refused before anything is read.
    let twice = client
        .edit_json(ALICE_KEY, &named_edit(&[keys[0].clone(), keys[0].clone()]))
        .await;
    assert_eq!(
        twice.error(),
        (400, "invalid_request".into(), Some("images".into()))
    );

    // Twenty callers at once, each naming 160 MB, with no money: each is answered 402 and
    // nothing is read (before, 2.9 GB was read and RSS grew by 2.1 GB).
    let body = named_edit(&keys);
    let edits: Vec<_> = (0..20)
        .map(|_| {
            let (client, body) = (TestServer::at(addr), body.clone());
            tokio::spawn(async move { client.edit_json(ALICE_KEY, &body).await })
        })
        .collect();
    for edit in edits {
        let reply = edit.await.unwrap();
        assert_eq!(reply.error().1, "insufficient_balance", "{:?}", reply.body);
    }
    let peak = server.peak_rss();
    println!(
        "20 unpaid edits naming 160 MB each: peak RSS {} MiB, {} MiB at rest",
        peak >> 20,
        at_rest >> 20
    );
    // The kernel updates the high-water mark lazily, so a later read may show less than an
    // earlier one: growth is never below zero.
    let grown = peak.saturating_sub(at_rest);
    assert!(
        grown < 32 << 20,
        "unpaid edits grew the peak RSS by {} MiB",
        grown >> 20
    );

    // With money, a request may read 64 MiB of named images before its hold, no more: the
    // seventh 10 MB source stops the reading, and nothing is charged.
    let deposit = client
        .send(
            http::Request::post("/admin/v1/accounts/alice/deposits")
                .header("authorization", format!("Bearer {ADMIN}"))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(Bytes::from_static(
                    br#"{"amount": 100, "reference": "named sources"}"#,
                )))
                .unwrap(),
        )
        .await;
    assert_eq!(deposit.status.as_u16(), 200, "{:?}", deposit.body);
    let over = client.edit_json(ALICE_KEY, &body).await;
    assert_eq!(
        over.error(),
        (400, "invalid_request".into(), Some("images".into()))
    );
    let balance = client
        .call(http::Method::GET, "/api/v1/balance", ALICE_KEY)
        .await
        .json();
    assert_eq!(
        (balance["available"].as_i64(), balance["held"].as_u64()),
        (Some(100), Some(0))
    );
}
