use async_trait::async_trait;
use tokio_postgres::types::ToSql;

use super::{FileKey, Generation, GenerationStatus, Generations, StoreError};
use crate::id::GenerationId;
use crate::postgres::{seconds, Postgres, Statement};

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

/// A write of the records, committed with whatever else is waiting (the edit's ledger
/// statements among them): both are one statement on one row.
enum Record {
    Insert {
        id: uuid::Uuid,
        owner: String,
        file_key: String,
        status: &'static str,
        created: i64,
    },
    Status {
        id: uuid::Uuid,
        status: &'static str,
    },
}

impl Statement for Record {
    fn sql(&self) -> &'static str {
        match self {
            Record::Insert { .. } => {
                "INSERT INTO generations (id, owner, file_key, status, created)
                 VALUES ($1, $2, $3, $4, $5)"
            }
            Record::Status { .. } => "UPDATE generations SET status = $2 WHERE id = $1",
        }
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        match self {
            Record::Insert {
                id,
                owner,
                file_key,
                status,
                created,
            } => vec![id, owner, file_key, status, created],
            Record::Status { id, status } => vec![id, status],
        }
    }
}

#[async_trait]
impl Generations for PgGenerations {
    async fn insert(&self, generation: &Generation) -> Result<(), StoreError> {
        let record = Record::Insert {
            id: generation.id.as_uuid(),
            owner: generation.owner.as_str().to_owned(),
            file_key: generation.file_key.as_str().to_owned(),
            status: generation.status.as_str(),
            created: seconds(generation.created),
        };
        self.db.commit(record).await.map_err(StoreError::new)?;
        Ok(())
    }

    async fn set_status(
        &self,
        id: GenerationId,
        status: GenerationStatus,
    ) -> Result<(), StoreError> {
        let record = Record::Status {
            id: id.as_uuid(),
            status: status.as_str(),
        };
        self.db.commit(record).await.map_err(StoreError::new)?;
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
