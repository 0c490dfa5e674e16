//! Source resolution: an [`EditRequest`](crate::job::EditRequest) whose source is a key,
//! a generation or uploaded bytes becomes an [`EditJob`](crate::job::EditJob) that holds
//! the source image bytes.
//!
//! Keys arrive here already parsed into [`FileKey`](crate::store::FileKey)s owned by the
//! caller, and generation ids as [`GenerationId`](crate::id::GenerationId)s, so this layer never sees raw text.
//!
//! | source | answer |
//! |---|---|
//! | uploaded image (multipart) | stored as an upload of the caller first, then edited |
//! | `image_key` whose file is gone | `404 IMAGE_NOT_FOUND` |
//! | `generation_id` unknown, or another user's | `404 generation_not_found` (the same answer) |
//! | `generation_id` whose bytes are still being stored | `409 generation_not_ready`, `Retry-After: 1` |
//!
//! | a reference named twice | `400 invalid_request`, refused before any read |
//! | a caller whose balance is below the least the request could cost (with [`ResolveSourceLayer::admission`]) | `402`, before any source is read or fetched |
//! | named sources past [`MAX_NAMED_SOURCE_BYTES`] | `400 invalid_request`, the reading stopped |
//!
//! A generation left pending by a process that died is settled on first use after the
//! pending timeout: ready if its file is in the store, not found otherwise.

mod layer;
mod service;

pub use layer::ResolveSourceLayer;
pub use service::{ResolveSource, MAX_NAMED_SOURCE_BYTES};
