//! Multipart normalization on raw bodies: the first line of the input is the boundary, the
//! rest the body, fed in chunks whose size the input's first byte picks. Part headers,
//! boundaries and bodies are all the fuzzer's.
#![no_main]

use bytes::Bytes;
use image_gateway::auth::{Principal, UserId};
use image_gateway::catalog::{Catalog, ModelSpec};
use image_gateway::job::Operation;
use image_gateway::multipart::MultipartLimits;
use image_gateway::request::{parse_multipart, Rules};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let (boundary, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let boundary = String::from_utf8_lossy(boundary).into_owned();
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(usize::from(chunk).max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let catalog = Catalog::new([("gpt-image-2".to_string(), ModelSpec::new(10, 1))]);
    let principal = Principal::new(UserId::new("fuzz").expect("user"));
    let limits = MultipartLimits::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let result = runtime.block_on(parse_multipart(
        futures_util::stream::iter(chunks),
        boundary,
        principal,
        &Rules::new(Operation::Edit, catalog).limits(limits),
    ));
    if let Err(error) = result {
        // Parsing never blames the server.
        assert!(error.status().is_client_error(), "{error:?}");
    }
});
