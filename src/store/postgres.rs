use async_trait::async_trait;

use super::{FileKey, Generation, GenerationStatus, Generations, StoreError};
use crate::id::GenerationId;
use crate::postgres::{seconds, Postgres};

/// Generation records in PostgreSQL, shared by every replica: an output recorded by one is
/// found (and chained) by another.
#[derive(Clone, Debug)]
pub struct PgGenerations {
    db: Postgres,
}

impl PgGenerations {
    /// The records in `db`.
    pub fn new(db: Postgres) -> Self {
        PgGenerations { db }
    }
}

#[async_trait]
impl Generations for PgGenerations {
    async fn insert(&self, generation: &Generation) -> Result<(), StoreError> {
        let client = self.db.client().await.map_err(StoreError::new)?;
        let insert = client
            .prepare_cached(
                "INSERT INTO generations (id, owner, file_key, status, created)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .await
            .map_err(StoreError::new)?;
        client
            .execute(
                &insert,
                &[
                    &generation.id.as_uuid(),
                    &generation.owner.as_str(),
                    &generation.file_key.as_str(),
                    &generation.status.as_str(),
                    &seconds(generation.created),
                ],
            )
            .await
            .map_err(StoreError::new)?;
        Ok(())
    }

    async fn set_status(
        &self,
        id: GenerationId,
        status: GenerationStatus,
    ) -> Result<(), StoreError> {
        let client = self.db.client().await.map_err(StoreError::new)?;
        let update = client
            .prepare_cached("UPDATE generations SET status = $2 WHERE id = $1")
            .await
            .map_err(StoreError::new)?;
        client
            .execute(&update, &[&id.as_uuid(), &status.as_str()])
            .await
            .map_err(StoreError::new)?;
        Ok(())
    }

    async fn get(&self, id: GenerationId) -> Result<Option<Generation>, StoreError> {
        let client = self.db.client().await.map_err(StoreError::new)?;
        let select = client
            .prepare_cached("SELECT file_key, status, created FROM generations WHERE id = $1")
            .await
            .map_err(StoreError::new)?;
        let Some(row) = client
            .query_opt(&select, &[&id.as_uuid()])
            .await
            .map_err(StoreError::new)?
        else {
            return Ok(None);
        };
        // Rows are only written by `insert`, so a row that fails to parse is corruption.
        let key = FileKey::parse(row.get(0)).ok_or_else(|| StoreError::new("corrupt file key"))?;
        let status =
            GenerationStatus::parse(row.get(1)).ok_or_else(|| StoreError::new("corrupt status"))?;
        let created: i64 = row.get(2);
        Ok(Some(Generation::new(
            id,
            key,
            status,
            created.max(0) as u64,
        )))
    }
}
