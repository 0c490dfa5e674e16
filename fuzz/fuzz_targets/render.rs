//! The reference backend fed an arbitrary source file: PNG chunk filtering and every
//! decoder behind it, under a small decode budget. Never a panic; an answer is an image of
//! at most the output cap, or an error. The header reader billing prices `auto` by reads
//! every input too, and never panics.
#![no_main]

use image_gateway::job::{EditJob, EditParams, SourceImage};
use std::sync::OnceLock;

use bytes::Bytes;
use image_gateway::auth::{Principal, UserId};
use image_gateway::backend::{ImageBackend, ReferenceBackend};
use image_gateway::media::ImageKind;

use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = ImageKind::dimensions(data);
    let Some(kind) = ImageKind::sniff(data) else {
        return;
    };
    let backend = ReferenceBackend::new()
        .decode_budget(4 << 20)
        .max_output_pixels(256 * 256);
    let source = SourceImage {
        bytes: Bytes::copy_from_slice(data),
        kind,
        filename: None,
    };
    let owner = Principal::new(UserId::new("fuzz").expect("user id"));
    let job = EditJob::new(owner, vec![source], EditParams::new("m", "p"));
    if let Ok(images) = runtime().block_on(backend.edit(&job)) {
        assert_eq!(images.len(), 1);
    }
});
