use async_trait::async_trait;

use super::{decide, join_ids, parse_ids, Begin, IdempotencyRecords};
use crate::auth::UserId;
use crate::id::GenerationId;
use crate::postgres::{seconds, Postgres};
use crate::store::StoreError;

/// `Idempotency-Key` records in PostgreSQL, shared by every replica: a retry that lands on
/// another replica finds the first request's record (running, done, or for another
/// request). `begin` claims a key with one insert, or under the lock of its row, so two
/// first requests on two replicas never both run.
#[derive(Clone, Debug)]
pub struct PgIdempotency {
    db: Postgres,
}

impl PgIdempotency {
    /// The records in `db`.
    pub fn new(db: Postgres) -> Self {
        PgIdempotency { db }
    }
}

#[async_trait]
impl IdempotencyRecords for PgIdempotency {
    async fn begin(
        &self,
        user: &UserId,
        key: &str,
        fingerprint: &str,
        now: u64,
    ) -> Result<Begin, StoreError> {
        let mut client = self.db.client().await.map_err(StoreError::new)?;
        let tx = client.transaction().await.map_err(StoreError::new)?;
        let claim = tx
            .prepare_cached(
                "INSERT INTO idempotency (user_id, key, fingerprint, started)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .await
            .map_err(StoreError::new)?;
        let inserted = tx
            .execute(&claim, &[&user.as_str(), &key, &fingerprint, &seconds(now)])
            .await
            .map_err(StoreError::new)?;
        if inserted == 0 {
            let row = tx
                .query_one(
                    "SELECT fingerprint, started, created, generations FROM idempotency
                     WHERE user_id = $1 AND key = $2 FOR UPDATE",
                    &[&user.as_str(), &key],
                )
                .await
                .map_err(StoreError::new)?;
            let stored: String = row.get(0);
            let started: i64 = row.get(1);
            let done = match (
                row.get::<_, Option<i64>>(2),
                row.get::<_, Option<String>>(3),
            ) {
                (Some(created), Some(ids)) => Some((created.max(0) as u64, parse_ids(&ids)?)),
                _ => None,
            };
            if let Some(found) = decide(&stored, started.max(0) as u64, done, fingerprint, now) {
                return Ok(found);
            }
            // Expired or abandoned: the key starts over for this request.
            tx.execute(
                "UPDATE idempotency SET fingerprint = $3, started = $4, created = NULL,
                        generations = NULL
                 WHERE user_id = $1 AND key = $2",
                &[&user.as_str(), &key, &fingerprint, &seconds(now)],
            )
            .await
            .map_err(StoreError::new)?;
        }
        tx.commit().await.map_err(StoreError::new)?;
        Ok(Begin::New)
    }

    async fn complete(
        &self,
        user: &UserId,
        key: &str,
        created: u64,
        generations: &[GenerationId],
    ) -> Result<(), StoreError> {
        let client = self.db.client().await.map_err(StoreError::new)?;
        let update = client
            .prepare_cached(
                "UPDATE idempotency SET created = $3, generations = $4
                 WHERE user_id = $1 AND key = $2",
            )
            .await
            .map_err(StoreError::new)?;
        client
            .execute(
                &update,
                &[
                    &user.as_str(),
                    &key,
                    &seconds(created),
                    &join_ids(generations),
                ],
            )
            .await
            .map_err(StoreError::new)?;
        Ok(())
    }

    async fn abandon(&self, user: &UserId, key: &str) -> Result<(), StoreError> {
        let client = self.db.client().await.map_err(StoreError::new)?;
        client
            .execute(
                "DELETE FROM idempotency WHERE user_id = $1 AND key = $2",
                &[&user.as_str(), &key],
            )
            .await
            .map_err(StoreError::new)?;
        Ok(())
    }
}
