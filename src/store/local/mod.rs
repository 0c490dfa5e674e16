mod direct;
mod writer;

pub(crate) use direct::BLOCK as DIRECT_ALIGN;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::Bound;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

use self::writer::Writer;
use super::{FileCursor, FileKey, FileMeta, FilePage, FileStore, StoreError, Usage};
use crate::auth::UserId;

/// Files in a local directory, one file per key at `{root}/{key}`.
///
/// A write is answered once its data is durable and it is at its key, and a crash leaves
/// either the old file or the new one: writes go to a temporary file in the same directory
/// (unnamed on Linux), are flushed, put at the key, answered, and flushed again (a power cut
/// before that second flush may lose the newest keys, never leave one over partial data).
/// One thread does every write, taking all that wait into one batch with two flushes in all
/// (see `writer`). A file of at least 256 KiB is written past the page cache (`O_DIRECT`)
/// where the file system takes it: it is flushed before its answer anyway, and this spares
/// copying it into new page-cache pages first (a read of it soon after comes from the
/// disk). Every path is checked on its own, whatever the caller checked: only plain
/// components, and the canonical parent directory must lie under the canonical root (for
/// writes, checked once per directory and process; a read on Linux is resolved beneath the
/// root by the kernel, in the open itself). A `LocalFileStore` cannot be made to touch a
/// file outside its root.
///
/// An index of every file (key, size, time) is read from the directory once, at
/// [`open`](Self::open), and kept up to date by this store's own writes: a page of a listing
/// costs time in proportion to the page, and an owner's usage is one lookup. The directory
/// belongs to one process.
///
/// With a [free-space floor](Self::min_free_bytes), writes that would leave less free space
/// on the volume than the floor are refused ([`StoreError::no_space`], `507`), so a ledger
/// on the same volume always has room to record money.
#[derive(Clone, Debug)]
pub struct LocalFileStore {
    root: PathBuf,
    /// The root, open: reads resolve keys beneath it (see [`Self::open_file`]).
    root_dir: Arc<std::fs::File>,
    index: Arc<Mutex<Index>>,
    writer: Writer,
    min_free: u64,
    free: Arc<FreeSpace>,
}

/// The volume's free space as last read (and when), less what was written since: read from
/// the volume at most every [`FREE_SPACE_TTL`] instead of once per write. `None` until the
/// first check.
type FreeSpace = Mutex<Option<(Instant, u64)>>;

/// How old the free-space figure may get. What is written meanwhile is subtracted from it,
/// so only other writers on the volume go unseen for this long.
const FREE_SPACE_TTL: Duration = Duration::from_millis(500);

/// Every stored file, by owner: by key for writes, in list order for pages.
#[derive(Debug, Default)]
struct Index {
    owners: HashMap<UserId, Owned>,
}

#[derive(Debug, Default)]
struct Owned {
    /// Size and time by key.
    files: HashMap<FileKey, (u64, u64)>,
    /// The same files, newest first: a page is a range of it.
    listed: BTreeMap<FileCursor, u64>,
    bytes: u64,
}

impl Index {
    fn insert(&mut self, key: FileKey, size: u64, created: u64) {
        let owned = self.owners.entry(key.owner().clone()).or_default();
        let place = FileCursor::new(created, key.clone());
        if let Some((old, old_created)) = owned.files.insert(key.clone(), (size, created)) {
            owned.bytes = owned.bytes.saturating_sub(old);
            owned.listed.remove(&FileCursor::new(old_created, key));
        }
        owned.listed.insert(place, size);
        owned.bytes = owned.bytes.saturating_add(size);
    }

    fn remove(&mut self, key: &FileKey) {
        if let Some(owned) = self.owners.get_mut(key.owner()) {
            if let Some((size, created)) = owned.files.remove(key) {
                owned.bytes = owned.bytes.saturating_sub(size);
                owned.listed.remove(&FileCursor::new(created, key.clone()));
            }
        }
    }
}

impl LocalFileStore {
    /// A store rooted at `root`, which is created if missing; its files are indexed, and
    /// temporary files left by a crash mid-write are removed.
    pub fn open(root: impl AsRef<Path>) -> io::Result<Self> {
        std::fs::create_dir_all(root.as_ref())?;
        let root = root.as_ref().canonicalize()?;
        let index = Arc::new(Mutex::new(index_of(&root)?));
        Ok(LocalFileStore {
            writer: Writer::start(root.clone(), index.clone())?,
            root_dir: Arc::new(std::fs::File::open(&root)?),
            root,
            index,
            min_free: 0,
            free: Arc::new(Mutex::new(None)),
        })
    }

    /// Refuses writes that would leave less than `bytes` free on the volume (default 0:
    /// only a full volume refuses).
    pub fn min_free_bytes(mut self, bytes: u64) -> Self {
        self.min_free = bytes;
        self
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        lock_index(&self.index)
    }

    /// `Err(no_space)` when writing `adding` bytes would leave less than the floor free; a
    /// `write` takes them from the figure until the volume is asked again.
    fn check_space(&self, adding: u64, write: bool) -> Result<(), StoreError> {
        if self.min_free == 0 {
            return Ok(());
        }
        // Held across the read of the volume: concurrent checks wait for one read.
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let (read, bytes) = match *free {
            Some((read, bytes)) if read.elapsed() < FREE_SPACE_TTL => (read, bytes),
            _ => {
                let stat = rustix::fs::statvfs(&self.root)
                    .map_err(|e| StoreError::new(io::Error::from(e)))?;
                (Instant::now(), stat.f_bavail.saturating_mul(stat.f_frsize))
            }
        };
        if bytes < self.min_free.saturating_add(adding) {
            *free = Some((read, bytes));
            tracing::error!(
                free = bytes,
                floor = self.min_free,
                adding,
                "the file volume is under its free-space floor; writes refused"
            );
            return Err(StoreError::no_space());
        }
        // An admitted write's bytes are taken from the figure (one that then fails makes the
        // next checks stricter for at most one TTL).
        let left = if write {
            bytes.saturating_sub(adding)
        } else {
            bytes
        };
        *free = Some((read, left));
        Ok(())
    }

    /// The root directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of `key` if it is made of plain components (no `..`, no root, no empty or
    /// `.` segment), without looking at the disk.
    fn plain_path(&self, key: &str) -> io::Result<PathBuf> {
        let relative = Path::new(key);
        let plain = key
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains(['\\', '\0']))
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(escape());
        }
        Ok(self.root.join(relative))
    }

    /// The path of `key`, or an error if it could leave the root (also through a symlinked
    /// directory).
    fn path_of(&self, key: &str) -> io::Result<PathBuf> {
        self.checked(self.plain_path(key)?)
    }

    /// `path` (plain, under the root lexically) once its canonical parent is found under the
    /// root too; a missing parent passes, since it holds no file.
    fn checked(&self, path: PathBuf) -> io::Result<PathBuf> {
        let parent = path.parent().ok_or_else(escape)?;
        match under_root(&self.root, parent) {
            Ok(()) => Ok(path),
            // A missing parent holds no file; the caller sees "not found".
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(path),
            Err(e) => Err(e),
        }
    }

    /// Opens the file of `key` for reading; `None` when there is none.
    ///
    /// On Linux the kernel resolves the key beneath the open root in one `openat2`
    /// (`RESOLVE_BENEATH`): no step of it may leave the root, symlinks included, and nothing
    /// can change between a check and the open. That is one system call where checking the
    /// canonical parent first takes one per component of the path. Whatever it refuses or
    /// cannot do (an absolute symlink back into the root, a kernel without `openat2`) is
    /// decided by that check instead, so both ways allow the same files.
    fn open_file(&self, key: &str) -> io::Result<Option<std::fs::File>> {
        let path = self.plain_path(key)?;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use rustix::fs::{Mode, OFlags, ResolveFlags};
            let flags = OFlags::RDONLY | OFlags::CLOEXEC;
            let beneath = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&*self.root_dir, key, flags, Mode::empty(), beneath) {
                Ok(fd) => return Ok(Some(std::fs::File::from(fd))),
                Err(rustix::io::Errno::NOENT) => return Ok(None),
                Err(_) => {}
            }
        }
        let path = self.checked(path)?;
        match std::fs::File::open(path) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn get_sync(&self, key: &FileKey) -> io::Result<Option<Bytes>> {
        let Some(mut file) = self.open_file(key.as_str())? else {
            return Ok(None);
        };
        // Sized by the file's length (std asks for it), as `fs::read` is.
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut file, &mut bytes)?;
        Ok(Some(Bytes::from(bytes)))
    }

    fn delete_sync(&self, key: &FileKey) -> io::Result<bool> {
        let path = self.path_of(key.as_str())?;
        let removed = match std::fs::remove_file(path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        self.index().remove(key);
        Ok(removed)
    }

    fn list_indexed(&self, owner: &UserId, after: Option<&FileCursor>, limit: usize) -> FilePage {
        let index = self.index();
        let Some(owned) = index.owners.get(owner) else {
            return FilePage::default();
        };
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut page = owned.listed.range((from, Bound::Unbounded));
        let files = page
            .by_ref()
            .take(limit)
            .map(|(place, size)| FileMeta::new(place.key().clone(), *size, place.created()))
            .collect();
        FilePage {
            files,
            has_more: page.next().is_some(),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&LocalFileStore) -> io::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(StoreError::new)?
            .map_err(StoreError::new)
    }
}

/// Every update is one map call, so a poisoned lock still holds a whole index.
fn lock_index(index: &Mutex<Index>) -> MutexGuard<'_, Index> {
    index.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `dir` (existing) lies under `root` (canonical) once every symlink is resolved.
fn under_root(root: &Path, dir: &Path) -> io::Result<()> {
    if dir.canonicalize()?.starts_with(root) {
        Ok(())
    } else {
        Err(escape())
    }
}

/// The refusal of a path outside the root. The key is not in the message: it is client input.
fn escape() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "path would leave the store root",
    )
}

#[async_trait]
impl FileStore for LocalFileStore {
    async fn put(&self, key: &FileKey, bytes: Bytes) -> Result<(), StoreError> {
        self.check_space(bytes.len() as u64, true)?;
        let path = self.plain_path(key.as_str()).map_err(StoreError::new)?;
        // Indexed once durable: on the answer, or by the writer when this caller has gone.
        self.writer
            .put(key.clone(), path, bytes)
            .await
            .map_err(StoreError::new)
    }

    async fn get(&self, key: &FileKey) -> Result<Option<Bytes>, StoreError> {
        let key = key.clone();
        self.blocking(move |s| s.get_sync(&key)).await
    }

    async fn delete(&self, key: &FileKey) -> Result<bool, StoreError> {
        let key = key.clone();
        self.blocking(move |s| s.delete_sync(&key)).await
    }

    async fn list(
        &self,
        owner: &UserId,
        after: Option<&FileCursor>,
        limit: usize,
    ) -> Result<FilePage, StoreError> {
        Ok(self.list_indexed(owner, after, limit))
    }

    async fn usage(&self, owner: &UserId) -> Result<Usage, StoreError> {
        let index = self.index();
        Ok(index.owners.get(owner).map_or(Usage::default(), |o| {
            Usage::new(o.bytes, o.files.len() as u64)
        }))
    }

    async fn admits(&self, _owner: &UserId, adding: Usage) -> Result<(), StoreError> {
        self.check_space(adding.bytes, false)
    }
}

/// Reads every stored file's key, size and time under `root`, removing temporary files a
/// crash left behind.
fn index_of(root: &Path) -> io::Result<Index> {
    let mut index = Index::default();
    let owners = match std::fs::read_dir(root.join("files")) {
        Ok(owners) => owners,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(index),
        Err(e) => return Err(e),
    };
    for owner in owners {
        let owner = owner?;
        if !owner.file_type()?.is_dir() {
            continue;
        }
        let Some(owner_name) = owner.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        for entry in std::fs::read_dir(owner.path())? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with(".tmp-") {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            // Anything not written by `put` does not parse as a key and is not listed.
            let Some(key) = FileKey::parse(&format!("files/{owner_name}/{name}")) else {
                continue;
            };
            let meta = entry.metadata()?;
            if !meta.is_file() {
                continue;
            }
            let created = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            index.insert(key, meta.len(), created);
        }
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    /// A store in a new directory, and alice.
    fn fresh(name: &str) -> (PathBuf, LocalFileStore, UserId) {
        let dir = std::env::temp_dir().join(format!("igw-{name}-{}", Uuid::new_v4()));
        let store = LocalFileStore::open(&dir).unwrap();
        (dir, store, UserId::new("alice").unwrap())
    }

    /// How many temporary files `dir` holds.
    fn temporaries(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".tmp-")
            })
            .count()
    }

    #[test]
    fn refuses_paths_that_leave_the_root() {
        let (dir, store, _) = fresh("local");
        for raw in [
            "../x",
            "/etc/passwd",
            "files/../../x",
            "a/./b",
            "files/a\0b",
        ] {
            assert!(store.path_of(raw).is_err(), "{raw:?}");
        }
        // A symlinked directory pointing outside is refused by the canonical-prefix check.
        #[cfg(unix)]
        {
            std::fs::create_dir_all(dir.join("files")).unwrap();
            std::os::unix::fs::symlink("/tmp", dir.join("files/evil")).unwrap();
            assert!(store.path_of("files/evil/x").is_err());
            // The writer checks the directory itself before its first write there.
            let evil = FileKey::parse("files/evil/0c3f3c8e-5d6a-4b7e-9a31-2f1f1c9d8e7a_x.png");
            let put = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(store.put(&evil.unwrap(), Bytes::from_static(b"x")));
            assert!(put.is_err());
            // Refused before any file was made there (the check comes before the write).
            assert!(!Path::new("/tmp/0c3f3c8e-5d6a-4b7e-9a31-2f1f1c9d8e7a_x.png").exists());
        }
        assert!(store.path_of("files/alice/x").is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Reads resolve beneath the root in the kernel where they can, and by the canonical
    /// check where that refuses: both must allow the same files.
    #[cfg(unix)]
    #[tokio::test]
    async fn reads_follow_symlinks_only_while_they_stay_under_the_root() {
        use std::os::unix::fs::symlink;
        let (dir, store, alice) = fresh("beneath");
        let name = format!("{}_x.png", Uuid::new_v4());
        let key = |owner: &str| FileKey::parse(&format!("files/{owner}/{name}")).unwrap();
        store
            .put(
                &FileKey::parse(&format!("files/{alice}/{name}")).unwrap(),
                Bytes::from_static(b"inside"),
            )
            .await
            .unwrap();
        // The same name outside the root, where an escaping link would lead.
        let outside = std::env::temp_dir().join(format!("igw-outside-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join(&name), b"outside").unwrap();
        let files = dir.join("files");
        symlink(alice.as_str(), files.join("relative")).unwrap();
        symlink(files.join(alice.to_string()), files.join("absolute")).unwrap();
        symlink(&outside, files.join("away")).unwrap();
        symlink(
            "../../../../../../../../..".to_string() + outside.to_str().unwrap(),
            files.join("up"),
        )
        .unwrap();

        for owner in [alice.as_str(), "relative", "absolute"] {
            let read = store.get(&key(owner)).await.unwrap();
            assert_eq!(read.as_deref(), Some(&b"inside"[..]), "{owner}");
        }
        for owner in ["away", "up"] {
            assert!(store.get(&key(owner)).await.is_err(), "{owner}");
        }
        assert_eq!(store.get(&key("nobody")).await.unwrap(), None);
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::remove_dir_all(outside).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_batches_and_each_is_answered_with_its_own_outcome() {
        let (dir, store, alice) = fresh("batch");
        let puts = (0..200u8).map(|i| {
            let store = store.clone();
            let key = FileKey::new(&alice, Uuid::new_v4(), "x.png");
            tokio::spawn(async move {
                store
                    .put(&key, Bytes::from(vec![i; 1 + i as usize]))
                    .await
                    .map(|()| (key, i))
            })
        });
        for put in futures_util::future::join_all(puts).await {
            let (key, i) = put.unwrap().unwrap();
            let stored = store.get(&key).await.unwrap().unwrap();
            assert_eq!(stored, vec![i; 1 + i as usize]);
        }
        assert_eq!(store.usage(&alice).await.unwrap().files, 200);
        assert_eq!(
            temporaries(&dir.join("files/alice")),
            0,
            "no temporary file is left"
        );
        // A directory removed by hand after its first write is made again by the next one.
        std::fs::remove_dir_all(dir.join("files/alice")).unwrap();
        let again = FileKey::new(&alice, Uuid::new_v4(), "x.png");
        store
            .put(&again, Bytes::from_static(b"again"))
            .await
            .unwrap();
        assert_eq!(store.get(&again).await.unwrap().unwrap(), "again");
        assert_eq!(temporaries(&dir.join("files/alice")), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn the_free_space_floor_counts_what_was_written_since_the_volume_was_read() {
        let (dir, store, alice) = fresh("floor");
        let stat = rustix::fs::statvfs(&dir).unwrap();
        let free = stat.f_bavail * stat.f_frsize;
        // 40 MiB above the floor: one 25 MiB write fits, a second would pass the floor. The
        // volume is read once, at the first check; the second write is refused by that figure
        // less the first write, whether or not the disk shows it yet. (Other writers on the
        // volume would have to move it by 10 MiB between two reads to change an outcome.)
        let mib = 1024 * 1024;
        let store = store.min_free_bytes(free - 40 * mib);
        let big = Bytes::from(vec![1u8; 25 * mib as usize]);
        let first = FileKey::new(&alice, Uuid::new_v4(), "a.png");
        store.put(&first, big.clone()).await.unwrap();
        let second = FileKey::new(&alice, Uuid::new_v4(), "b.png");
        let refused = store.put(&second, big).await.unwrap_err();
        assert_eq!(refused.to_string(), StoreError::no_space().to_string());
        assert!(store.get(&second).await.unwrap().is_none());
        // A refused write takes nothing, and an admission check takes nothing: 5 MiB still
        // fits, 25 MiB does not.
        assert!(store.admits(&alice, Usage::new(5 * mib, 1)).await.is_ok());
        assert!(store.admits(&alice, Usage::new(5 * mib, 1)).await.is_ok());
        assert!(store.admits(&alice, Usage::new(25 * mib, 1)).await.is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_whose_caller_left_is_finished_and_indexed() {
        let (dir, store, alice) = fresh("left");
        let key = FileKey::new(&alice, Uuid::new_v4(), "big.png");
        let size = 512 * 1024;
        {
            let put = store.put(&key, Bytes::from(vec![7u8; size]));
            tokio::pin!(put);
            assert!(futures_util::poll!(put.as_mut()).is_pending());
        }
        for _ in 0..500 {
            if store.usage(&alice).await.unwrap().files == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            store.usage(&alice).await.unwrap(),
            Usage::new(size as u64, 1)
        );
        assert_eq!(
            store.list(&alice, None, 10).await.unwrap().files[0].key,
            key
        );
        assert_eq!(store.get(&key).await.unwrap().unwrap().len(), size);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn the_index_is_rebuilt_at_open_and_pages_run_newest_first() {
        let dir = std::env::temp_dir().join(format!("igw-index-{}", Uuid::new_v4()));
        let alice = UserId::new("alice").unwrap();
        let mut keys = Vec::new();
        {
            let store = LocalFileStore::open(&dir).unwrap();
            for i in 0..6u8 {
                let key = FileKey::new(&alice, Uuid::new_v4(), "x.png");
                store.put(&key, Bytes::from(vec![i; 10])).await.unwrap();
                keys.push(key);
            }
            assert!(store.delete(&keys.remove(0)).await.unwrap());
        }
        // Stored one minute apart, the last first; the index reads the times back at open.
        for (i, key) in keys.iter().enumerate() {
            let at = UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 + 60 * i as u64);
            let file = std::fs::File::options()
                .write(true)
                .open(dir.join(key.as_str()))
                .unwrap();
            file.set_modified(at).unwrap();
        }
        keys.reverse();
        // A crash mid-write leaves a temporary file; it is neither listed nor kept.
        let temp = dir.join("files/alice/.tmp-leftover");
        std::fs::write(&temp, b"half").unwrap();
        let store = LocalFileStore::open(&dir).unwrap();
        assert!(!temp.exists());
        assert_eq!(store.usage(&alice).await.unwrap(), Usage::new(50, 5));
        let first = store.list(&alice, None, 2).await.unwrap();
        let cursor = first.next().unwrap();
        // Files deleted (the cursor's own included) and stored between two pages move
        // nothing on the pages that follow.
        assert!(store.delete(cursor.key()).await.unwrap());
        let newer = FileKey::new(&alice, Uuid::new_v4(), "new.png");
        store.put(&newer, Bytes::from_static(b"new")).await.unwrap();
        let second = store.list(&alice, Some(&cursor), 2).await.unwrap();
        let third = store.list(&alice, second.next().as_ref(), 2).await.unwrap();
        assert!(third.next().is_none());
        let listed: Vec<FileKey> = [first, second, third]
            .iter()
            .flat_map(|page| page.files.iter().map(|f| f.key.clone()))
            .collect();
        assert_eq!(listed, keys);
        let now = store.list(&alice, None, 1).await.unwrap();
        assert_eq!(now.files[0].key, newer, "the newest file comes first");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
