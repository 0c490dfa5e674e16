use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use tokio_postgres::types::ToSql;

use super::{FileCursor, FileKey, FileMeta, FilePage, FileStore, StoreError, Usage};
use crate::auth::UserId;
use crate::clock::unix_now;
use crate::postgres::{seconds, Operation, Postgres};
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
/// An object is written before its index row, so a crash between the two leaves an object
/// no listing shows and no quota counts, never a listed file without bytes; a delete takes
/// the index row first, for the same reason. An object PUT is atomic: a reader sees the
/// whole file or none.
#[derive(Clone)]
pub struct S3FileStore {
    objects: Arc<dyn ObjectStore>,
    db: Postgres,
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
        S3FileStore { objects, db }
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

/// A stored file's row in the index, written with whatever else is waiting to commit: one
/// statement on the file's own row.
struct Indexed {
    key: String,
    owner: String,
    size: i64,
    created: i64,
}

impl Operation for Indexed {
    fn sql(&self) -> &'static str {
        "INSERT INTO files (key, owner, size, created) VALUES ($1, $2, $3, $4)
         ON CONFLICT (key) DO UPDATE SET size = EXCLUDED.size, created = EXCLUDED.created"
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.key, &self.owner, &self.size, &self.created]
    }
}

#[async_trait]
impl FileStore for S3FileStore {
    async fn put(&self, key: &FileKey, bytes: Bytes) -> Result<(), StoreError> {
        let size = bytes.len() as u64;
        self.objects
            .put(&path_of(key), PutPayload::from_bytes(bytes))
            .await
            .map_err(StoreError::new)?;
        let indexed = Indexed {
            key: key.as_str().to_owned(),
            owner: key.owner().as_str().to_owned(),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            created: seconds(unix_now()),
        };
        self.db.commit(indexed).await.map_err(StoreError::new)?;
        Ok(())
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
                        "SELECT key, size, created FROM files WHERE owner = $1
                         ORDER BY created DESC, key LIMIT $2",
                        &[&owner.as_str(), &fetch],
                    )
                    .await
            }
            Some(cursor) => {
                client
                    .query(
                        "SELECT key, size, created FROM files WHERE owner = $1
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
