use std::path::Path;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::record::{Delivery, Echo, JobOutput, JobRecord, JobRecords, JobStatus};
use crate::auth::UserId;
use crate::id::JobId;
use crate::job::Operation;
use crate::sqlite::{Reader, Writer};
use crate::store::StoreError;

/// Job records in a SQLite file (WAL mode), so a job's record outlives the process that
/// ran it. Writes go through the crate's group-commit writer, reads through a connection
/// of their own, as the other SQLite stores do.
#[derive(Clone, Debug)]
pub struct SqliteJobs {
    writer: Writer,
    reader: Reader,
}

const COLUMNS: &str = "id, owner, operation, model, n, status, created_at, started_at, \
                       finished_at, size, quality, background, output_format, output_created, \
                       generations, error, webhook, rerun, runner, lease_until, attempts";

/// Creates the tables, where they are not yet.
fn create(db: &Connection) -> Result<(), StoreError> {
    db.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA busy_timeout = 5000;
         CREATE TABLE IF NOT EXISTS jobs (
             id             TEXT PRIMARY KEY,
             owner          TEXT NOT NULL,
             operation      TEXT NOT NULL,
             model          TEXT NOT NULL,
             n              INTEGER NOT NULL,
             status         TEXT NOT NULL,
             created_at     INTEGER NOT NULL,
             started_at     INTEGER,
             finished_at    INTEGER,
             size           TEXT NOT NULL,
             quality        TEXT NOT NULL,
             background     TEXT NOT NULL,
             output_format  TEXT NOT NULL,
             output_created INTEGER,
             generations    TEXT,
             error          TEXT,
             webhook        TEXT
         );
         CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, id);
         CREATE INDEX IF NOT EXISTS jobs_open ON jobs (status)
             WHERE status IN ('queued', 'running');
         CREATE TABLE IF NOT EXISTS deliveries (
             id       TEXT PRIMARY KEY,
             url      TEXT NOT NULL,
             body     TEXT NOT NULL,
             attempts INTEGER NOT NULL,
             next_at  INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_at);",
    )
    .map_err(StoreError::new)?;
    // Added after the table's first version: an async job's request, kept so another run
    // can take it over, and who runs it until when.
    if db.prepare("SELECT rerun FROM jobs LIMIT 0").is_err() {
        db.execute_batch(
            "ALTER TABLE jobs ADD COLUMN rerun TEXT;
             ALTER TABLE jobs ADD COLUMN runner TEXT;
             ALTER TABLE jobs ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;",
        )
        .map_err(StoreError::new)?;
    }
    Ok(())
}

impl SqliteJobs {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let db = Connection::open(path).map_err(StoreError::new)?;
        create(&db)?;
        let reader = Reader::open(path).map_err(StoreError::new)?;
        Ok(SqliteJobs {
            writer: Writer::start(db, "sqlite-jobs-writer").map_err(StoreError::new)?,
            reader,
        })
    }

    /// Job records in the database of `generations`, written through its writer: a job's
    /// record joins the batch of the generation records written beside it, one commit for
    /// both, instead of a commit and a thread of its own.
    pub fn beside(generations: &crate::generations::SqliteGenerations) -> Result<Self, StoreError> {
        let (path, writer, reader) = generations.shared();
        create(&Connection::open(path).map_err(StoreError::new)?)?;
        Ok(SqliteJobs { writer, reader })
    }

    /// Writes `job`'s columns with `sql`; with `claim`, its rerun, lease and attempts too
    /// (?18 to ?21).
    async fn write(
        &self,
        sql: &'static str,
        job: &JobRecord,
        claim: bool,
    ) -> Result<(), StoreError> {
        use rusqlite::types::Value;
        let job = job.clone();
        self.writer
            .submit(false, move |tx| {
                let mut statement = tx.prepare_cached(sql).map_err(StoreError::new)?;
                let created = job.output.as_ref().map(|o| o.created as i64);
                let generations = job.output.as_ref().map(JobOutput::ids_column);
                let mut values: Vec<Value> = Vec::new();
                if claim {
                    let rerun = job.rerun.as_ref().map(super::Rerun::to_column);
                    let lease = job.lease.as_ref();
                    values.extend([
                        rerun.map_or(Value::Null, Value::Text),
                        lease.map_or(Value::Null, |l| Value::Text(l.runner.clone())),
                        Value::Integer(lease.map_or(0, |l| l.until as i64)),
                        Value::Integer(i64::from(job.attempts)),
                    ]);
                }
                let fixed = params![
                    job.id.to_string(),
                    job.owner.as_str(),
                    job.operation.as_str(),
                    job.model,
                    job.n,
                    job.status.as_str(),
                    job.created_at as i64,
                    job.started_at.map(|t| t as i64),
                    job.finished_at.map(|t| t as i64),
                    job.echo.size,
                    job.echo.quality,
                    job.echo.background,
                    job.echo.output_format,
                    created,
                    generations,
                    job.error,
                    job.webhook,
                ];
                let all = fixed
                    .iter()
                    .copied()
                    .chain(values.iter().map(|v| v as &dyn rusqlite::ToSql));
                statement
                    .execute(rusqlite::params_from_iter(all))
                    .map(drop)
                    .map_err(StoreError::new)
            })
            .await
    }

    async fn select(
        &self,
        sql: &'static str,
        values: Vec<rusqlite::types::Value>,
    ) -> Result<Vec<JobRecord>, StoreError> {
        self.reader
            .read(move |db| {
                let mut statement = db.prepare_cached(sql).map_err(StoreError::new)?;
                let rows = statement
                    .query_map(rusqlite::params_from_iter(values), record_of)
                    .map_err(StoreError::new)?;
                let mut jobs = Vec::new();
                for row in rows {
                    jobs.push(row.map_err(StoreError::new)??);
                }
                Ok(jobs)
            })
            .await
    }
}

/// A row, as [`COLUMNS`] orders it. Rows are only written by this store, so one that does
/// not parse is corruption, answered as a store error.
fn record_of(row: &Row<'_>) -> rusqlite::Result<Result<JobRecord, StoreError>> {
    let corrupt = |what: &str| StoreError::new(format!("corrupt job record: {what}"));
    let text = |i: usize| row.get::<_, String>(i);
    let time = |i: usize| {
        row.get::<_, Option<i64>>(i)
            .map(|t| t.map(|t| t.max(0) as u64))
    };
    let (id, owner, operation, status) = (text(0)?, text(1)?, text(2)?, text(5)?);
    let generations: Option<String> = row.get(14)?;
    let output_created = time(13)?;
    let rerun: Option<String> = row.get(17)?;
    let runner: Option<String> = row.get(18)?;
    let lease_until: i64 = row.get(19)?;
    let attempts: i64 = row.get(20)?;
    let record = (|| {
        let output = JobOutput::from_columns(output_created, generations)?;
        Ok(JobRecord {
            id: JobId::parse(&id).map_err(|_| corrupt("id"))?,
            owner: UserId::new(&owner).map_err(|_| corrupt("owner"))?,
            operation: Operation::parse(&operation).ok_or_else(|| corrupt("operation"))?,
            model: text(3).map_err(StoreError::new)?,
            n: row.get(4).map_err(StoreError::new)?,
            status: JobStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
            created_at: time(6).map_err(StoreError::new)?.unwrap_or(0),
            started_at: time(7).map_err(StoreError::new)?,
            finished_at: time(8).map_err(StoreError::new)?,
            echo: Echo {
                size: text(9).map_err(StoreError::new)?,
                quality: text(10).map_err(StoreError::new)?,
                background: text(11).map_err(StoreError::new)?,
                output_format: text(12).map_err(StoreError::new)?,
            },
            output,
            error: row.get(15).map_err(StoreError::new)?,
            webhook: row.get(16).map_err(StoreError::new)?,
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
    })();
    Ok(record)
}

#[async_trait]
impl JobRecords for SqliteJobs {
    async fn insert(&self, job: &JobRecord) -> Result<(), StoreError> {
        self.write(
            "INSERT INTO jobs (id, owner, operation, model, n, status, created_at, started_at,
                               finished_at, size, quality, background, output_format,
                               output_created, generations, error, webhook, rerun,
                               runner, lease_until, attempts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                     ?17, ?18, ?19, ?20, ?21)",
            job,
            true,
        )
        .await
    }

    async fn update(&self, job: &JobRecord) -> Result<(), StoreError> {
        // The owner (?2) is the key's second half: a record never changes hands.
        self.write(
            "UPDATE jobs SET operation = ?3, model = ?4, n = ?5, status = ?6, created_at = ?7,
                             started_at = ?8, finished_at = ?9, size = ?10, quality = ?11,
                             background = ?12, output_format = ?13, output_created = ?14,
                             generations = ?15, error = ?16, webhook = ?17
             WHERE id = ?1 AND owner = ?2",
            job,
            false,
        )
        .await
    }

    async fn get(&self, owner: &UserId, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        let (owner, id) = (owner.as_str().to_owned(), id.to_string());
        self.reader
            .read(move |db| {
                let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1 AND owner = ?2");
                let mut statement = db.prepare_cached(&sql).map_err(StoreError::new)?;
                statement
                    .query_row(params![id, owner], record_of)
                    .optional()
                    .map_err(StoreError::new)?
                    .transpose()
            })
            .await
    }

    async fn list(
        &self,
        owner: &UserId,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        use rusqlite::types::Value;
        let after = after.map_or(Value::Null, |a| Value::Text(a.to_string()));
        self.select(
            "SELECT id, owner, operation, model, n, status, created_at, started_at, finished_at,
                    size, quality, background, output_format, output_created, generations, error,
                    webhook, rerun, runner, lease_until, attempts
             FROM jobs WHERE owner = ?1 AND (?2 IS NULL OR id < ?2) ORDER BY id DESC LIMIT ?3",
            vec![
                Value::Text(owner.as_str().to_owned()),
                after,
                Value::Integer(limit as i64),
            ],
        )
        .await
    }

    async fn open(&self, owner: &UserId, since: u64) -> Result<u64, StoreError> {
        let owner = owner.as_str().to_owned();
        self.reader
            .read(move |db| {
                let mut statement = db
                    .prepare_cached(
                        "SELECT count(*) FROM jobs
                         WHERE owner = ?1 AND status IN ('queued', 'running')
                         AND created_at >= ?2",
                    )
                    .map_err(StoreError::new)?;
                statement
                    .query_row(params![owner, since as i64], |row| row.get::<_, i64>(0))
                    .map(|count| count.max(0) as u64)
                    .map_err(StoreError::new)
            })
            .await
    }

    async fn claim(
        &self,
        lease: &super::Lease,
        before: u64,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let lease = lease.clone();
        // One writer: no two claims run at once, so none takes a job another took.
        self.writer
            .submit(true, move |tx| {
                let sql = format!(
                    "UPDATE jobs SET runner = ?1, lease_until = ?2, attempts = attempts + 1
                     WHERE id IN (SELECT id FROM jobs WHERE status IN ('queued', 'running')
                                  AND lease_until < ?3 AND runner IS NOT ?1
                                  ORDER BY id LIMIT ?4)
                     RETURNING {COLUMNS}"
                );
                let mut statement = tx.prepare_cached(&sql).map_err(StoreError::new)?;
                let rows = statement
                    .query_map(
                        params![
                            lease.runner,
                            i64::try_from(lease.until).unwrap_or(i64::MAX),
                            i64::try_from(before).unwrap_or(i64::MAX),
                            i64::try_from(limit).unwrap_or(i64::MAX)
                        ],
                        record_of,
                    )
                    .map_err(StoreError::new)?;
                let mut jobs = Vec::new();
                for row in rows {
                    jobs.push(row.map_err(StoreError::new)??);
                }
                Ok(jobs)
            })
            .await
    }

    async fn renew(&self, lease: &super::Lease) -> Result<(), StoreError> {
        let lease = lease.clone();
        self.writer
            .submit(false, move |tx| {
                tx.execute(
                    "UPDATE jobs SET lease_until = ?2
                     WHERE runner = ?1 AND status IN ('queued', 'running')",
                    params![lease.runner, lease.until as i64],
                )
                .map(drop)
                .map_err(StoreError::new)
            })
            .await
    }

    async fn enqueue(&self, delivery: &Delivery) -> Result<(), StoreError> {
        let d = delivery.clone();
        self.writer
            .submit(false, move |tx| {
                tx.execute(
                    "INSERT OR IGNORE INTO deliveries (id, url, body, attempts, next_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![d.id, d.url, d.body, d.attempts, d.next_at as i64],
                )
                .map(drop)
                .map_err(StoreError::new)
            })
            .await
    }

    async fn due(&self, now: u64, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        self.reader
            .read(move |db| {
                let mut statement = db
                    .prepare_cached(
                        "SELECT id, url, body, attempts, next_at FROM deliveries
                         WHERE next_at <= ?1 ORDER BY next_at LIMIT ?2",
                    )
                    .map_err(StoreError::new)?;
                let rows = statement
                    .query_map(params![now as i64, limit as i64], |row| {
                        Ok(Delivery {
                            id: row.get(0)?,
                            url: row.get(1)?,
                            body: row.get(2)?,
                            attempts: row.get(3)?,
                            next_at: row.get::<_, i64>(4)?.max(0) as u64,
                        })
                    })
                    .map_err(StoreError::new)?;
                rows.collect::<Result<_, _>>().map_err(StoreError::new)
            })
            .await
    }

    async fn attempted(
        &self,
        id: &str,
        attempts: u32,
        next_at: Option<u64>,
    ) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.writer
            .submit(true, move |tx| {
                match next_at {
                    None => tx.execute("DELETE FROM deliveries WHERE id = ?1", params![id]),
                    Some(at) => tx.execute(
                        "UPDATE deliveries SET attempts = ?2, next_at = ?3 WHERE id = ?1",
                        params![id, attempts, at as i64],
                    ),
                }
                .map(drop)
                .map_err(StoreError::new)
            })
            .await
    }

    async fn forget(&self, before: u64) -> Result<usize, StoreError> {
        self.writer
            .submit(false, move |tx| {
                tx.execute(
                    "DELETE FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled')
                     AND finished_at < ?1",
                    params![before as i64],
                )
                .map_err(StoreError::new)
            })
            .await
    }
}
