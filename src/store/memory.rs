use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::{FileCursor, FileKey, FileMeta, FilePage, FileStore, StoreError, Usage};
use crate::auth::UserId;
use crate::clock::Clock;

/// The files of each owner: bytes and creation time by key.
type Owners = HashMap<UserId, HashMap<FileKey, (Bytes, u64)>>;

/// Files in memory, for tests and embedding. Lost when the process ends.
///
/// Writes and reads are one hash lookup each, so a store that has taken millions of files
/// still writes at the same cost; a page of a listing sorts only the owner's keys past the
/// cursor, so it costs time in proportion to the owner's file count.
#[derive(Debug, Default)]
pub struct MemoryFileStore {
    owners: Mutex<Owners>,
    clock: Clock,
}

impl MemoryFileStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same store dating its files by `clock` (default: the system's).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, Owners> {
        // A panic while holding the lock cannot leave the map half-updated: every
        // operation is one map call.
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl FileStore for MemoryFileStore {
    async fn put(&self, key: &FileKey, bytes: Bytes) -> Result<(), StoreError> {
        self.owners()
            .entry(key.owner().clone())
            .or_default()
            .insert(key.clone(), (bytes, self.clock.now()));
        Ok(())
    }

    async fn get(&self, key: &FileKey) -> Result<Option<Bytes>, StoreError> {
        let owners = self.owners();
        let file = owners.get(key.owner()).and_then(|files| files.get(key));
        Ok(file.map(|(bytes, _)| bytes.clone()))
    }

    async fn delete(&self, key: &FileKey) -> Result<bool, StoreError> {
        let mut owners = self.owners();
        let removed = owners
            .get_mut(key.owner())
            .is_some_and(|files| files.remove(key).is_some());
        Ok(removed)
    }

    async fn list(
        &self,
        owner: &UserId,
        after: Option<&FileCursor>,
        limit: usize,
    ) -> Result<FilePage, StoreError> {
        let owners = self.owners();
        let Some(files) = owners.get(owner) else {
            return Ok(FilePage::default());
        };
        let mut places: Vec<(FileCursor, u64)> = files
            .iter()
            .map(|(key, (bytes, created))| {
                (FileCursor::new(*created, key.clone()), bytes.len() as u64)
            })
            .filter(|(place, _)| after.is_none_or(|after| place > after))
            .collect();
        // Only the first `limit` (and whether one more exists) need sorting.
        let has_more = places.len() > limit;
        if has_more {
            places.select_nth_unstable(limit);
            places.truncate(limit);
        }
        places.sort_unstable();
        let page = places
            .into_iter()
            .map(|(place, size)| FileMeta::new(place.key().clone(), size, place.created()))
            .collect();
        Ok(FilePage::new(page, has_more))
    }

    async fn usage(&self, owner: &UserId) -> Result<Usage, StoreError> {
        let owners = self.owners();
        let files = owners.get(owner);
        let bytes = files.map_or(0, |f| f.values().map(|(b, _)| b.len() as u64).sum());
        Ok(Usage::new(bytes, files.map_or(0, |f| f.len() as u64)))
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[tokio::test]
    async fn pages_through_one_owners_files_newest_first() {
        let store = MemoryFileStore::new();
        let (alice, bob) = (UserId::new("alice").unwrap(), UserId::new("bob").unwrap());
        let mut keys = Vec::new();
        for i in 0..7 {
            let key = FileKey::new(&alice, Uuid::new_v4(), &format!("{i}.png"));
            store.put(&key, Bytes::from(vec![0; i])).await.unwrap();
            keys.push(key);
            let other = FileKey::new(&bob, Uuid::new_v4(), "x.png");
            store.put(&other, Bytes::new()).await.unwrap();
        }
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store.list(&alice, after.as_ref(), 3).await.unwrap();
            assert!(page.files.len() <= 3);
            seen.extend(page.files.iter().map(FileCursor::of));
            after = page.next();
            if after.is_none() {
                break;
            }
        }
        let mut expected = seen.clone();
        expected.sort();
        assert_eq!(seen, expected, "newest first, then by key");
        let mut listed: Vec<FileKey> = seen.iter().map(|c| c.key().clone()).collect();
        listed.sort();
        keys.sort();
        assert_eq!(listed, keys, "every file once");
        assert!(store.list(&alice, None, 0).await.unwrap().has_more);
        assert!(store.delete(&keys[0]).await.unwrap());
        assert!(!store.delete(&keys[0]).await.unwrap());
        assert_eq!(store.get(&keys[0]).await.unwrap(), None);
        let stranger = UserId::new("carol").unwrap();
        assert_eq!(
            store.list(&stranger, None, 10).await.unwrap(),
            FilePage::default()
        );
    }
}
