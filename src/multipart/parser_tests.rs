//! The multipart reader against hand-made bodies in every chunking, and against multer.

use proptest::prelude::*;

use super::*;
use crate::multipart::MultipartLimits;

type Chunks = futures_util::stream::Iter<std::vec::IntoIter<Result<Bytes, std::io::Error>>>;

fn limits(whole_body: u64, part_header: usize) -> MultipartLimits {
    MultipartLimits {
        whole_body,
        part_header,
        ..MultipartLimits::default()
    }
}

fn chunked(body: &[u8], cuts: &[usize]) -> Chunks {
    let mut chunks = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
        let cut = cut.clamp(at, body.len());
        chunks.push(Ok(Bytes::copy_from_slice(&body[at..cut])));
        at = cut;
    }
    futures_util::stream::iter(chunks)
}

/// Every part as (name, filename, data), or the error's text.
fn read_all(
    body: Chunks,
    boundary: &str,
    header_limit: usize,
) -> Result<Vec<(PartHead, Vec<u8>)>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut parts = Parts::new(body, boundary, limits(u64::MAX, header_limit))
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(head) = parts.next_part().await.map_err(|e| e.to_string())? {
            let mut data = Vec::new();
            while let Some(chunk) = parts.chunk().await.map_err(|e| e.to_string())? {
                assert!(!chunk.is_empty());
                data.extend_from_slice(&chunk);
            }
            out.push((head, data));
        }
        Ok(out)
    })
}

fn every_chunking(body: &[u8]) -> impl Iterator<Item = Chunks> + '_ {
    [1, 2, 3, 5, 7, 64, 4096].into_iter().map(move |size| {
        let cuts: Vec<usize> = (size..body.len()).step_by(size).collect();
        chunked(body, &cuts)
    })
}

fn padded(header_pad: usize) -> Vec<u8> {
    format!(
        "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue\r\n\
         --b\r\nContent-Disposition: form-data; name=\"pad\"\r\nX-Pad: {}\r\n\r\nv\r\n--b--\r\n",
        "p".repeat(header_pad)
    )
    .into_bytes()
}

#[test]
fn short_headers_pass_and_long_ones_fail_in_any_chunking() {
    for body in every_chunking(&padded(100)) {
        let parts = read_all(body, "b", 200).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].0.name, "pad");
        assert_eq!(parts[1].1, b"v");
    }
    let long = padded(300);
    for body in every_chunking(&long) {
        assert!(read_all(body, "b", 200)
            .unwrap_err()
            .contains("longer than 200"));
    }
}

#[test]
fn delimiter_lookalikes_inside_data_are_data_in_any_chunking() {
    let data = b"xx--b \r\n--c \r\r\n-\r\n--\r\n-b zz\r\r\n--";
    let mut body = b"preamble\r\n--b\r\nContent-Disposition: form-data; name=\"f\"; \
                     filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n"
        .to_vec();
    body.extend_from_slice(data);
    body.extend_from_slice(b"\r\n--b--\r\nepilogue");
    for chunks in every_chunking(&body) {
        let parts = read_all(chunks, "b", 256).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].0.filename.as_deref(), Some("x.png"));
        assert_eq!(parts[0].1, data);
    }
    // `CRLF--` and the boundary begin a delimiter even when more text follows.
    let body = b"--b\r\n\r\nxx\r\n--bb zz\r\n--b--";
    for chunks in every_chunking(body) {
        assert!(read_all(chunks, "b", 256)
            .unwrap_err()
            .contains("followed by text"));
    }
}

#[test]
fn a_part_without_headers_or_data_and_transport_padding() {
    let body = b"--b \t\r\n\r\n\r\n--b\r\nContent-Disposition: form-data; name=n\r\n\r\n\r\n--b--";
    for chunks in every_chunking(body) {
        let parts = read_all(chunks, "b", 64).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], (PartHead::default(), Vec::new()));
        assert_eq!(parts[1].0.name, "n");
        assert!(parts[1].1.is_empty());
    }
}

#[test]
fn truncated_bodies_and_bad_boundaries_are_errors() {
    for body in [
        &b""[..],
        b"no delimiter at all",
        b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nunterminated",
        b"--b\r\nContent-Disposition: form-data; name=a\r\n",
        b"--b",
        b"--b-",
    ] {
        assert!(read_all(chunked(body, &[]), "b", 64).is_err(), "{body:?}");
    }
    for boundary in ["", "a\rb", &"x".repeat(71)] {
        assert!(read_all(chunked(b"", &[]), boundary, 64).is_err());
    }
}

#[test]
fn the_body_limit_counts_every_byte() {
    let body = padded(10);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let limit = body.len() as u64 - 1;
    let error = runtime.block_on(async {
        let mut parts = Parts::new(chunked(&body, &[7, 50]), "b", limits(limit, 1024)).unwrap();
        loop {
            match parts.next_part().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(error) => return Some(error),
            }
        }
    });
    assert!(matches!(error, Some(MultipartError::TooLarge)));
}

/// A part as (name, filename, data).
type Field = (String, Option<String>, Vec<u8>);

/// What multer, a reader written independently, makes of the same body.
fn multer_reads(body: &[u8], boundary: &str) -> Option<Vec<Field>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let stream = chunked(body, &[]);
    runtime.block_on(async {
        let mut form = multer::Multipart::new(stream, boundary);
        let mut out = Vec::new();
        while let Some(field) = form.next_field().await.ok()? {
            let name = field.name().unwrap_or_default().to_owned();
            let filename = field.file_name().map(str::to_owned);
            out.push((name, filename, field.bytes().await.ok()?.to_vec()));
        }
        Some(out)
    })
}

fn part_data() -> impl Strategy<Value = Vec<u8>> {
    // Bytes that often look like the start of a delimiter.
    proptest::collection::vec(
        prop_oneof![
            Just(b"\r".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r\n-".to_vec()),
            Just(b"\r\n--".to_vec()),
            Just(b"\r\n--bound".to_vec()),
            Just(b"--boundary".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..40),
        ],
        0..12,
    )
    .prop_map(|pieces| pieces.concat())
    .prop_filter("data must not hold the delimiter", |data| {
        memmem::find(
            &[b"\r\n".as_slice(), data, b"\r\n"].concat(),
            b"\r\n--boundary",
        )
        .is_none()
    })
}

proptest! {
    #[test]
    fn reads_what_multer_reads_in_any_chunking(
        parts in proptest::collection::vec(("[a-z\\[\\]]{0,8}", proptest::option::of("[a-z.]{1,8}"), part_data()), 0..5),
        cuts in proptest::collection::vec(0usize..2000, 0..30),
    ) {
        let mut body = b"preamble".to_vec();
        for (name, filename, data) in &parts {
            body.extend_from_slice(b"\r\n--boundary\r\nContent-Disposition: form-data; name=\"");
            body.extend_from_slice(name.as_bytes());
            body.push(b'"');
            if let Some(filename) = filename {
                body.extend_from_slice(format!("; filename=\"{filename}\"").as_bytes());
            }
            body.extend_from_slice(b"\r\n\r\n");
            body.extend_from_slice(data);
        }
        body.extend_from_slice(b"\r\n--boundary--\r\n");
        let mut cuts = cuts;
        cuts.sort_unstable();
        let ours = read_all(chunked(&body, &cuts), "boundary", 8192);
        let expected: Vec<_> = parts.clone();
        let ours: Vec<_> = ours.unwrap().into_iter().map(|(h, d)| (h.name, h.filename, d)).collect();
        prop_assert_eq!(&ours, &expected);
        if !parts.is_empty() {
            prop_assert_eq!(Some(ours), multer_reads(&body, "boundary"));
        }
    }
}

#[test]
fn a_part_past_the_part_limit_is_an_error() {
    let body = b"--b\r\n\r\n1\r\n--b\r\n\r\n2\r\n--b\r\n\r\n3\r\n--b--";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let read = |max: usize| {
        runtime.block_on(async {
            let limits = MultipartLimits {
                parts: max,
                ..MultipartLimits::default()
            };
            let mut parts = Parts::new(chunked(body, &[]), "b", limits).unwrap();
            let mut seen = 0;
            while parts
                .next_part()
                .await
                .map_err(|e| e.to_string())?
                .is_some()
            {
                seen += 1;
            }
            Ok::<_, String>(seen)
        })
    };
    assert_eq!(read(3), Ok(3));
    assert_eq!(
        read(2),
        Err("a multipart body may have at most 2 parts".into())
    );
}

#[test]
fn the_rest_of_the_body_is_read_after_the_close_delimiter_within_the_limit() {
    let form = b"--B\r\ncontent-disposition: form-data; name=\"a\"\r\n\r\nx\r\n--B--\r\n";
    let epilogue = vec![b'e'; 1000];
    let body = [form.as_slice(), &epilogue].concat();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Cut so the epilogue comes in chunks of its own, as a late write would.
        let cuts = [form.len(), form.len() + 10, form.len() + 500];
        let mut parts = Parts::new(chunked(&body, &cuts), "B", limits(u64::MAX, 1024)).unwrap();
        while parts.next_part().await.unwrap().is_some() {}
        assert_eq!(
            parts.read,
            body.len() as u64,
            "the epilogue was left unread"
        );
        // An epilogue past the whole-body limit is refused like any other byte.
        let limit = form.len() as u64 + 100;
        let mut parts = Parts::new(chunked(&body, &cuts), "B", limits(limit, 1024)).unwrap();
        assert!(parts.next_part().await.unwrap().is_some());
        assert!(matches!(
            parts.next_part().await,
            Err(MultipartError::TooLarge)
        ));
    });
}
