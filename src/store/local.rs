use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::Bytes;
use uuid::Uuid;

use super::{FileKey, FileMeta, FilePage, FileStore, StoreError};
use crate::auth::UserId;

/// Files in a local directory, one file per key at `{root}/{key}`.
///
/// Writes go to a temporary file in the same directory, are fsynced, renamed over the key and
/// the directory is fsynced, so a crash leaves either the old file or the new one. Every path
/// is checked on its own, whatever the caller checked: only plain components, and the
/// canonical parent directory must lie under the canonical root. A `LocalFileStore` cannot
/// be made to touch a file outside its root.
#[derive(Clone, Debug)]
pub struct LocalFileStore {
    root: PathBuf,
}

impl LocalFileStore {
    /// A store rooted at `root`, which is created if missing.
    pub fn open(root: impl AsRef<Path>) -> io::Result<Self> {
        std::fs::create_dir_all(root.as_ref())?;
        Ok(LocalFileStore {
            root: root.as_ref().canonicalize()?,
        })
    }

    /// The root directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of `key`, or an error if it could leave the root.
    fn path_of(&self, key: &str, create_parent: bool) -> io::Result<PathBuf> {
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
        let path = self.root.join(relative);
        let parent = path.parent().ok_or_else(escape)?;
        if create_parent {
            std::fs::create_dir_all(parent)?;
        }
        match parent.canonicalize() {
            Ok(real) if real.starts_with(&self.root) => Ok(path),
            Ok(_) => Err(escape()),
            // A missing parent holds no file; the caller sees "not found".
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(path),
            Err(e) => Err(e),
        }
    }

    fn put_sync(&self, key: &FileKey, bytes: &[u8]) -> io::Result<()> {
        let path = self.path_of(key.as_str(), true)?;
        let dir = path.parent().ok_or_else(escape)?;
        let temp = dir.join(format!(".tmp-{}", Uuid::new_v4()));
        let written = (|| {
            let mut file = std::fs::File::create_new(&temp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&temp, &path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written
    }

    fn get_sync(&self, key: &FileKey) -> io::Result<Option<Bytes>> {
        let path = self.path_of(key.as_str(), false)?;
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn delete_sync(&self, key: &FileKey) -> io::Result<bool> {
        let path = self.path_of(key.as_str(), false)?;
        match std::fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn list_sync(
        &self,
        owner: &UserId,
        after: Option<&FileKey>,
        limit: usize,
    ) -> io::Result<FilePage> {
        let dir = self.path_of(&format!("files/{owner}/x"), false)?;
        let dir = dir.parent().ok_or_else(escape)?;
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FilePage::default()),
            Err(e) => Err(e)?,
        };
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            // Temporary files and anything not written by `put` do not parse as keys.
            let Some(key) = FileKey::parse(&format!("files/{owner}/{name}")) else {
                continue;
            };
            if after.is_some_and(|a| &key <= a) {
                continue;
            }
            // A file deleted since the directory was read is simply not listed.
            match entry.metadata() {
                Ok(meta) if meta.is_file() => keys.push((key, meta)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        let has_more = keys.len() > limit;
        let files = keys
            .into_iter()
            .take(limit)
            .map(|(key, meta)| {
                let created = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                FileMeta::new(key, meta.len(), created)
            })
            .collect();
        Ok(FilePage { files, has_more })
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
        let key = key.clone();
        self.blocking(move |s| s.put_sync(&key, &bytes)).await
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
        after: Option<&FileKey>,
        limit: usize,
    ) -> Result<FilePage, StoreError> {
        let (owner, after) = (owner.clone(), after.cloned());
        self.blocking(move |s| s.list_sync(&owner, after.as_ref(), limit))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_paths_that_leave_the_root() {
        let dir = std::env::temp_dir().join(format!("igw-local-{}", Uuid::new_v4()));
        let store = LocalFileStore::open(&dir).unwrap();
        for raw in [
            "../x",
            "/etc/passwd",
            "files/../../x",
            "a/./b",
            "files/a\0b",
        ] {
            assert!(store.path_of(raw, false).is_err(), "{raw:?}");
        }
        // A symlinked directory pointing outside is refused by the canonical-prefix check.
        #[cfg(unix)]
        {
            std::fs::create_dir_all(dir.join("files")).unwrap();
            std::os::unix::fs::symlink("/tmp", dir.join("files/evil")).unwrap();
            assert!(store.path_of("files/evil/x", false).is_err());
        }
        assert!(store.path_of("files/alice/x", false).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
