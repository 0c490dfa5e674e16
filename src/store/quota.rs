//! Per-owner storage quotas, over any [`FileStore`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use super::{FileCursor, FileKey, FilePage, FileStore, StoreError, Usage};
use crate::auth::UserId;

/// How much one owner may store; `None` is unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Bytes, in total.
    pub bytes: Option<u64>,
    /// Files.
    pub files: Option<u64>,
}

impl Quota {
    /// No limit.
    pub const UNLIMITED: Quota = Quota {
        bytes: None,
        files: None,
    };

    /// At most `bytes` in at most `files` files; `0` for either means unlimited.
    pub fn new(bytes: u64, files: u64) -> Self {
        Quota {
            bytes: (bytes > 0).then_some(bytes),
            files: (files > 0).then_some(files),
        }
    }

    fn allows(&self, usage: Usage) -> bool {
        self.bytes.is_none_or(|max| usage.bytes <= max)
            && self.files.is_none_or(|max| usage.files <= max)
    }
}

impl Default for Quota {
    /// 200 MB (as the File Upload API documents) in at most 10,000 files.
    fn default() -> Self {
        Quota::new(200 * 1000 * 1000, 10_000)
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.bytes {
            Some(bytes) => write!(f, "{bytes} bytes")?,
            None => f.write_str("unlimited bytes")?,
        }
        match self.files {
            Some(files) => write!(f, " in {files} files"),
            None => f.write_str(" in any number of files"),
        }
    }
}

/// A [`FileStore`] that refuses a write that would take its owner over a [`Quota`].
///
/// Every write is counted against what the owner has stored (the inner store's
/// [`usage`](FileStore::usage)) plus what is being written for it right now, so concurrent
/// writes of one owner cannot pass the check together. The count is this process's: several
/// processes writing for one owner into a shared store may pass it by one write each.
#[derive(Clone)]
pub struct QuotaStore {
    inner: Arc<dyn FileStore>,
    quota: Quota,
    writing: Arc<Mutex<HashMap<UserId, Usage>>>,
}

impl QuotaStore {
    /// `inner`, with `quota` per owner.
    pub fn new(inner: Arc<dyn FileStore>, quota: Quota) -> Self {
        QuotaStore {
            inner,
            quota,
            writing: Arc::default(),
        }
    }

    /// Counts `adding` as being written for `owner`, or refuses it.
    async fn reserve(&self, owner: &UserId, adding: Usage) -> Result<Reserved<'_>, StoreError> {
        let used = self.inner.usage(owner).await?;
        let mut writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let in_flight = writing.get(owner).copied().unwrap_or_default();
        let used = used.plus(in_flight);
        if !self.quota.allows(used.plus(adding)) {
            return Err(StoreError::quota_exceeded(used, adding, self.quota));
        }
        *writing.entry(owner.clone()).or_default() = in_flight.plus(adding);
        Ok(Reserved {
            store: self,
            owner: owner.clone(),
            adding,
        })
    }
}

/// A write counted against its owner's quota until it ends.
struct Reserved<'a> {
    store: &'a QuotaStore,
    owner: UserId,
    adding: Usage,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        let mut writing = self.store.writing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(in_flight) = writing.get_mut(&self.owner) {
            in_flight.bytes = in_flight.bytes.saturating_sub(self.adding.bytes);
            in_flight.files = in_flight.files.saturating_sub(self.adding.files);
            if *in_flight == Usage::default() {
                writing.remove(&self.owner);
            }
        }
    }
}

impl fmt::Debug for QuotaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaStore")
            .field("quota", &self.quota)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl FileStore for QuotaStore {
    async fn put(&self, key: &FileKey, bytes: Bytes) -> Result<(), StoreError> {
        let adding = Usage::new(bytes.len() as u64, 1);
        let _reserved = self.reserve(key.owner(), adding).await?;
        self.inner.put(key, bytes).await
    }

    async fn get(&self, key: &FileKey) -> Result<Option<Bytes>, StoreError> {
        self.inner.get(key).await
    }

    async fn delete(&self, key: &FileKey) -> Result<bool, StoreError> {
        self.inner.delete(key).await
    }

    async fn list(
        &self,
        owner: &UserId,
        after: Option<&FileCursor>,
        limit: usize,
    ) -> Result<FilePage, StoreError> {
        self.inner.list(owner, after, limit).await
    }

    async fn usage(&self, owner: &UserId) -> Result<Usage, StoreError> {
        self.inner.usage(owner).await
    }

    async fn admits(&self, owner: &UserId, adding: Usage) -> Result<(), StoreError> {
        drop(self.reserve(owner, adding).await?);
        self.inner.admits(owner, adding).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryFileStore;

    #[tokio::test]
    async fn writes_past_the_quota_are_refused_and_deletes_make_room() {
        let store = QuotaStore::new(Arc::new(MemoryFileStore::new()), Quota::new(10, 2));
        let alice = UserId::new("alice").unwrap();
        let key = |name: &str| FileKey::new(&alice, uuid::Uuid::new_v4(), name);
        let first = key("a");
        store
            .put(&first, Bytes::from_static(b"123456"))
            .await
            .unwrap();
        let too_big = store.put(&key("b"), Bytes::from_static(b"12345")).await;
        assert!(too_big.unwrap_err().to_string().contains("quota"));
        store
            .put(&key("c"), Bytes::from_static(b"1234"))
            .await
            .unwrap();
        assert!(
            store.put(&key("d"), Bytes::new()).await.is_err(),
            "third file"
        );
        assert!(store.admits(&alice, Usage::new(0, 1)).await.is_err());
        store.delete(&first).await.unwrap();
        store.admits(&alice, Usage::new(6, 1)).await.unwrap();
        assert_eq!(store.usage(&alice).await.unwrap(), Usage::new(4, 1));
        // Another owner has a quota of its own.
        let bob = UserId::new("bob").unwrap();
        store.admits(&bob, Usage::new(10, 2)).await.unwrap();
    }
}
