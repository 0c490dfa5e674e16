//! Normalization: JSON and multipart bodies become one typed, validated [`EditRequest`].
//!
//! [`NormalizeLayer`] is where HTTP ends. It reads the body as `application/json` or
//! `multipart/form-data`, validates every field, and calls the inner service with an
//! [`EditRequest`]; the inner service answers with an
//! [`EditOutcome`](crate::gateway::EditOutcome) or a [`GatewayError`](crate::GatewayError),
//! which it renders as the spec's JSON. So everything inside (source resolution, billing,
//! backends) is tested and written without HTTP.
//!
//! # Guarantees
//! - Any byte string in gives an `EditRequest` or a [`GatewayError`](crate::GatewayError)
//!   out, never a panic.
//! - Memory is bounded while streaming: each image part is cut off at the per-image limit
//!   (`400 IMAGE_TOO_LARGE`), each text part at its own small limit, a JSON body at 1 MiB,
//!   a multipart body at the whole-body limit (`413`), each part's header block at 8 KiB,
//!   and at most 64 parts are read.
//! - An image's bytes are copied once between the connection's read buffer and the
//!   [`EditRequest`]: the multipart reader returns slices of the body's own chunks, and each
//!   image part is joined into one buffer (as it arrives, once past 1 MiB).
//! - The image type is decided by the bytes (JPEG, PNG, GIF, WebP) as soon as the first
//!   12 bytes of a part arrive; the client's `Content-Type` and file name are ignored.
//! - Multipart parts may come in any order; one file may be sent as `image` and several as
//!   repeated `image` or `image[]` parts, as the OpenAI SDKs do. Fields the gateway does not
//!   use (`mask`, `input_fidelity`, `output_compression`, `user`, ...) are read past and
//!   ignored.
//!
//! # Errors
//! Bad JSON, a missing field, both or neither of `image_key` / `generation_id`, an empty
//! prompt: `400 invalid_request` with `param` naming the field. A `generation_id` that is
//! not a UUID: `400 invalid_generation_id`; a malformed or foreign `image_key`:
//! `400 invalid_image_key`; an unknown model: `404 model_not_found`.

mod fields;
mod form;
mod json;
mod layer;
pub(crate) mod multipart;
mod service;

use bytes::Bytes;

pub use fields::{
    parse_n, parse_prompt, Background, OutputFormat, Quality, ResponseFormat, Size,
    MAX_PROMPT_CHARS,
};
pub use json::parse_json;
pub use layer::NormalizeLayer;
pub use multipart::{parse_multipart, MultipartLimits};
pub(crate) use service::body_error;
pub use service::Normalize;

use crate::auth::Principal;
use crate::id::GenerationId;
use crate::lease::{ClientWatch, Leases};
use crate::media::ImageKind;
use crate::store::FileKey;

/// One image edit, as the client asked for it, validated.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EditRequest {
    /// Who asked (and pays).
    pub principal: Principal,
    /// Where the source image comes from.
    pub source: Source,
    /// Everything else the client chose.
    pub params: EditParams,
    /// The request's id (`x-request-id`, honoured or generated).
    pub request_id: String,
    /// The client's `Idempotency-Key`, if it sent one.
    pub idempotency_key: Option<String>,
    /// What must stay taken until the edit's work ends (the caller's in-flight slot).
    pub leases: Leases,
    /// Whether the client still waits for the answer.
    pub client: ClientWatch,
}

impl EditRequest {
    /// A SHA-256 over everything the request asks for: parameters and the source (its key,
    /// its generation id, or the digest of each uploaded image). Two requests with the same
    /// fingerprint ask for the same edit.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let p = &self.params;
        let mut hash = Sha256::new();
        for field in [
            p.model.as_str(),
            p.prompt.as_str(),
            &p.n.to_string(),
            &p.size.to_string(),
            p.quality.as_str(),
            p.background.as_str(),
            p.output_format.as_str(),
        ] {
            // Length-prefixed so no two field lists hash alike by shifting a boundary.
            hash.update((field.len() as u64).to_le_bytes());
            hash.update(field.as_bytes());
        }
        match &self.source {
            Source::ImageKey(key) => hash.update(format!("key:{key}")),
            Source::Generation(id) => hash.update(format!("generation:{id}")),
            Source::Upload(images) => {
                for image in images {
                    hash.update(b"upload:");
                    hash.update(Sha256::digest(&image.bytes));
                }
            }
        }
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The parameters of an edit, shared by [`EditRequest`] and the backend's
/// [`EditJob`](crate::backend::EditJob).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EditParams {
    /// A model of the gateway's catalog.
    pub model: String,
    /// The edit instruction: not blank, at most 32,000 characters.
    pub prompt: String,
    /// How many images to return: `1..=` the model's maximum.
    pub n: u32,
    /// Output dimensions.
    pub size: Size,
    /// Rendering quality.
    pub quality: Quality,
    /// Background handling.
    pub background: Background,
    /// Encoding of the returned images.
    pub output_format: OutputFormat,
}

impl EditParams {
    /// Parameters for `model` and `prompt` with every optional field at its default.
    pub fn new(model: impl Into<String>, prompt: impl Into<String>) -> Self {
        EditParams {
            model: model.into(),
            prompt: prompt.into(),
            n: 1,
            size: Size::Auto,
            quality: Quality::Auto,
            background: Background::Auto,
            output_format: OutputFormat::Png,
        }
    }
}

/// The one source an edit starts from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A file the caller uploaded before (JSON method).
    ImageKey(FileKey),
    /// An image a previous call produced (chained edits).
    Generation(GenerationId),
    /// Image files sent in the request itself (multipart method), in the order received.
    Upload(Vec<SourceImage>),
}

/// Image bytes whose type was checked by their magic number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceImage {
    /// The whole file.
    pub bytes: Bytes,
    /// The type the bytes show.
    pub kind: ImageKind,
    /// The file name the client gave, if any (informational only).
    pub filename: Option<String>,
}

impl SourceImage {
    /// A fresh key for storing this image as an upload of `owner`:
    /// `files/{owner}/{uuid}_{sanitised file name}` (`upload.{ext}` when it has no name).
    pub fn upload_key(&self, owner: &crate::auth::UserId) -> FileKey {
        FileKey::new(owner, uuid::Uuid::new_v4(), &self.name())
    }

    /// The file name the client gave, or `upload.{ext}`.
    pub fn name(&self) -> String {
        self.filename
            .clone()
            .unwrap_or_else(|| format!("upload.{}", self.kind.extension()))
    }
}
