//! Normalization: JSON and multipart bodies become one typed, validated [`EditRequest`](crate::job::EditRequest).
//!
//! [`NormalizeLayer`] is where HTTP ends. One serves each image endpoint, its
//! [`Operation`](crate::job::Operation) set by [`NormalizeLayer::operation`]: it reads the
//! body as `application/json` (or, for edits, `multipart/form-data`), validates every field
//! against its [`Rules`], and calls the inner service with an
//! [`EditRequest`](crate::job::EditRequest); the inner service answers with an
//! [`EditOutcome`](crate::job::EditOutcome) or a [`GatewayError`](crate::GatewayError),
//! which it renders as the spec's JSON, or, for `stream: true`, as server-sent events (see
//! the `stream` module's docs). So everything inside (source resolution, billing, backends)
//! is tested and written without HTTP.
//!
//! # Guarantees
//! - Any byte string in gives an `EditRequest` or a [`GatewayError`](crate::GatewayError)
//!   out, never a panic.
//! - Memory is bounded while streaming: each image part is cut off at the per-image limit
//!   (`400 IMAGE_TOO_LARGE`), each text part at its own small limit, a JSON body (which may carry `data:` URIs) and a multipart body at the whole-body limit
//!   (`413`), each part's header block at 8 KiB, and at most 64 parts are read.
//! - An image's bytes are copied once between the connection's read buffer and the
//!   [`EditRequest`](crate::job::EditRequest): the multipart reader returns slices of the body's own chunks, and each
//!   image part is joined into one buffer (as it arrives, once past 1 MiB).
//! - The image type is decided by the bytes (JPEG, PNG, GIF, WebP) as soon as the first
//!   12 bytes of a part arrive; the client's `Content-Type` and file name are ignored.
//! - Multipart parts may come in any order; one file may be sent as `image` and several as
//!   repeated `image` or `image[]` parts (at most 16), as the OpenAI SDKs do, and a `mask`
//!   beside them. The options passed to the model (`output_compression`, `moderation`,
//!   `input_fidelity`, `user`, `partial_images`, `stream`) are checked for shape; fields
//!   the gateway does not know are read past and ignored.
//!
//! # Errors
//! Bad JSON, a missing field, both or neither of `image_key` / `generation_id`, an empty
//! prompt: `400 invalid_request` with `param` naming the field. A `generation_id` that is
//! not a UUID: `400 invalid_generation_id`; a malformed or foreign `image_key`:
//! `400 invalid_image_key`; an unknown model: `404 model_not_found`.

mod deferred;
mod form;
mod json;
mod layer;
mod multipart;
mod rerun;
mod service;
mod stream;

pub use crate::jobs::DEFAULT_KEEPALIVE;
pub use form::Rules;
pub use json::parse_json;
pub use layer::NormalizeLayer;
pub use multipart::parse_multipart;
pub(crate) use rerun::JobStack;
pub use rerun::{JobRunner, MAX_JOB_ATTEMPTS};
pub use service::Normalize;
