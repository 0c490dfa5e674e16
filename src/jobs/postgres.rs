use async_trait::async_trait;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::record::{Delivery, Echo, JobOutput, JobRecord, JobRecords, JobStatus};
use crate::auth::UserId;
use crate::id::JobId;
use crate::job::Operation;
use crate::postgres::{seconds, Postgres};
use crate::store::StoreError;

/// Job records in PostgreSQL, shared by every replica: a job accepted by one is read back,
/// listed and cancelled-or-refused through any other.
#[derive(Clone, Debug)]
pub struct PgJobs {
    db: Postgres,
}

impl PgJobs {
    /// The records in `db`.
    pub fn new(db: Postgres) -> Self {
        PgJobs { db }
    }

    async fn execute(&self, sql: &str, values: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let client = self.db.client().await.map_err(StoreError::new)?;
        let statement = client.prepare_cached(sql).await.map_err(StoreError::new)?;
        client
            .execute(&statement, values)
            .await
            .map_err(StoreError::new)
    }

    async fn select(
        &self,
        sql: &str,
        values: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<JobRecord>, StoreError> {
        let client = self.db.client().await.map_err(StoreError::new)?;
        let statement = client.prepare_cached(sql).await.map_err(StoreError::new)?;
        let rows = client
            .query(&statement, values)
            .await
            .map_err(StoreError::new)?;
        rows.iter().map(record_of).collect()
    }

    /// Writes `job`'s columns with `sql`; with `claim`, its rerun, lease and attempts too
    /// ($18 to $21).
    async fn write(&self, sql: &str, job: &JobRecord, claim: bool) -> Result<(), StoreError> {
        let (created, generations) = output_columns(job);
        let n = i32::try_from(job.n).unwrap_or(i32::MAX);
        let at = |t: Option<u64>| t.map(seconds);
        let rerun = job.rerun.as_ref().map(super::Rerun::to_column);
        let runner = job.lease.as_ref().map(|l| l.runner.clone());
        let until = seconds(job.lease.as_ref().map_or(0, |l| l.until));
        let attempts = i32::try_from(job.attempts).unwrap_or(i32::MAX);
        let claimed: [&(dyn ToSql + Sync); 4] = [&rerun, &runner, &until, &attempts];
        let fixed: [&(dyn ToSql + Sync); 17] = [
            &job.id.as_uuid(),
            &job.owner.as_str(),
            &job.operation.as_str(),
            &job.model,
            &n,
            &job.status.as_str(),
            &seconds(job.created_at),
            &at(job.started_at),
            &at(job.finished_at),
            &job.echo.size,
            &job.echo.quality,
            &job.echo.background,
            &job.echo.output_format,
            &created,
            &generations,
            &job.error,
            &job.webhook,
        ];
        let values: Vec<&(dyn ToSql + Sync)> = match claim {
            true => fixed.iter().chain(&claimed).copied().collect(),
            false => fixed.to_vec(),
        };
        self.execute(sql, &values).await.map(drop)
    }
}

const SELECT: &str = "SELECT id, owner, operation, model, n, status, created_at, started_at, \
                      finished_at, size, quality, background, output_format, output_created, \
                      generations, error, webhook, rerun, runner, lease_until, attempts FROM jobs";

/// The columns [`record_of`] reads, for `RETURNING`.
const RETURNED: &str = "id, owner, operation, model, n, status, created_at, started_at, \
                        finished_at, size, quality, background, output_format, output_created, \
                        generations, error, webhook, rerun, runner, lease_until, attempts";

/// The output's columns: its `created` and its generation ids.
fn output_columns(job: &JobRecord) -> (Option<i64>, Option<String>) {
    let output = job.output.as_ref();
    (
        output.map(|o| seconds(o.created)),
        output.map(JobOutput::ids_column),
    )
}

/// A row, as [`SELECT`] orders it; rows are only written here, so one that does not parse
/// is corruption.
fn record_of(row: &Row) -> Result<JobRecord, StoreError> {
    let corrupt = |what: &str| StoreError::new(format!("corrupt job record: {what}"));
    let get = |i: usize| -> Result<String, StoreError> { row.try_get(i).map_err(StoreError::new) };
    let time = |i: usize| -> Result<Option<u64>, StoreError> {
        let t: Option<i64> = row.try_get(i).map_err(StoreError::new)?;
        Ok(t.map(|t| t.max(0) as u64))
    };
    let id: uuid::Uuid = row.try_get(0).map_err(StoreError::new)?;
    let n: i32 = row.try_get(4).map_err(StoreError::new)?;
    let generations: Option<String> = row.try_get(14).map_err(StoreError::new)?;
    let output = JobOutput::from_columns(time(13)?, generations)?;
    let rerun: Option<String> = row.try_get(17).map_err(StoreError::new)?;
    let runner: Option<String> = row.try_get(18).map_err(StoreError::new)?;
    let lease_until: i64 = row.try_get(19).map_err(StoreError::new)?;
    let attempts: i32 = row.try_get(20).map_err(StoreError::new)?;
    Ok(JobRecord {
        id: JobId::from(id),
        owner: UserId::new(&get(1)?).map_err(|_| corrupt("owner"))?,
        operation: Operation::parse(&get(2)?).ok_or_else(|| corrupt("operation"))?,
        model: get(3)?,
        n: u32::try_from(n).map_err(|_| corrupt("n"))?,
        status: JobStatus::parse(&get(5)?).ok_or_else(|| corrupt("status"))?,
        created_at: time(6)?.unwrap_or(0),
        started_at: time(7)?,
        finished_at: time(8)?,
        echo: Echo {
            size: get(9)?,
            quality: get(10)?,
            background: get(11)?,
            output_format: get(12)?,
        },
        output,
        error: row.try_get(15).map_err(StoreError::new)?,
        webhook: row.try_get(16).map_err(StoreError::new)?,
        rerun: rerun
            .as_deref()
            .map(super::Rerun::from_column)
            .transpose()?,
        lease: runner.map(|runner| super::Lease {
            runner,
            until: lease_until.max(0) as u64,
        }),
        attempts: u32::try_from(attempts).map_err(|_| corrupt("attempts"))?,
    })
}

#[async_trait]
impl JobRecords for PgJobs {
    async fn insert(&self, job: &JobRecord) -> Result<(), StoreError> {
        self.write(
            "INSERT INTO jobs (id, owner, operation, model, n, status, created_at, started_at,
                               finished_at, size, quality, background, output_format,
                               output_created, generations, error, webhook, rerun,
                               runner, lease_until, attempts)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                     $17, $18, $19, $20, $21)",
            job,
            true,
        )
        .await
    }

    async fn update(&self, job: &JobRecord) -> Result<(), StoreError> {
        self.write(
            "UPDATE jobs SET operation = $3, model = $4, n = $5, status = $6, created_at = $7,
                             started_at = $8, finished_at = $9, size = $10, quality = $11,
                             background = $12, output_format = $13, output_created = $14,
                             generations = $15, error = $16, webhook = $17
             WHERE id = $1 AND owner = $2",
            job,
            false,
        )
        .await
    }

    async fn get(&self, owner: &UserId, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!("{SELECT} WHERE id = $1 AND owner = $2");
        let mut found = self.select(&sql, &[&id.as_uuid(), &owner.as_str()]).await?;
        Ok(found.pop())
    }

    async fn list(
        &self,
        owner: &UserId,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let after = after.map(|a| a.as_uuid());
        let sql = format!(
            "{SELECT} WHERE owner = $1 AND ($2::uuid IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
        );
        self.select(&sql, &[&owner.as_str(), &after, &limit]).await
    }

    async fn open(&self, owner: &UserId, since: u64) -> Result<u64, StoreError> {
        let client = self.db.client().await.map_err(StoreError::new)?;
        let statement = client
            .prepare_cached(
                "SELECT count(*) FROM jobs WHERE owner = $1 AND status IN ('queued', 'running')
                 AND created_at >= $2",
            )
            .await
            .map_err(StoreError::new)?;
        let row = client
            .query_one(&statement, &[&owner.as_str(), &seconds(since)])
            .await
            .map_err(StoreError::new)?;
        let count: i64 = row.try_get(0).map_err(StoreError::new)?;
        Ok(count.max(0) as u64)
    }

    async fn claim(
        &self,
        lease: &super::Lease,
        before: u64,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // SKIP LOCKED: replicas claiming at once each take other jobs, none waits.
        let sql = format!(
            "UPDATE jobs SET runner = $1, lease_until = $2, attempts = attempts + 1
             WHERE id IN (SELECT id FROM jobs WHERE status IN ('queued', 'running')
                          AND lease_until < $3 AND runner IS DISTINCT FROM $1
                          ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED)
             RETURNING {RETURNED}"
        );
        let values: [&(dyn ToSql + Sync); 4] = [
            &lease.runner,
            &seconds(lease.until),
            &seconds(before),
            &limit,
        ];
        self.select(&sql, &values).await
    }

    async fn renew(&self, lease: &super::Lease) -> Result<(), StoreError> {
        self.execute(
            "UPDATE jobs SET lease_until = $2 WHERE runner = $1 AND status IN ('queued', 'running')",
            &[&lease.runner, &seconds(lease.until)],
        )
        .await
        .map(drop)
    }

    async fn enqueue(&self, delivery: &Delivery) -> Result<(), StoreError> {
        let attempts = i32::try_from(delivery.attempts).unwrap_or(i32::MAX);
        self.execute(
            "INSERT INTO deliveries (id, url, body, attempts, next_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO NOTHING",
            &[
                &delivery.id,
                &delivery.url,
                &delivery.body,
                &attempts,
                &seconds(delivery.next_at),
            ],
        )
        .await
        .map(drop)
    }

    /// Claims the due deliveries for this replica: each is pushed a minute ahead as it is
    /// read (`FOR UPDATE SKIP LOCKED`), so two replicas never send one at once; an attempt
    /// then sets its real next time.
    async fn due(&self, now: u64, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let client = self.db.client().await.map_err(StoreError::new)?;
        let statement = client
            .prepare_cached(
                "UPDATE deliveries SET next_at = $1 + 60 WHERE id IN (
                     SELECT id FROM deliveries WHERE next_at <= $1 ORDER BY next_at
                     LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING id, url, body, attempts, next_at",
            )
            .await
            .map_err(StoreError::new)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(&statement, &[&seconds(now), &limit])
            .await
            .map_err(StoreError::new)?;
        rows.iter()
            .map(|row| {
                let attempts: i32 = row.try_get(3).map_err(StoreError::new)?;
                let next_at: i64 = row.try_get(4).map_err(StoreError::new)?;
                Ok(Delivery {
                    id: row.try_get(0).map_err(StoreError::new)?,
                    url: row.try_get(1).map_err(StoreError::new)?,
                    body: row.try_get(2).map_err(StoreError::new)?,
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    next_at: next_at.max(0) as u64,
                })
            })
            .collect()
    }

    async fn attempted(
        &self,
        id: &str,
        attempts: u32,
        next_at: Option<u64>,
    ) -> Result<(), StoreError> {
        let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
        match next_at {
            None => {
                self.execute("DELETE FROM deliveries WHERE id = $1", &[&id])
                    .await
            }
            Some(at) => {
                self.execute(
                    "UPDATE deliveries SET attempts = $2, next_at = $3 WHERE id = $1",
                    &[&id, &attempts, &seconds(at)],
                )
                .await
            }
        }
        .map(drop)
    }

    async fn forget(&self, before: u64) -> Result<usize, StoreError> {
        let removed = self
            .execute(
                "DELETE FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled')
                 AND finished_at < $1",
                &[&seconds(before)],
            )
            .await?;
        Ok(usize::try_from(removed).unwrap_or(usize::MAX))
    }
}
