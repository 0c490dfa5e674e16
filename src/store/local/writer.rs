//! Group commit for files: one thread writes every file waiting for it and makes the whole
//! batch durable together, so concurrent edits share the flushes instead of paying two
//! fsyncs (file and directory) each.
//!
//! A batch is written to temporary files, flushed, and moved to the keys; callers are
//! answered then, and the next flush makes the keys durable. That flush is also the next
//! batch's first, so under load each batch costs one flush. A crash at any point leaves each
//! key either absent or whole: a file gets its key only once its data is on disk.
//!
//! An answered file outlives the process (its key is the kernel's from the answer on). A
//! power cut within one flush of the answer may lose the key, as it may lose the newest
//! commits of a SQLite database at `synchronous = NORMAL` (the generation records): the
//! file is then absent, never a key over partial data. Waiting for that second flush
//! before answering put a second flush on the path of every edit with an upload.
//!
//! On Linux a temporary file has no name (`O_TMPFILE`): it is linked at its key once
//! durable, so each file costs the directory one entry, not a temporary name added and
//! removed, and a crash leaves no temporary file behind. Where that is not supported (a
//! file system without `O_TMPFILE`, no `/proc`), the temporary file is named beside its key
//! and renamed there; one left behind by a crash is removed when the store opens.
//!
//! A large file (at least [`STAGE_ASIDE`]) is written to its temporary file on the blocking
//! pool, in parallel with others, and only handed to the thread for the flushes: writing
//! megabytes is the larger cost there, and one thread would serialize it. Such a file goes
//! to the disk direct, past the page cache, where the file system takes it (`direct`).
//!
//! On Linux a flush is one `syncfs` of the store's volume: one journal commit for the batch,
//! whatever its size. On a volume shared with other heavy writers that flush also writes
//! their data; give the data directory a volume of its own when that matters. Elsewhere
//! each file and each directory touched is fsynced.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use bytes::Bytes;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::Index;
use crate::store::FileKey;

/// The most files one batch takes.
const MAX_BATCH: usize = 64;
/// A batch stops taking files past this many bytes, so a run of large uploads does not make
/// the first caller's wait grow with the queue.
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
/// Files of at least this size are written on the blocking pool before they are queued:
/// those written direct, whose writes wait for the disk, so none waits on the thread.
const STAGE_ASIDE: usize = super::direct::DIRECT_FROM;

struct Put {
    key: FileKey,
    path: PathBuf,
    data: Data,
    reply: oneshot::Sender<io::Result<Placed>>,
}

/// What a queued put brings: bytes for the thread to write, or a temporary file (or its
/// failure) written already.
enum Data {
    Bytes(Bytes),
    Staged(io::Result<Written>),
}

/// A temporary file with its bytes written, not yet flushed.
struct Written {
    temp: Temp,
    file: File,
    size: u64,
}

/// Where a written file waits for its key.
enum Temp {
    /// Nowhere: an `O_TMPFILE` file, linked at its key through its handle.
    Unnamed,
    /// A temporary name beside the key.
    Named(PathBuf),
}

impl Written {
    /// Gives the file its key (replacing any file there).
    fn place(&self, path: &Path) -> io::Result<()> {
        match &self.temp {
            Temp::Named(temp) => std::fs::rename(temp, path),
            Temp::Unnamed => link(&self.file, path),
        }
    }

    /// Removes what is left of a file that will not get its key.
    fn discard(self) {
        self.temp.remove();
    }
}

impl Temp {
    /// Removes a named temporary file; an unnamed one is freed as its handle drops.
    fn remove(&self) {
        if let Temp::Named(temp) = self {
            let _ = std::fs::remove_file(temp);
        }
    }
}

/// The handle puts are queued on; the thread stops when every handle is dropped.
#[derive(Clone, Debug)]
pub(super) struct Writer {
    puts: mpsc::Sender<Put>,
    dirs: Arc<Dirs>,
}

/// The root, and the parents known to be real directories under it: each is checked once
/// per process.
#[derive(Debug)]
struct Dirs {
    root: PathBuf,
    checked: Mutex<HashSet<PathBuf>>,
    /// Whether temporary files can be unnamed here (tried once, at start).
    unnamed: bool,
}

/// Where a file at its key is recorded as its caller is answered.
type Indexed = Arc<Mutex<Index>>;

impl Writer {
    /// Starts the thread writing under `root` (canonical), recording each file in `index`
    /// once it is at its key.
    pub(super) fn start(root: PathBuf, index: Indexed) -> io::Result<Writer> {
        let volume = File::open(&root)?;
        let unnamed = unnamed_files_work(&root);
        let dirs = Arc::new(Dirs {
            root,
            checked: Mutex::new(HashSet::new()),
            unnamed,
        });
        let (puts, queue) = mpsc::channel();
        let shared = dirs.clone();
        std::thread::Builder::new()
            .name("file-writer".into())
            .spawn(move || run(&shared, &index, &volume, &queue))?;
        Ok(Writer { puts, dirs })
    }

    /// Writes `bytes` at `path` (lexically under the root; its parent is created and checked
    /// here), answering once its data is durable and it is at `path`.
    pub(super) async fn put(&self, key: FileKey, path: PathBuf, bytes: Bytes) -> io::Result<()> {
        let (reply, answer) = oneshot::channel();
        let stopped = || io::Error::other("the file writer stopped");
        if bytes.len() < STAGE_ASIDE {
            let put = Put {
                key,
                path,
                data: Data::Bytes(bytes),
                reply,
            };
            self.puts.send(put).map_err(|_| stopped())?;
        } else {
            // The task queues the file itself, so a caller that leaves while it is written
            // leaves no temporary file behind: the thread finishes (or removes) it.
            let (dirs, puts) = (self.dirs.clone(), self.puts.clone());
            drop(tokio::task::spawn_blocking(move || {
                let staged = stage(&dirs, &path, &bytes);
                let put = Put {
                    key,
                    path,
                    data: Data::Staged(staged),
                    reply,
                };
                if let Err(refused) = puts.send(put) {
                    if let Data::Staged(Ok(written)) = refused.0.data {
                        written.discard();
                    }
                }
            }));
        }
        let placed = answer.await.map_err(|_| stopped())??;
        // Indexed here, in the caller's poll: a wrapper that counts writes in flight (the
        // quota) stops counting this one in the same poll, so nothing counts it twice.
        drop(placed);
        Ok(())
    }
}

/// A file at its key, recorded in the index when this is dropped: by its caller on receipt,
/// or by the channel when the caller has gone, so a file is always listed and counted.
struct Placed {
    index: Indexed,
    key: FileKey,
    size: u64,
}

impl Drop for Placed {
    fn drop(&mut self) {
        let now = crate::clock::unix_now();
        super::lock_index(&self.index).insert(self.key.clone(), self.size, now);
    }
}

fn run(dirs: &Dirs, index: &Indexed, volume: &File, queue: &mpsc::Receiver<Put>) {
    // Files whose data the last flush made durable: they are put at their keys and
    // answered, and the next flush makes their keys durable together with the data of the
    // batch after them, so under load each batch costs one flush.
    let mut durable: Vec<Staged> = Vec::new();
    loop {
        let first = if durable.is_empty() {
            match queue.recv() {
                Ok(put) => Some(put),
                Err(_) => return, // every handle dropped, nothing pending
            }
        } else {
            None
        };
        let staged = gather(queue, first)
            .into_iter()
            .filter_map(|put| staged(dirs, put))
            .collect::<Vec<_>>();
        // Each file is answered once its data is durable and it is under its key; the flush
        // below makes the key itself durable (see the module's docs).
        let placed = answer(index, place_all(durable));
        durable = Vec::new();
        match flush(volume, &staged, &placed) {
            Ok(()) => durable = staged,
            Err(error) => {
                if !placed.is_empty() {
                    tracing::error!(%error, files = placed.len(), "flushing the keys of written files failed: a power cut may lose them");
                }
                fail(staged, &error);
            }
        }
    }
}

/// `first` (when given) and whatever else waits, up to a batch's limits.
fn gather(queue: &mpsc::Receiver<Put>, first: Option<Put>) -> Vec<Put> {
    let weight = |put: &Put| match &put.data {
        Data::Bytes(bytes) => bytes.len(),
        Data::Staged(_) => 0,
    };
    let mut size = first.as_ref().map_or(0, weight);
    let mut batch: Vec<Put> = first.into_iter().collect();
    while batch.len() < MAX_BATCH && size < MAX_BATCH_BYTES {
        match queue.try_recv() {
            Ok(put) => {
                size = size.saturating_add(weight(&put));
                batch.push(put);
            }
            Err(_) => break,
        }
    }
    batch
}

/// One file on its way: its temporary file, written and not yet under its key.
struct Staged {
    key: FileKey,
    path: PathBuf,
    reply: oneshot::Sender<io::Result<Placed>>,
    written: Written,
}

/// `put` written to its temporary file; a put that could not be is answered at once.
fn staged(dirs: &Dirs, put: Put) -> Option<Staged> {
    let Put {
        key,
        path,
        data,
        reply,
    } = put;
    let written = match data {
        Data::Bytes(bytes) => stage(dirs, &path, &bytes),
        Data::Staged(written) => written,
    };
    match written {
        Ok(written) => Some(Staged {
            key,
            path,
            reply,
            written,
        }),
        Err(error) => {
            let _ = reply.send(Err(error));
            None
        }
    }
}

/// Gives each file its key; one that fails is answered at once.
fn place_all(durable: Vec<Staged>) -> Vec<Staged> {
    durable
        .into_iter()
        .filter_map(|s| match s.written.place(&s.path) {
            Ok(()) => Some(s),
            Err(error) => {
                s.written.discard();
                let _ = s.reply.send(Err(error));
                None
            }
        })
        .collect()
}

/// Writes `bytes` to a new temporary file for `path`, not yet flushed.
fn stage(dirs: &Dirs, path: &Path, bytes: &[u8]) -> io::Result<Written> {
    let dir = path.parent().ok_or_else(super::escape)?;
    let known = dirs.known(dir);
    if !known {
        dirs.check(dir)?;
    }
    let created = match create_temp(dirs, dir) {
        // A directory checked earlier and removed since (by hand): made and checked again.
        Err(error) if known && error.kind() == io::ErrorKind::NotFound => {
            dirs.forget(dir);
            dirs.check(dir)?;
            create_temp(dirs, dir)
        }
        created => created,
    };
    let (temp, mut file) = created?;
    if let Err(error) = super::direct::write_all(&mut file, bytes) {
        temp.remove();
        return Err(error);
    }
    Ok(Written {
        temp,
        file,
        size: bytes.len() as u64,
    })
}

/// A new temporary file in `dir`: unnamed where that works, else named.
///
/// Unnamed files were tried once, at the root; a directory under it may still lie on a
/// file system without them (a mount inside the data directory), so one refused here is
/// made named instead. Any other cause (the directory gone) fails the named file the same
/// way, and that is the error returned.
fn create_temp(dirs: &Dirs, dir: &Path) -> io::Result<(Temp, File)> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if dirs.unnamed {
        if let Ok(file) = unnamed_in(dir) {
            return Ok((Temp::Unnamed, file));
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = dirs;
    let temp = dir.join(format!(".tmp-{}", Uuid::new_v4()));
    let file = File::create_new(&temp)?;
    Ok((Temp::Named(temp), file))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn unnamed_in(dir: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC;
    let fd = rustix::fs::open(dir, flags, Mode::from_raw_mode(0o644))?;
    Ok(File::from(fd))
}

/// Links the unnamed `file` at `path`, replacing any file there.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn link(file: &File, path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;

    use rustix::fs::{AtFlags, CWD};
    // The file's own entry under `/proc` names it without any privilege.
    let handle = format!("/proc/self/fd/{}", file.as_raw_fd());
    let link_at =
        |to: &Path| rustix::fs::linkat(CWD, handle.as_str(), CWD, to, AtFlags::SYMLINK_FOLLOW);
    match link_at(path) {
        Err(rustix::io::Errno::EXIST) => {
            // A link never replaces: linked beside the key, then renamed over it.
            let dir = path.parent().ok_or_else(super::escape)?;
            let temp = dir.join(format!(".tmp-{}", Uuid::new_v4()));
            link_at(&temp)?;
            std::fs::rename(&temp, path).inspect_err(|_| {
                let _ = std::fs::remove_file(&temp);
            })
        }
        linked => linked.map_err(io::Error::from),
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn link(_file: &File, _path: &Path) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Whether an unnamed file can be made and linked under `root` (not on every file system,
/// and not without `/proc`).
fn unnamed_files_work(root: &Path) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let probe = root.join(format!(".tmp-{}", Uuid::new_v4()));
        let linked = unnamed_in(root).and_then(|file| link(&file, &probe));
        let _ = std::fs::remove_file(&probe);
        linked.is_ok()
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = root;
        false
    }
}

impl Dirs {
    fn checked(&self) -> std::sync::MutexGuard<'_, HashSet<PathBuf>> {
        // Every update is one set call, so a poisoned lock still holds a whole set.
        self.checked.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn known(&self, dir: &Path) -> bool {
        self.checked().contains(dir)
    }

    fn forget(&self, dir: &Path) {
        self.checked().remove(dir);
    }

    /// Creates `dir` and checks that it lies under the root, symlinks resolved.
    fn check(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        super::under_root(&self.root, dir)?;
        self.checked().insert(dir.to_path_buf());
        Ok(())
    }
}

/// Makes durable the data of `staged` and the keys (paths) of `placed`.
fn flush(volume: &File, staged: &[Staged], placed: &[PathBuf]) -> io::Result<()> {
    if staged.is_empty() && placed.is_empty() {
        return Ok(());
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        rustix::fs::syncfs(volume).map_err(io::Error::from)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = volume;
        staged.iter().try_for_each(|s| s.written.file.sync_all())?;
        let mut dirs: Vec<&Path> = placed.iter().filter_map(|path| path.parent()).collect();
        dirs.sort_unstable();
        dirs.dedup();
        dirs.into_iter()
            .try_for_each(|dir| File::open(dir)?.sync_all())
    }
}

/// Answers every put of `placed`: each is under its key, and is indexed as its answer
/// drops. Returns their paths, for the flush that makes the keys durable.
fn answer(index: &Indexed, placed: Vec<Staged>) -> Vec<PathBuf> {
    placed
        .into_iter()
        .map(|s| {
            let file = Placed {
                index: index.clone(),
                key: s.key,
                size: s.written.size,
            };
            // A caller that stopped waiting (a cancelled request) gets nothing; its file
            // stays, like any write that finished after its client left, and is indexed as
            // the refused answer drops here.
            let _ = s.reply.send(Ok(file));
            s.path
        })
        .collect()
}

/// Answers every put of `batch` with `error`, removing its temporary file.
fn fail(batch: Vec<Staged>, error: &io::Error) {
    for s in batch {
        s.written.discard();
        let _ = s
            .reply
            .send(Err(io::Error::new(error.kind(), error.to_string())));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::path::Path;
    use std::sync::Mutex;

    use super::{stage, unnamed_files_work, Dirs, Temp};

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn either_kind_of_temporary_file_reaches_its_key_and_replaces_what_was_there() {
        let root = std::env::temp_dir().join(format!("igw-temp-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&root).unwrap();
        let root = root.canonicalize().unwrap();
        // This crate's CI runs on Linux, where the unnamed kind must be the one in use.
        let unnamed = unnamed_files_work(&root);
        assert_eq!(unnamed, cfg!(target_os = "linux"));
        for unnamed in [false, unnamed] {
            let dirs = Dirs {
                root: root.clone(),
                checked: Mutex::new(HashSet::new()),
                unnamed,
            };
            let path = root.join(format!("files/alice/{unnamed}.png"));
            for bytes in [&b"first"[..], &b"second, longer"[..]] {
                let written = stage(&dirs, &path, bytes).unwrap();
                assert_eq!(matches!(written.temp, Temp::Unnamed), unnamed);
                written.place(&path).unwrap();
                assert_eq!(std::fs::read(&path).unwrap(), bytes, "unnamed: {unnamed}");
            }
        }
        let expected: Vec<String> = if unnamed {
            vec!["false.png".into(), "true.png".into()]
        } else {
            vec!["false.png".into()]
        };
        assert_eq!(
            names(&root.join("files/alice")),
            expected,
            "no temporary file is left"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
