use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use tokio_postgres::types::ToSql;

use super::{FileCursor, FileKey, FileMeta, FilePage, FileStore, Quota, StoreError, Usage};
use crate::auth::UserId;
use crate::clock::{unix_now, Clock};
use crate::postgres::{seconds, Postgres, Statement};
use crate::BoxError;

/// Where an S3-compatible bucket is, and the credentials to use it.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct S3Config {
    /// The service's URL (`https://s3.eu-west-1.amazonaws.com`, `http://127.0.0.1:9000`);
    /// `None` for AWS by region.
    pub endpoint: Option<String>,
    /// The bucket, which must exist.
    pub bucket: String,
    /// The region (`us-east-1` unless the service says otherwise).
    pub region: String,
    /// The access key id; `None` takes it from the environment (`AWS_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// The secret access key; `None` takes it from the environment.
    pub secret_access_key: Option<String>,
}

impl S3Config {
    /// The bucket `bucket` in `region`, credentials from the environment.
    pub fn new(bucket: impl Into<String>, region: impl Into<String>) -> Self {
        S3Config {
            bucket: bucket.into(),
            region: region.into(),
            ..S3Config::default()
        }
    }
}

/// Files in an S3-compatible bucket, one object per key, with an index in PostgreSQL.
///
/// The bytes are in the bucket under the file's key (`files/{user}/{uuid}_{name}`); who
/// owns which file, its size and its time are in the database, so a page of a listing
/// (newest first) and a quota check are one indexed query, not a walk of the bucket. Both
/// are shared by every replica: a file stored by one is read, listed and deleted by another.
///
/// A write takes three steps: its index row, pending (counted by quotas, listed by
/// nobody); the object; the row marked stored. A writer dropped or killed between any two
/// leaves a pending row, which [`sweep_pending`](Self::sweep_pending) ends (the object
/// deleted if it was written, then the row): no object outlives a write unaccounted, and
/// no listed file lacks its bytes. With a quota ([`FileStore::put_within`]) the pending row
/// is written under a per-owner lock after the owner's usage is summed, so replicas writing
/// for one owner at once cannot pass it. A delete takes the index row first. An object PUT
/// is atomic: a reader sees the whole file or none.
#[derive(Clone)]
pub struct S3FileStore {
    objects: Arc<dyn ObjectStore>,
    db: Postgres,
    clock: Clock,
}

impl std::fmt::Debug for S3FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3FileStore")
            .field("objects", &self.objects.to_string())
            .finish_non_exhaustive()
    }
}

impl S3FileStore {
    /// A store over `objects` (any `object_store` backend), indexed in `db`.
    pub fn new(objects: Arc<dyn ObjectStore>, db: Postgres) -> Self {
        S3FileStore {
            objects,
            db,
            clock: Clock::system(),
        }
    }

    /// The same store dating its files by `clock` (default: the system's).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// A store over the bucket `config` names, indexed in `db`.
    pub fn s3(config: &S3Config, db: Postgres) -> Result<Self, BoxError> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region);
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(id) = &config.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        Ok(S3FileStore::new(Arc::new(builder.build()?), db))
    }
}

fn path_of(key: &FileKey) -> Path {
    // Keys are plain ASCII segments (checked at parse), so they are paths as they stand.
    Path::from(key.as_str())
}

/// A written object's row marked stored, with whatever else is waiting to commit: one
/// statement on the file's own row.
struct Stored {
    key: String,
}

impl Statement for Stored {
    fn sql(&self) -> &'static str {
        "UPDATE files SET pending = false WHERE key = $1"
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.key]
    }
}

impl S3FileStore {
    /// Writes `bytes` under `key` in the three steps of the type's docs; with `quota`, the
    /// pending row only if the owner's usage with it stays within.
    async fn write(
        &self,
        key: &FileKey,
        bytes: Bytes,
        quota: Option<Quota>,
    ) -> Result<(), StoreError> {
        let size = bytes.len() as u64;
        self.pending(key, size, quota).await?;
        if let Err(error) = self
            .objects
            .put(&path_of(key), PutPayload::from_bytes(bytes))
            .await
        {
            // Nothing (or nothing whole) was stored: the row goes; left, the sweep takes it.
            if let Ok(client) = self.db.client().await {
                let _ = client
                    .execute(
                        "DELETE FROM files WHERE key = $1 AND pending",
                        &[&key.as_str()],
                    )
                    .await;
            }
            return Err(StoreError::new(error));
        }
        let stored = Stored {
            key: key.as_str().to_owned(),
        };
        self.db.commit(stored).await.map_err(StoreError::new)?;
        Ok(())
    }

    /// The file's index row, pending; with `quota`, written in one transaction with the
    /// owner's usage summed under a lock of that owner, and refused past the quota.
    async fn pending(
        &self,
        key: &FileKey,
        size: u64,
        quota: Option<Quota>,
    ) -> Result<(), StoreError> {
        let mut client = self.db.client().await.map_err(StoreError::new)?;
        let tx = client.transaction().await.map_err(StoreError::new)?;
        let owner = key.owner().as_str();
        if let Some(quota) = quota {
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&owner])
                .await
                .map_err(StoreError::new)?;
            // The file's own row, if it replaces one, does not count twice.
            let row = tx
                .query_one(
                    "SELECT COALESCE(SUM(size), 0)::BIGINT, COUNT(*) FROM files
                     WHERE owner = $1 AND key <> $2",
                    &[&owner, &key.as_str()],
                )
                .await
                .map_err(StoreError::new)?;
            let (bytes, files): (i64, i64) = (row.get(0), row.get(1));
            let used = Usage::new(bytes.max(0) as u64, files.max(0) as u64);
            let adding = Usage::new(size, 1);
            if !quota.allows(used.plus(adding)) {
                return Err(StoreError::quota_exceeded(used, adding, quota));
            }
        }
        tx.execute(
            "INSERT INTO files (key, owner, size, created, pending) VALUES ($1, $2, $3, $4, true)
             ON CONFLICT (key) DO UPDATE
             SET size = EXCLUDED.size, created = EXCLUDED.created, pending = true",
            &[
                &key.as_str(),
                &owner,
                &i64::try_from(size).unwrap_or(i64::MAX),
                &seconds(self.clock.now()),
            ],
        )
        .await
        .map_err(StoreError::new)?;
        tx.commit().await.map_err(StoreError::new)
    }

    /// Ends the writes left pending for longer than `older_than` (their writer was dropped
    /// or died): each one's object is deleted if it was written, then its row. Answers how
    /// many were ended. Run it now and then, on any replica.
    pub async fn sweep_pending(
        &self,
        older_than: std::time::Duration,
    ) -> Result<usize, StoreError> {
        let client = self.db.client().await.map_err(StoreError::new)?;
        let before = seconds(unix_now().saturating_sub(older_than.as_secs()));
        let rows = client
            .query(
                "SELECT key FROM files WHERE pending AND created <= $1 LIMIT 1000",
                &[&before],
            )
            .await
            .map_err(StoreError::new)?;
        let mut ended = 0;
        for row in rows {
            let key: &str = row.get(0);
            match self.objects.delete(&Path::from(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => return Err(StoreError::new(error)),
            }
            // Only if still pending: a write of the same key that finished meanwhile stays.
            ended += client
                .execute(
                    "DELETE FROM files WHERE key = $1 AND pending AND created <= $2",
                    &[&key, &before],
                )
                .await
                .map_err(StoreError::new)? as usize;
        }
        Ok(ended)
    }
}

#[async_trait]
impl FileStore for S3FileStore {
    async fn put(&self, key: &FileKey, bytes: Bytes) -> Result<(), StoreError> {
        self.write(key, bytes, None).await
    }

    async fn put_within(
        &self,
        key: &FileKey,
        bytes: Bytes,
        quota: Quota,
    ) -> Result<(), StoreError> {
        self.write(key, bytes, Some(quota)).await
    }

    async fn get(&self, key: &FileKey) -> Result<Option<Bytes>, StoreError> {
        match self.objects.get(&path_of(key)).await {
            Ok(object) => Ok(Some(object.bytes().await.map_err(StoreError::new)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(StoreError::new(error)),
        }
    }

    async fn delete(&self, key: &FileKey) -> Result<bool, StoreError> {
        let client = self.db.client().await.map_err(StoreError::new)?;
        let indexed = client
            .execute("DELETE FROM files WHERE key = $1", &[&key.as_str()])
            .await
            .map_err(StoreError::new)?;
        match self.objects.delete(&path_of(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(indexed > 0),
            Err(error) => Err(StoreError::new(error)),
        }
    }

    async fn list(
        &self,
        owner: &UserId,
        after: Option<&FileCursor>,
        limit: usize,
    ) -> Result<FilePage, StoreError> {
        let client = self.db.client().await.map_err(StoreError::new)?;
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
        // Newest first, then by key: the rows after the cursor in that order.
        let rows = match after {
            None => {
                client
                    .query(
                        "SELECT key, size, created FROM files WHERE owner = $1 AND NOT pending
                         ORDER BY created DESC, key LIMIT $2",
                        &[&owner.as_str(), &fetch],
                    )
                    .await
            }
            Some(cursor) => {
                client
                    .query(
                        "SELECT key, size, created FROM files WHERE owner = $1 AND NOT pending
                           AND (created < $2 OR (created = $2 AND key > $3))
                         ORDER BY created DESC, key LIMIT $4",
                        &[
                            &owner.as_str(),
                            &seconds(cursor.created()),
                            &cursor.key().as_str(),
                            &fetch,
                        ],
                    )
                    .await
            }
        }
        .map_err(StoreError::new)?;
        let has_more = rows.len() > limit;
        let files = rows
            .iter()
            .take(limit)
            .map(|row| {
                let key = FileKey::parse(row.get(0))
                    .ok_or_else(|| StoreError::new("corrupt key in the files index"))?;
                let size: i64 = row.get(1);
                let created: i64 = row.get(2);
                Ok(FileMeta::new(
                    key,
                    size.max(0) as u64,
                    created.max(0) as u64,
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(FilePage::new(files, has_more))
    }

    async fn usage(&self, owner: &UserId) -> Result<Usage, StoreError> {
        let client = self.db.client().await.map_err(StoreError::new)?;
        let sum = client
            .prepare_cached(
                "SELECT COALESCE(SUM(size), 0)::BIGINT, COUNT(*) FROM files WHERE owner = $1",
            )
            .await
            .map_err(StoreError::new)?;
        let row = client
            .query_one(&sum, &[&owner.as_str()])
            .await
            .map_err(StoreError::new)?;
        let (bytes, files): (i64, i64) = (row.get(0), row.get(1));
        Ok(Usage::new(bytes.max(0) as u64, files.max(0) as u64))
    }
}
