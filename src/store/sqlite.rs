use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::{FileKey, Generation, GenerationStatus, Generations, StoreError};
use crate::id::GenerationId;

/// Generations in a SQLite file (WAL mode), so chains survive a restart.
///
/// Commits survive a killed process (`synchronous = NORMAL`); a power loss may lose the
/// newest records, whose images the clients already hold (a chain from one is then
/// `404 generation_not_found`). A record is on the answer path of every edit, so it is not
/// fsynced each time.
#[derive(Clone, Debug)]
pub struct SqliteGenerations {
    db: Arc<Mutex<Connection>>,
}

impl SqliteGenerations {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let db = Connection::open(path).map_err(StoreError::new)?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS generations (
                 id       TEXT PRIMARY KEY,
                 owner    TEXT NOT NULL,
                 file_key TEXT NOT NULL,
                 status   TEXT NOT NULL,
                 created  INTEGER NOT NULL
             );",
        )
        .map_err(StoreError::new)?;
        Ok(SqliteGenerations {
            db: Arc::new(Mutex::new(db)),
        })
    }

    async fn with_db<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let db = db.lock().unwrap_or_else(|e| e.into_inner());
            work(&db)
        })
        .await
        .map_err(StoreError::new)?
        .map_err(StoreError::new)
    }
}

#[async_trait]
impl Generations for SqliteGenerations {
    async fn insert(&self, generation: &Generation) -> Result<(), StoreError> {
        let g = generation.clone();
        self.with_db(move |db| {
            db.execute(
                "INSERT INTO generations (id, owner, file_key, status, created)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    g.id.to_string(),
                    g.owner.as_str(),
                    g.file_key.as_str(),
                    g.status.as_str(),
                    g.created as i64
                ],
            )
            .map(drop)
        })
        .await
    }

    async fn set_status(
        &self,
        id: GenerationId,
        status: GenerationStatus,
    ) -> Result<(), StoreError> {
        self.with_db(move |db| {
            db.execute(
                "UPDATE generations SET status = ?2 WHERE id = ?1",
                params![id.to_string(), status.as_str()],
            )
            .map(drop)
        })
        .await
    }

    async fn get(&self, id: GenerationId) -> Result<Option<Generation>, StoreError> {
        let row = self
            .with_db(move |db| {
                db.query_row(
                    "SELECT file_key, status, created FROM generations WHERE id = ?1",
                    params![id.to_string()],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, i64>(2)?,
                        ))
                    },
                )
                .optional()
            })
            .await?;
        let Some((key, status, created)) = row else {
            return Ok(None);
        };
        // Rows are only written by `insert`, so a row that fails to parse is corruption.
        let key = FileKey::parse(&key).ok_or_else(|| StoreError::new("corrupt file key"))?;
        let status =
            GenerationStatus::parse(&status).ok_or_else(|| StoreError::new("corrupt status"))?;
        Ok(Some(Generation::new(
            id,
            key,
            status,
            created.max(0) as u64,
        )))
    }
}
