//! Per-owner storage quotas, over any [`FileStore`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

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

    pub(crate) fn allows(&self, usage: Usage) -> bool {
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
/// writes of one owner cannot pass the check together. That count is this process's; each
/// write then goes through the inner store's [`put_within`](FileStore::put_within), which a
/// store shared by several processes ([`S3FileStore`](crate::store::S3FileStore)) answers
/// with one check and count for all of them.
///
/// The inner store's figure and the writes in flight are read at different moments, so a
/// write can be in both (recorded by the store, its `put` not yet returned) or, finishing
/// while the figure is read, in neither. The second is closed by counting every write that
/// ended during the read as well; the first only ever errs towards a refusal, so a write
/// that would be refused while others of its owner are in flight waits for them and is
/// decided again: a refusal is only given on a figure no write was racing.
#[derive(Clone)]
pub struct QuotaStore {
    inner: Arc<dyn FileStore>,
    quota: Quota,
    owners: Arc<Mutex<HashMap<UserId, Owner>>>,
    /// The view of [`owed`](Self::owed): writes counted, never refused for the quota.
    owed: bool,
}

/// One owner's writes as this process sees them, kept while any is in flight or checked.
#[derive(Default)]
struct Owner {
    /// Admitted and not yet ended.
    in_flight: Usage,
    /// Every write that ended since the entry was made, summed: what a check sees grow
    /// while it reads the inner store ended during that read.
    ended: Usage,
    /// Checks reading the inner store's figure or waiting for a write to end.
    checking: usize,
    /// Told, while a check is on, when one of this owner's writes ends: only this owner's
    /// writes wake (and so re-check) a waiting check.
    ended_now: Arc<Notify>,
}

impl Owner {
    fn idle(&self) -> bool {
        self.in_flight == Usage::default() && self.checking == 0
    }
}

/// How often a check is made again because writes of its owner ended while it read, before
/// it is decided on the conservative count.
const MAX_RECHECKS: usize = 16;

impl QuotaStore {
    /// `inner`, with `quota` per owner.
    pub fn new(inner: Arc<dyn FileStore>, quota: Quota) -> Self {
        QuotaStore {
            inner,
            quota,
            owners: Arc::default(),
            owed: false,
        }
    }

    /// The same store for writes already owed (the outputs of work that ran, whose room
    /// was checked before it began): their puts are counted against their owner while in
    /// flight, so other writes' checks see them, but never refused for the quota; only the
    /// inner store can refuse them (a full volume).
    pub fn owed(&self) -> Arc<dyn FileStore> {
        Arc::new(QuotaStore {
            owed: true,
            ..self.clone()
        })
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Owner>> {
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `adding` as being written for `owner`, or refuses it (never, for the
    /// [`owed`](Self::owed) view).
    async fn reserve(&self, owner: &UserId, adding: Usage) -> Result<Reserved<'_>, StoreError> {
        if self.owed {
            let mut owners = self.owners();
            let entry = owners.entry(owner.clone()).or_default();
            entry.in_flight = entry.in_flight.plus(adding);
            return Ok(Reserved {
                store: self,
                owner: owner.clone(),
                adding,
            });
        }
        let mut rechecks = 0;
        loop {
            let check = Checking::start(self, owner);
            let stored = self.inner.usage(owner).await?;
            let ended = check.ended_now.notified();
            tokio::pin!(ended);
            {
                let mut owners = self.owners();
                // Registered under the lock an ending write notifies under: an end after this
                // decision wakes the check.
                ended.as_mut().enable();
                let entry = owners.entry(owner.clone()).or_default();
                let ended_meanwhile = entry.ended.minus(check.ended_before);
                let used = stored.plus(entry.in_flight).plus(ended_meanwhile);
                if self.quota.allows(used.plus(adding)) {
                    entry.in_flight = entry.in_flight.plus(adding);
                    drop(owners);
                    return Ok(Reserved {
                        store: self,
                        owner: owner.clone(),
                        adding,
                    });
                }
                let racing = entry.in_flight != Usage::default();
                let raced = ended_meanwhile != Usage::default();
                if (!racing && !raced) || rechecks == MAX_RECHECKS {
                    return Err(StoreError::quota_exceeded(used, adding, self.quota));
                }
                rechecks += 1;
                if !racing {
                    // Only the writes that ended during the read were in doubt: read again.
                    continue;
                }
            }
            // The check stays on while it waits, so the writes in flight tell it when they end.
            ended.await;
        }
    }
}

/// A check of one owner's quota, from its read of the inner store's figure until it is
/// decided or cancelled: keeps the owner's entry (and so the sum of ended writes it compares
/// against, and the notice it waits on) alive.
struct Checking<'a> {
    store: &'a QuotaStore,
    owner: UserId,
    ended_before: Usage,
    ended_now: Arc<Notify>,
}

impl<'a> Checking<'a> {
    fn start(store: &'a QuotaStore, owner: &UserId) -> Self {
        let mut owners = store.owners();
        let entry = owners.entry(owner.clone()).or_default();
        entry.checking += 1;
        Checking {
            store,
            owner: owner.clone(),
            ended_before: entry.ended,
            ended_now: entry.ended_now.clone(),
        }
    }
}

impl Drop for Checking<'_> {
    fn drop(&mut self) {
        let mut owners = self.store.owners();
        if let Some(entry) = owners.get_mut(&self.owner) {
            entry.checking = entry.checking.saturating_sub(1);
            if entry.idle() {
                owners.remove(&self.owner);
            }
        }
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
        let mut owners = self.store.owners();
        if let Some(entry) = owners.get_mut(&self.owner) {
            entry.in_flight = entry.in_flight.minus(self.adding);
            entry.ended = entry.ended.plus(self.adding);
            if entry.checking > 0 {
                entry.ended_now.notify_waiters();
            }
            if entry.idle() {
                owners.remove(&self.owner);
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
        if self.owed {
            return self.inner.put(key, bytes).await;
        }
        // The inner store checks again where it is shared: this process's count cannot see
        // another's writes in flight.
        self.inner.put_within(key, bytes, self.quota).await
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
    use std::time::Duration;

    use tokio::task::JoinHandle;

    use super::*;
    use crate::store::MemoryFileStore;

    #[tokio::test]
    async fn owed_writes_pass_the_quota_and_count_against_the_next() {
        let store = QuotaStore::new(Arc::new(MemoryFileStore::new()), Quota::new(10, 0));
        let alice = UserId::new("alice").unwrap();
        let key = |name: &str| FileKey::new(&alice, uuid::Uuid::new_v4(), name);
        let owed = store.owed();
        owed.admits(&alice, Usage::new(100, 1)).await.unwrap();
        owed.put(&key("out"), Bytes::from_static(b"0123456789abc"))
            .await
            .unwrap();
        assert_eq!(store.usage(&alice).await.unwrap(), Usage::new(13, 1));
        let refused = store.put(&key("up"), Bytes::from_static(b"1")).await;
        assert!(refused.unwrap_err().to_string().contains("quota"));
    }

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

    /// The memory store with delays: before a put is recorded, after it is recorded (before
    /// `put` returns; only for files named `held` when set), and between reading the usage
    /// and answering it.
    struct Slow {
        inner: MemoryFileStore,
        before_record: Duration,
        after_record: Duration,
        held: Option<&'static str>,
        usage_answer: Duration,
    }

    #[async_trait]
    impl FileStore for Slow {
        async fn put(&self, key: &FileKey, bytes: Bytes) -> Result<(), StoreError> {
            tokio::time::sleep(self.before_record).await;
            self.inner.put(key, bytes).await?;
            if self.held.is_none_or(|name| key.as_str().ends_with(name)) {
                tokio::time::sleep(self.after_record).await;
            }
            Ok(())
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
            let usage = self.inner.usage(owner).await;
            tokio::time::sleep(self.usage_answer).await;
            usage
        }
    }

    fn slow(before_record: u64, after_record: u64, usage_answer: u64) -> Arc<Slow> {
        slow_holding(before_record, after_record, None, usage_answer)
    }

    /// A store that records at once and holds only files named `*_held.png` for 1 s after
    /// recording them: the write in doubt, while every other write ends at once.
    fn holding_one() -> Arc<Slow> {
        slow_holding(0, 1000, Some("_held.png"), 0)
    }

    fn slow_holding(
        before_record: u64,
        after_record: u64,
        held: Option<&'static str>,
        usage_answer: u64,
    ) -> Arc<Slow> {
        Arc::new(Slow {
            inner: MemoryFileStore::new(),
            before_record: Duration::from_millis(before_record),
            after_record: Duration::from_millis(after_record),
            held,
            usage_answer: Duration::from_millis(usage_answer),
        })
    }

    fn put_later(
        store: &QuotaStore,
        owner: &UserId,
        after_ms: u64,
    ) -> JoinHandle<Result<(), StoreError>> {
        put_file_later(store, owner, "x.png", b"1234", after_ms)
    }

    /// `bytes` as `owner`'s file `name`, written from a task of its own after `after_ms`.
    fn put_file_later(
        store: &QuotaStore,
        owner: &UserId,
        name: &str,
        bytes: &'static [u8],
        after_ms: u64,
    ) -> JoinHandle<Result<(), StoreError>> {
        let (store, key) = (
            store.clone(),
            FileKey::new(owner, uuid::Uuid::new_v4(), name),
        );
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(after_ms)).await;
            // A check left waiting with nothing to wake it fails the test, not hangs it.
            let put = store.put(&key, Bytes::from_static(bytes));
            tokio::time::timeout(Duration::from_secs(60), put)
                .await
                .expect("the write was decided")
        })
    }

    /// A write the inner store has recorded but whose `put` has not returned is in the store's
    /// figure and in flight at once: a write that fits beside it is not refused for that.
    #[tokio::test(start_paused = true)]
    async fn a_write_recorded_but_not_returned_is_not_counted_twice() {
        let inner = slow(0, 300, 0);
        let store = QuotaStore::new(inner.clone(), Quota::new(0, 2));
        let alice = UserId::new("alice").unwrap();
        let first = put_later(&store, &alice, 0);
        let second = put_later(&store, &alice, 100);
        second
            .await
            .unwrap()
            .expect("two files fit in a quota of two");
        first.await.unwrap().unwrap();
        assert_eq!(inner.usage(&alice).await.unwrap(), Usage::new(8, 2));
        // At the quota, and nothing in flight: refused at once.
        let third = put_later(&store, &alice, 0).await.unwrap();
        assert!(third.unwrap_err().to_string().contains("quota"));
    }

    /// A write that ends while another check reads the store's figure is in neither the
    /// figure (read before it was recorded) nor in flight (ended before the check counts):
    /// it is counted all the same.
    #[tokio::test(start_paused = true)]
    async fn a_write_ending_during_a_check_is_counted() {
        let inner = slow(50, 0, 200);
        let store = QuotaStore::new(inner.clone(), Quota::new(0, 1));
        let alice = UserId::new("alice").unwrap();
        // The first is admitted at 200 ms and recorded at 250; the second reads the figure
        // from 100 to 300 ms, an empty one.
        let first = put_later(&store, &alice, 0);
        let second = put_later(&store, &alice, 100);
        first.await.unwrap().unwrap();
        let refused = second.await.unwrap().unwrap_err();
        assert!(refused.to_string().contains("quota"), "{refused}");
        assert_eq!(inner.usage(&alice).await.unwrap(), Usage::new(4, 1));
        assert!(store.owners().is_empty(), "no owner is kept once idle");
    }

    /// Many writers racing at a quota: exactly as many pass as fit, none is refused while
    /// there was room, and nothing is left counted.
    #[tokio::test(start_paused = true)]
    async fn racing_writers_fill_the_quota_exactly() {
        let inner = slow(30, 40, 20);
        let store = QuotaStore::new(inner.clone(), Quota::new(0, 5));
        let alice = UserId::new("alice").unwrap();
        let writers: Vec<_> = (0..20).map(|i| put_later(&store, &alice, i * 7)).collect();
        let mut passed = 0;
        for writer in writers {
            match writer.await.unwrap() {
                Ok(()) => passed += 1,
                Err(error) => assert!(error.to_string().contains("quota"), "{error}"),
            }
        }
        assert_eq!(passed, 5);
        assert_eq!(inner.usage(&alice).await.unwrap(), Usage::new(20, 5));
        assert!(store.owners().is_empty());
    }

    /// A check waiting for its owner's write is woken by that owner's writes only: a busy
    /// other owner does not spend its re-checks and turn it into a refusal.
    #[tokio::test(start_paused = true)]
    async fn other_owners_writes_do_not_wake_a_waiting_check() {
        let alice = UserId::new("alice").unwrap();
        let bob = UserId::new("bob").unwrap();
        let inner = holding_one();
        for i in 0..29 {
            let key = FileKey::new(&alice, uuid::Uuid::new_v4(), &format!("{i}.png"));
            inner
                .inner
                .put(&key, Bytes::from_static(b"1234"))
                .await
                .unwrap();
        }
        let store = QuotaStore::new(inner.clone(), Quota::new(0, 31));
        // Alice's 30th is recorded at once and returns after 1 s; her 31st, at 100 ms, is
        // counted with it twice (32 > 31) and waits. Meanwhile bob writes 30 files.
        let thirtieth = put_file_later(&store, &alice, "held.png", b"1234", 0);
        let thirty_first = put_later(&store, &alice, 100);
        let bobs: Vec<_> = (0..30)
            .map(|i| put_later(&store, &bob, 200 + i * 10))
            .collect();
        for put in bobs {
            put.await.unwrap().unwrap();
        }
        thirtieth.await.unwrap().unwrap();
        thirty_first
            .await
            .unwrap()
            .expect("31 files fit in a quota of 31");
        assert_eq!(inner.usage(&alice).await.unwrap().files, 31);
        assert!(store.owners().is_empty());
    }

    /// A check is decided again at most [`MAX_RECHECKS`] times: under a stream of its
    /// owner's writes it ends on the conservative count (a refusal) instead of waiting for
    /// the stream to stop. One wake fewer, and it waits for the write in doubt and passes.
    #[tokio::test(start_paused = true)]
    async fn a_check_woken_past_its_rechecks_is_refused_on_the_conservative_count() {
        let waits = |wakes| async move {
            let alice = UserId::new("alice").unwrap();
            let inner = holding_one();
            let store = QuotaStore::new(inner.clone(), Quota::new(8, 0));
            // 4 bytes recorded at once, returned after 1 s; 4 more fit (8 of 8) but are
            // counted with the first twice (12) and wait. Empty files of alice's end
            // meanwhile, each waking the waiting check once.
            let held = put_file_later(&store, &alice, "held.png", b"1234", 0);
            let waiting = put_later(&store, &alice, 100);
            let stream: Vec<_> = (0..wakes)
                .map(|i| put_file_later(&store, &alice, "empty.png", b"", 200 + i * 10))
                .collect();
            for put in stream {
                put.await.unwrap().unwrap();
            }
            let decided = waiting.await.unwrap();
            held.await.unwrap().unwrap();
            decided
        };
        let last = MAX_RECHECKS as u64 - 1;
        waits(last)
            .await
            .expect("woken 15 times, it still waits and passes");
        let refused = waits(last + 1).await.unwrap_err();
        assert!(refused.to_string().contains("quota"), "{refused}");
    }
}
