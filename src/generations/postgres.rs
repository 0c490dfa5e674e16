use async_trait::async_trait;
use tokio_postgres::types::ToSql;

use super::{Generation, GenerationStatus, Generations};
use crate::id::GenerationId;
use crate::ledger::HoldId;
use crate::postgres::{seconds, Postgres, Statement};
use crate::store::{FileKey, StoreError};

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
        hold: Option<uuid::Uuid>,
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
                "INSERT INTO generations (id, owner, file_key, status, created, hold)
                 VALUES ($1, $2, $3, $4, $5, $6)"
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
                hold,
            } => vec![id, owner, file_key, status, created, hold],
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
            hold: generation.hold.map(HoldId::as_uuid),
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
        let rows = self
            .select(&format!("{SELECT} WHERE id = $1"), &[&id.as_uuid()])
            .await?;
        Ok(rows.into_iter().next())
    }

    async fn pending(&self, before: u64, limit: usize) -> Result<Vec<Generation>, StoreError> {
        let sql = format!(
            "{SELECT} WHERE status = 'pending' AND created <= $1 ORDER BY created LIMIT $2"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.select(&sql, &[&seconds(before), &limit]).await
    }

    async fn under_hold(&self, hold: HoldId) -> Result<Vec<Generation>, StoreError> {
        let sql = format!("{SELECT} WHERE hold = $1");
        self.select(&sql, &[&hold.as_uuid()]).await
    }
}

/// The columns a [`Generation`] is read from.
const SELECT: &str = "SELECT id, file_key, status, created, hold FROM generations";

impl PgGenerations {
    /// The generations `sql` (from [`SELECT`]) finds. Rows are only written by `insert`,
    /// so a row that fails to parse is corruption.
    async fn select(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Generation>, StoreError> {
        let client = self.db.client().await.map_err(StoreError::new)?;
        let statement = client.prepare_cached(sql).await.map_err(StoreError::new)?;
        let rows = client
            .query(&statement, params)
            .await
            .map_err(StoreError::new)?;
        let corrupt = |what: &str| StoreError::new(format!("corrupt generation {what}"));
        let mut generations = Vec::with_capacity(rows.len());
        for row in rows {
            let id = GenerationId::from_uuid(row.get(0));
            let key = FileKey::parse(row.get(1)).ok_or_else(|| corrupt("file key"))?;
            let status = GenerationStatus::parse(row.get(2)).ok_or_else(|| corrupt("status"))?;
            let created: i64 = row.get(3);
            let hold: Option<uuid::Uuid> = row.get(4);
            generations.push(
                Generation::new(id, key, status, created.max(0) as u64)
                    .charged_under(hold.map(HoldId::from_uuid)),
            );
        }
        Ok(generations)
    }
}
