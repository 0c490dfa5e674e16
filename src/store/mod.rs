//! Storage of source images and outputs, by [`FileKey`]. The records of what each output is
//! (its generation) are `crate::generations`'.
//!
//! Every key that comes from a request is parsed into a [`FileKey`] before it reaches a store,
//! so a store only ever sees keys of the shape `files/{user_id}/{uuid}_{name}`. The shipped
//! [`LocalFileStore`] checks again on its own that a path cannot leave its root.
//!
//! # Guarantees of a [`FileStore`]
//! - `put` is atomic: a reader sees the whole file or none, and a crash mid-write leaves no
//!   half file behind a key.
//! - `list` returns one owner's files only, newest first, a page at a time; a page continues
//!   after a [`FileCursor`], so paging is stable while files come and go.

mod key;
mod local;
mod memory;
mod quota;
#[cfg(feature = "s3")]
mod s3;

use std::cmp::Reverse;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use key::{sanitize_name, FileKey};
pub use local::LocalFileStore;
pub(crate) use local::DIRECT_ALIGN;
pub use memory::MemoryFileStore;
pub use quota::{Quota, QuotaStore};
#[cfg(feature = "s3")]
pub use s3::{S3Config, S3FileStore};

use crate::auth::UserId;
use crate::media::ImageKind;
use crate::{BoxError, GatewayError};

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

/// A place in an owner's files list, which runs newest first (files stored in the same
/// second by key). Its order is the list's order: a page holds the files after its cursor.
///
/// It carries the time as well as the key, so a page after a file deleted meanwhile starts
/// where it should, and files stored while a client pages (newer than every cursor) never
/// shift the pages that follow. Clients see it as `{created}:{key}` (`next_after`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileCursor {
    // Field order is the list order: newest first, then by key.
    newest_first: Reverse<u64>,
    key: FileKey,
}

impl FileCursor {
    /// The place of the file stored at `created` (unix seconds) under `key`.
    pub fn new(created: u64, key: FileKey) -> Self {
        FileCursor {
            newest_first: Reverse(created),
            key,
        }
    }

    /// The place of `file`.
    pub fn of(file: &FileMeta) -> Self {
        FileCursor::new(file.created, file.key.clone())
    }

    /// The file's key.
    pub fn key(&self) -> &FileKey {
        &self.key
    }

    /// When the file was stored, in unix seconds.
    pub fn created(&self) -> u64 {
        self.newest_first.0
    }

    /// Parses a cursor a client sent back; it must name one of `owner`'s keys.
    pub fn parse_owned(raw: &str, owner: &UserId) -> Result<FileCursor, GatewayError> {
        let invalid = || {
            GatewayError::invalid_request("after is not a cursor from next_after", Some("after"))
        };
        let (created, key) = raw.split_once(':').ok_or_else(invalid)?;
        let created = created.parse().map_err(|_| invalid())?;
        let key = FileKey::parse_owned(key, owner).map_err(|_| invalid())?;
        Ok(FileCursor::new(created, key))
    }
}

impl fmt::Display for FileCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.created(), self.key)
    }
}

/// One page of an owner's files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FilePage {
    /// Files newest first.
    pub files: Vec<FileMeta>,
    /// Whether more files follow the last one.
    pub has_more: bool,
}

impl FilePage {
    /// A page of `files` (newest first); `has_more` when more follow the last one.
    pub fn new(files: Vec<FileMeta>, has_more: bool) -> Self {
        FilePage { files, has_more }
    }

    /// Where the next page starts, when there is one.
    pub fn next(&self) -> Option<FileCursor> {
        self.files
            .last()
            .filter(|_| self.has_more)
            .map(FileCursor::of)
    }
}

/// A storage failure: an I/O error, a path refused by the store's own checks, a full
/// quota or volume. A full quota is answered `413 storage_quota_exceeded`, a volume under
/// its free-space floor `507 insufficient_storage`, anything else `500 internal_error` (the
/// detail is logged, never sent).
#[derive(Debug)]
pub struct StoreError(StoreErrorKind);

#[derive(Debug)]
enum StoreErrorKind {
    Failed(BoxError),
    Quota {
        used: Usage,
        adding: Usage,
        quota: Quota,
    },
    NoSpace,
}

impl StoreError {
    /// Wraps any error.
    pub fn new(error: impl Into<BoxError>) -> Self {
        StoreError(StoreErrorKind::Failed(error.into()))
    }

    /// The owner's quota would be exceeded by `adding` on top of `used`.
    pub fn quota_exceeded(used: Usage, adding: Usage, quota: Quota) -> Self {
        StoreError(StoreErrorKind::Quota {
            used,
            adding,
            quota,
        })
    }

    /// The volume is under its free-space floor; nothing more is written to it.
    pub fn no_space() -> Self {
        StoreError(StoreErrorKind::NoSpace)
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            StoreErrorKind::Failed(error) => write!(f, "storage error: {error}"),
            StoreErrorKind::Quota {
                used,
                adding,
                quota,
            } => write!(
                f,
                "storing {} bytes in {} files would exceed the storage quota: {} bytes in {} \
                 files are used of {}",
                adding.bytes, adding.files, used.bytes, used.files, quota
            ),
            StoreErrorKind::NoSpace => f.write_str("the file volume is full"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            StoreErrorKind::Failed(error) => Some(&**error),
            _ => None,
        }
    }
}

impl From<StoreError> for crate::GatewayError {
    fn from(error: StoreError) -> Self {
        match error.0 {
            StoreErrorKind::Quota { .. } => crate::GatewayError::StorageQuotaExceeded {
                message: format!(
                    "{error}; delete files with DELETE /api/v1/files/{{key}} to make room"
                ),
            },
            StoreErrorKind::NoSpace => crate::GatewayError::InsufficientStorage,
            StoreErrorKind::Failed(_) => crate::GatewayError::internal(format!("file {error}")),
        }
    }
}

/// What one owner has stored: bytes and files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes, in total.
    pub bytes: u64,
    /// Files.
    pub files: u64,
}

impl Usage {
    /// `bytes` in `files` files.
    pub fn new(bytes: u64, files: u64) -> Self {
        Usage { bytes, files }
    }

    pub(crate) fn plus(self, other: Usage) -> Usage {
        Usage {
            bytes: self.bytes.saturating_add(other.bytes),
            files: self.files.saturating_add(other.files),
        }
    }

    fn minus(self, other: Usage) -> Usage {
        Usage {
            bytes: self.bytes.saturating_sub(other.bytes),
            files: self.files.saturating_sub(other.files),
        }
    }
}

/// Bytes by key. Implement it over your object store: four methods; `usage`, `admits` and
/// `put_within` have defaults.
#[async_trait]
pub trait FileStore: Send + Sync + 'static {
    /// Stores `bytes` under `key`, atomically, replacing any file there.
    async fn put(&self, key: &FileKey, bytes: Bytes) -> Result<(), StoreError>;

    /// The whole file, or `None` when there is none.
    async fn get(&self, key: &FileKey) -> Result<Option<Bytes>, StoreError>;

    /// Removes the file; `false` when there was none.
    async fn delete(&self, key: &FileKey) -> Result<bool, StoreError>;

    /// Up to `limit` of `owner`'s files that come after `after` in the list's order
    /// (newest first, see [`FileCursor`]), that order kept.
    async fn list(
        &self,
        owner: &UserId,
        after: Option<&FileCursor>,
        limit: usize,
    ) -> Result<FilePage, StoreError>;

    /// What `owner` has stored. The default walks every page of [`list`](Self::list); a
    /// store that keeps an index answers from it.
    async fn usage(&self, owner: &UserId) -> Result<Usage, StoreError> {
        let mut usage = Usage::default();
        let mut after: Option<FileCursor> = None;
        loop {
            let page = self.list(owner, after.as_ref(), 1000).await?;
            for file in &page.files {
                usage = usage.plus(Usage::new(file.size, 1));
            }
            match page.next() {
                Some(next) => after = Some(next),
                None => return Ok(usage),
            }
        }
    }

    /// Whether `adding` more for `owner` would be stored: `Err` with the reason (a quota, a
    /// full volume) when a [`put`](Self::put) of it would be refused. Called before work
    /// whose result must be stored, so the work is not done for nothing. Default: `Ok`.
    async fn admits(&self, owner: &UserId, adding: Usage) -> Result<(), StoreError> {
        let _ = (owner, adding);
        Ok(())
    }

    /// [`put`](Self::put), refused ([`StoreError::quota_exceeded`]) when the owner's usage
    /// with this file would pass `quota`. [`QuotaStore`] checks the quota in its process
    /// first and then writes through this: a store shared by several processes (one index
    /// for all) checks and counts the file in one step here, so processes writing for one
    /// owner at once cannot pass the quota together. Default: `put` (the process's check is
    /// the whole check).
    async fn put_within(
        &self,
        key: &FileKey,
        bytes: Bytes,
        quota: Quota,
    ) -> Result<(), StoreError> {
        let _ = quota;
        self.put(key, bytes).await
    }
}

#[async_trait]
impl<F: FileStore + ?Sized> FileStore for Arc<F> {
    async fn put(&self, key: &FileKey, bytes: Bytes) -> Result<(), StoreError> {
        (**self).put(key, bytes).await
    }

    async fn put_within(
        &self,
        key: &FileKey,
        bytes: Bytes,
        quota: Quota,
    ) -> Result<(), StoreError> {
        (**self).put_within(key, bytes, quota).await
    }

    async fn get(&self, key: &FileKey) -> Result<Option<Bytes>, StoreError> {
        (**self).get(key).await
    }

    async fn delete(&self, key: &FileKey) -> Result<bool, StoreError> {
        (**self).delete(key).await
    }

    async fn list(
        &self,
        owner: &UserId,
        after: Option<&FileCursor>,
        limit: usize,
    ) -> Result<FilePage, StoreError> {
        (**self).list(owner, after, limit).await
    }

    async fn usage(&self, owner: &UserId) -> Result<Usage, StoreError> {
        (**self).usage(owner).await
    }

    async fn admits(&self, owner: &UserId, adding: Usage) -> Result<(), StoreError> {
        (**self).admits(owner, adding).await
    }
}

/// Stores every file of `files` (all of one owner), or none: the batch is first checked
/// against the store's limits ([`admit_all`]), then written ([`write_all`]).
pub async fn put_all(
    store: &dyn FileStore,
    owner: &UserId,
    files: &[(FileKey, Bytes)],
) -> Result<(), StoreError> {
    admit_all(store, owner, files).await?;
    write_all(store, files).await
}

/// Whether the store takes every file of `files` (all of `owner`): [`FileStore::admits`]
/// for the batch as a whole.
pub async fn admit_all(
    store: &dyn FileStore,
    owner: &UserId,
    files: &[(FileKey, Bytes)],
) -> Result<(), StoreError> {
    let bytes = files.iter().map(|(_, b)| b.len() as u64).sum();
    store
        .admits(owner, Usage::new(bytes, files.len() as u64))
        .await
}

/// Writes every file of `files` at once (a store that batches its writes takes them in one
/// batch), or none: when a write fails, the files the others wrote are deleted.
pub async fn write_all(
    store: &dyn FileStore,
    files: &[(FileKey, Bytes)],
) -> Result<(), StoreError> {
    let puts = files
        .iter()
        .map(|(key, bytes)| store.put(key, bytes.clone()));
    let outcomes = futures_util::future::join_all(puts).await;
    let (mut written, mut failed) = (Vec::new(), None);
    for ((key, _), outcome) in files.iter().zip(outcomes) {
        match outcome {
            Ok(()) => written.push(key),
            Err(error) => {
                failed.get_or_insert(error);
            }
        }
    }
    let Some(error) = failed else {
        return Ok(());
    };
    for key in written {
        let _ = store.delete(key).await;
    }
    Err(error)
}

/// The content type of stored bytes, by their magic number (`application/octet-stream`
/// when they are no accepted image).
pub fn content_type_of(bytes: &[u8]) -> &'static str {
    ImageKind::sniff(bytes).map_or("application/octet-stream", ImageKind::mime)
}
