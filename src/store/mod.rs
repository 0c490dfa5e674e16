//! Storage of source images and outputs, by [`FileKey`], and the records of generations.
//!
//! Every key that comes from a request is parsed into a [`FileKey`] before it reaches a store,
//! so a store only ever sees keys of the shape `files/{user_id}/{uuid}_{name}`. The shipped
//! [`LocalFileStore`] checks again on its own that a path cannot leave its root.
//!
//! # Guarantees of a [`FileStore`]
//! - `put` is atomic: a reader sees the whole file or none, and a crash mid-write leaves no
//!   half file behind a key.
//! - `list` returns one owner's files only, in key order, a page at a time.
//!
//! # Generations
//! [`Generations`] records each produced image: its id, owner, file key and whether its bytes
//! are durable yet ([`GenerationStatus::Pending`] until the store has them).

mod generations;
mod key;
mod local;
mod memory;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;

pub use generations::{Generation, GenerationStatus, Generations, MemoryGenerations};
pub use key::{sanitize_name, FileKey};
pub use local::LocalFileStore;
pub use memory::MemoryFileStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteGenerations;

use crate::auth::UserId;
use crate::request::ImageKind;
use crate::BoxError;

/// What a store knows of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileMeta {
    /// The file's key.
    pub key: FileKey,
    /// Its length in bytes.
    pub size: u64,
    /// Unix seconds at which it was stored.
    pub created: u64,
}

impl FileMeta {
    /// Metadata of a stored file.
    pub fn new(key: FileKey, size: u64, created: u64) -> Self {
        FileMeta { key, size, created }
    }
}

/// One page of an owner's files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FilePage {
    /// Files in key order.
    pub files: Vec<FileMeta>,
    /// Whether more files follow the last one.
    pub has_more: bool,
}

impl FilePage {
    /// A page of `files` (in key order); `has_more` when more follow the last one.
    pub fn new(files: Vec<FileMeta>, has_more: bool) -> Self {
        FilePage { files, has_more }
    }
}

/// A storage failure: an I/O error, a path refused by the store's own checks, and so on.
/// Answered `500 internal_error`; the detail is logged, never sent.
#[derive(Debug)]
pub struct StoreError(BoxError);

impl StoreError {
    /// Wraps any error.
    pub fn new(error: impl Into<BoxError>) -> Self {
        StoreError(error.into())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "storage error: {}", self.0)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl From<StoreError> for crate::GatewayError {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "file store failed");
        crate::GatewayError::Internal
    }
}

/// Bytes by key. Implement it over your object store; four methods, no defaults.
#[async_trait]
pub trait FileStore: Send + Sync + 'static {
    /// Stores `bytes` under `key`, atomically, replacing any file there.
    async fn put(&self, key: &FileKey, bytes: Bytes) -> Result<(), StoreError>;

    /// The whole file, or `None` when there is none.
    async fn get(&self, key: &FileKey) -> Result<Option<Bytes>, StoreError>;

    /// Removes the file; `false` when there was none.
    async fn delete(&self, key: &FileKey) -> Result<bool, StoreError>;

    /// Up to `limit` of `owner`'s files whose keys sort after `after`, in key order.
    async fn list(
        &self,
        owner: &UserId,
        after: Option<&FileKey>,
        limit: usize,
    ) -> Result<FilePage, StoreError>;
}

/// The content type of stored bytes, by their magic number (`application/octet-stream`
/// when they are no accepted image).
pub fn content_type_of(bytes: &[u8]) -> &'static str {
    ImageKind::sniff(bytes).map_or("application/octet-stream", ImageKind::mime)
}
