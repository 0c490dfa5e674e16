use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::{FileKey, FileMeta, FilePage, FileStore, StoreError};
use crate::auth::UserId;
use crate::gateway::unix_now;

/// Files in memory, for tests and embedding. Lost when the process ends.
#[derive(Debug, Default)]
pub struct MemoryFileStore {
    files: Mutex<BTreeMap<FileKey, (Bytes, u64)>>,
}

impl MemoryFileStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn files(&self) -> std::sync::MutexGuard<'_, BTreeMap<FileKey, (Bytes, u64)>> {
        // A panic while holding the lock cannot leave the map half-updated: every
        // operation is one map call.
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl FileStore for MemoryFileStore {
    async fn put(&self, key: &FileKey, bytes: Bytes) -> Result<(), StoreError> {
        self.files().insert(key.clone(), (bytes, unix_now()));
        Ok(())
    }

    async fn get(&self, key: &FileKey) -> Result<Option<Bytes>, StoreError> {
        Ok(self.files().get(key).map(|(bytes, _)| bytes.clone()))
    }

    async fn delete(&self, key: &FileKey) -> Result<bool, StoreError> {
        Ok(self.files().remove(key).is_some())
    }

    async fn list(
        &self,
        owner: &UserId,
        after: Option<&FileKey>,
        limit: usize,
    ) -> Result<FilePage, StoreError> {
        let files = self.files();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut owned = files
            .range((start, Bound::Unbounded))
            .filter(|(key, _)| key.owner() == owner)
            .map(|(key, (bytes, created))| {
                FileMeta::new(key.clone(), bytes.len() as u64, *created)
            });
        let page: Vec<FileMeta> = owned.by_ref().take(limit).collect();
        let has_more = owned.next().is_some();
        Ok(FilePage {
            files: page,
            has_more,
        })
    }
}
