//! Request parsing and answer rendering: `cargo bench --bench parsing`.
//!
//! Multipart bodies are fed in 64 KiB chunks, as hyper hands them over from a socket.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use image_gateway::auth::{Principal, UserId};
use image_gateway::job::{EditOutcome, GeneratedImage, Image, OutputFormat};

use image_gateway::catalog::{Catalog, ModelSpec};

use image_gateway::id::GenerationId;
use image_gateway::job::Operation;
use image_gateway::media::ImageKind;
use image_gateway::request::{parse_json, parse_multipart, Rules};
use image_gateway::store::FileKey;

const MIB: usize = 1024 * 1024;

fn catalog() -> Catalog {
    Catalog::new([("gpt-image-2".to_string(), ModelSpec::new(10, 1))])
}

fn principal() -> Principal {
    Principal::new(UserId::new("bench").expect("user"))
}

/// A multipart edit whose whole body is `total` bytes, nearly all of it one image.
fn multipart_body(total: usize) -> (String, Vec<Bytes>) {
    let boundary = "----bench-boundary-0123456789";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-image-2\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nmake it blue\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\
         Content-Type: image/png\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let mut body = head.into_bytes();
    body.extend_from_slice(b"\x89PNG\r\n\x1a\n");
    let image_len = total - body.len() - tail.len();
    // Pseudo-random bytes, so no boundary-search shortcut flatters the figure.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    body.extend((8..image_len).map(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 24) as u8
    }));
    body.extend_from_slice(tail.as_bytes());
    let chunks = body.chunks(64 * 1024).map(Bytes::copy_from_slice).collect();
    (boundary.to_owned(), chunks)
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let rules = Rules::new(Operation::Edit, catalog());

    let mut group = c.benchmark_group("multipart_normalization");
    group.sample_size(20);
    for mb in [1usize, 10, 25] {
        // "25 MB" is the largest body whose image fits the 25 MiB image limit.
        let total = if mb == 25 { 25 * MIB } else { mb * MIB };
        let (boundary, chunks) = multipart_body(total);
        group.throughput(Throughput::Bytes(total as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{mb}MB")),
            &chunks,
            |b, chunks| {
                b.iter(|| {
                    let owned: Vec<Bytes> = chunks.clone(); // reference-count bumps, no byte copies
                    let stream =
                        futures_util::stream::iter(owned.into_iter().map(Ok::<_, std::io::Error>));
                    runtime
                        .block_on(parse_multipart(
                            stream,
                            boundary.clone(),
                            principal(),
                            &rules,
                        ))
                        .expect("parses")
                })
            },
        );
    }
    group.finish();

    let json = br#"{"model":"gpt-image-2","prompt":"replace background with a city skyline at sunset, keep pose unchanged","image_key":"files/bench/0b7e7d4c-6f51-4a5b-9d6e-2a0c9b3e8f11_anchor.jpg","n":1,"size":"1024x1024","quality":"high"}"#;
    c.bench_function("json_normalization", |b| {
        b.iter(|| parse_json(json, principal(), &rules).expect("parses"))
    });

    let key = "files/bench/0b7e7d4c-6f51-4a5b-9d6e-2a0c9b3e8f11_anchor.jpg";
    c.bench_function("file_key_parse", |b| {
        b.iter(|| FileKey::parse(std::hint::black_box(key)).expect("parses"))
    });

    let head = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    c.bench_function("image_type_sniff", |b| {
        b.iter(|| ImageKind::sniff(std::hint::black_box(head)))
    });

    let mut group = c.benchmark_group("answer_base64");
    for mb in [1usize, 4] {
        let image = Image::new(Bytes::from(vec![0xA5u8; mb * MIB]), OutputFormat::Png);
        let outcome = EditOutcome::new(1, vec![GeneratedImage::new(GenerationId::new(), image)]);
        group.throughput(Throughput::Bytes((mb * MIB) as u64));
        group.bench_function(format!("{mb}MB"), |b| b.iter(|| outcome.to_json()));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
