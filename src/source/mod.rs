//! Source resolution: an [`EditRequest`](crate::request::EditRequest) whose source is a key,
//! a generation or uploaded bytes becomes an [`EditJob`](crate::backend::EditJob) that holds
//! the source image bytes.
//!
//! Keys arrive here already parsed into [`FileKey`](crate::store::FileKey)s owned by the
//! caller, and generation ids as [`GenerationId`]s, so this layer never sees raw text.
//! Uploaded images pass through untouched.
//!
//! Until a file store and generation records are configured, a key is answered
//! `404 IMAGE_NOT_FOUND` and a generation `404 generation_not_found`: both are the truthful
//! answers for a gateway that holds no stored files.

mod generation;
mod layer;
mod service;

pub use generation::GenerationId;
pub use layer::ResolveSourceLayer;
pub use service::ResolveSource;
