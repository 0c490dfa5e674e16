use std::path::Path;

use async_trait::async_trait;
use rusqlite::{params, Connection};

use super::{Generation, GenerationStatus, Generations};
use crate::id::GenerationId;
use crate::ledger::HoldId;
use crate::sqlite::{DbFailed, Reader, Writer};
use crate::store::{FileKey, StoreError};

/// Generations in a SQLite file (WAL mode), so chains survive a restart.
///
/// Commits survive a killed process (`synchronous = NORMAL`); a power loss may lose the
/// newest records, whose images the clients already hold (a chain from one is then
/// `404 generation_not_found`). A record is on the answer path of every edit, so it is not
/// fsynced each time. Writes go through one writer thread that commits every write waiting
/// for it in one transaction (the crate's `sqlite` module); reads use a connection of their
/// own.
#[derive(Clone, Debug)]
pub struct SqliteGenerations {
    writer: Writer,
    reader: Reader,
    path: std::path::PathBuf,
}

impl From<DbFailed> for StoreError {
    fn from(failed: DbFailed) -> Self {
        StoreError::new(failed)
    }
}

impl SqliteGenerations {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
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
        // Added after the first schema: the hold each generation was charged under. The
        // pending ones are found without an index (the sweep of a sole runner reads them
        // once, at its start): none costs each edit an index entry.
        let present = db
            .prepare("SELECT 1 FROM pragma_table_info('generations') WHERE name = 'hold'")
            .and_then(|mut s| s.exists([]))
            .map_err(StoreError::new)?;
        if !present {
            db.execute_batch("ALTER TABLE generations ADD COLUMN hold TEXT")
                .map_err(StoreError::new)?;
        }

        let reader = Reader::open(path).map_err(StoreError::new)?;
        Ok(SqliteGenerations {
            writer: Writer::start(db, "sqlite-generations-writer").map_err(StoreError::new)?,
            reader,
            path: path.to_owned(),
        })
    }

    /// The database's file, writer and reader, for another store that shares them (its
    /// writes then join the generations' batches: one commit for both).
    pub(crate) fn shared(&self) -> (&Path, Writer, Reader) {
        (&self.path, self.writer.clone(), self.reader.clone())
    }

    /// Runs one statement in the writer's next batch; answers once it is committed.
    async fn write(
        &self,
        sql: &'static str,
        values: impl rusqlite::Params + Send + 'static,
    ) -> Result<(), StoreError> {
        self.writer
            .submit(false, move |tx| {
                let mut statement = tx.prepare_cached(sql).map_err(StoreError::new)?;
                statement.execute(values).map(drop).map_err(StoreError::new)
            })
            .await
    }
}

#[async_trait]
impl Generations for SqliteGenerations {
    async fn insert(&self, generation: &Generation) -> Result<(), StoreError> {
        let g = generation;
        let values = (
            g.id.to_string(),
            g.owner.as_str().to_owned(),
            g.file_key.as_str().to_owned(),
            g.status.as_str(),
            g.created as i64,
            g.hold.map(|h| h.to_string()),
        );
        self.write(
            "INSERT INTO generations (id, owner, file_key, status, created, hold)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            values,
        )
        .await
    }

    async fn set_status(
        &self,
        id: GenerationId,
        status: GenerationStatus,
    ) -> Result<(), StoreError> {
        self.write(
            "UPDATE generations SET status = ?2 WHERE id = ?1",
            (id.to_string(), status.as_str()),
        )
        .await
    }

    async fn get(&self, id: GenerationId) -> Result<Option<Generation>, StoreError> {
        let rows = self
            .reader
            .read(move |db| {
                select(
                    db,
                    "SELECT id, file_key, status, created, hold FROM generations WHERE id = ?1",
                    params![id.to_string()],
                )
            })
            .await?;
        Ok(rows.into_iter().next())
    }

    async fn pending(&self, before: u64, limit: usize) -> Result<Vec<Generation>, StoreError> {
        self.reader
            .read(move |db| {
                select(
                    db,
                    "SELECT id, file_key, status, created, hold FROM generations
                     WHERE status = 'pending' AND created <= ?1 ORDER BY created LIMIT ?2",
                    params![before.min(i64::MAX as u64) as i64, limit as i64],
                )
            })
            .await
    }

    /// Without an index (one more per edit would cost every edit's write for a question
    /// asked once per job taken over after its settle): a scan.
    async fn under_hold(&self, hold: HoldId) -> Result<Vec<Generation>, StoreError> {
        self.reader
            .read(move |db| {
                select(
                    db,
                    "SELECT id, file_key, status, created, hold FROM generations WHERE hold = ?1",
                    params![hold.to_string()],
                )
            })
            .await
    }
}

/// The generations `sql` selects (`id, file_key, status, created, hold`). Rows are only
/// written by `insert`, so a row that fails to parse is corruption.
fn select(
    db: &Connection,
    sql: &str,
    values: impl rusqlite::Params,
) -> Result<Vec<Generation>, StoreError> {
    let mut statement = db.prepare_cached(sql).map_err(StoreError::new)?;
    let rows = statement
        .query_map(values, |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, Option<String>>(4)?,
            ))
        })
        .map_err(StoreError::new)?;
    let corrupt = |what: &str| StoreError::new(format!("corrupt generation {what}"));
    let mut generations = Vec::new();
    for row in rows {
        let (id, key, status, created, hold) = row.map_err(StoreError::new)?;
        let id = GenerationId::parse(&id).map_err(|_| corrupt("id"))?;
        let key = FileKey::parse(&key).ok_or_else(|| corrupt("file key"))?;
        let status = GenerationStatus::parse(&status).ok_or_else(|| corrupt("status"))?;
        let hold = match hold {
            Some(hold) => Some(HoldId::parse(&hold).ok_or_else(|| corrupt("hold"))?),
            None => None,
        };
        generations
            .push(Generation::new(id, key, status, created.max(0) as u64).charged_under(hold));
    }
    Ok(generations)
}
