use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{decide, join_ids, parse_ids, Begin, IdempotencyRecords};
use crate::auth::UserId;
use crate::id::GenerationId;
use crate::store::StoreError;

/// Idempotency records in a SQLite file, so a retry after a restart is still answered once.
#[derive(Clone, Debug)]
pub struct SqliteIdempotency {
    db: Arc<Mutex<Connection>>,
}

impl SqliteIdempotency {
    /// Opens (or creates) the records at `path` (it may be the generations database).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let db = Connection::open(path).map_err(StoreError::new)?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS idempotency (
                 user        TEXT NOT NULL,
                 key         TEXT NOT NULL,
                 fingerprint TEXT NOT NULL,
                 started     INTEGER NOT NULL,
                 created     INTEGER,
                 generations TEXT,
                 PRIMARY KEY (user, key)
             );",
        )
        .map_err(StoreError::new)?;
        Ok(SqliteIdempotency {
            db: Arc::new(Mutex::new(db)),
        })
    }

    async fn with_db<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&mut db.lock().unwrap_or_else(|e| e.into_inner())))
            .await
            .map_err(StoreError::new)?
    }
}

#[async_trait]
impl IdempotencyRecords for SqliteIdempotency {
    async fn begin(
        &self,
        user: &UserId,
        key: &str,
        fingerprint: &str,
        now: u64,
    ) -> Result<Begin, StoreError> {
        let (user, key, fingerprint) = (user.to_string(), key.to_owned(), fingerprint.to_owned());
        self.with_db(move |db| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate).map_err(StoreError::new)?;
            let row = tx
                .query_row(
                    "SELECT fingerprint, started, created, generations FROM idempotency
                     WHERE user = ?1 AND key = ?2",
                    params![user, key],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, Option<i64>>(2)?, r.get::<_, Option<String>>(3)?)),
                )
                .optional()
                .map_err(StoreError::new)?;
            if let Some((stored, started, created, ids)) = row {
                let done = match (created, ids) {
                    (Some(created), Some(ids)) => Some((created.max(0) as u64, parse_ids(&ids)?)),
                    _ => None,
                };
                if let Some(found) = decide(&stored, started.max(0) as u64, done, &fingerprint, now) {
                    return Ok(found);
                }
            }
            tx.execute(
                "INSERT OR REPLACE INTO idempotency (user, key, fingerprint, started, created, generations)
                 VALUES (?1, ?2, ?3, ?4, NULL, NULL)",
                params![user, key, fingerprint, now as i64],
            )
            .map_err(StoreError::new)?;
            tx.commit().map_err(StoreError::new)?;
            Ok(Begin::New)
        })
        .await
    }

    async fn complete(
        &self,
        user: &UserId,
        key: &str,
        created: u64,
        generations: &[GenerationId],
    ) -> Result<(), StoreError> {
        let (user, key, ids) = (user.to_string(), key.to_owned(), join_ids(generations));
        self.with_db(move |db| {
            db.execute(
                "UPDATE idempotency SET created = ?3, generations = ?4 WHERE user = ?1 AND key = ?2",
                params![user, key, created as i64, ids],
            )
            .map(drop)
            .map_err(StoreError::new)
        })
        .await
    }

    async fn abandon(&self, user: &UserId, key: &str) -> Result<(), StoreError> {
        let (user, key) = (user.to_string(), key.to_owned());
        self.with_db(move |db| {
            db.execute(
                "DELETE FROM idempotency WHERE user = ?1 AND key = ?2",
                params![user, key],
            )
            .map(drop)
            .map_err(StoreError::new)
        })
        .await
    }
}
