//! Where state lives: embedded in the data dir (SQLite), or in a PostgreSQL database that
//! several replicas share (`GATEWAY_DATABASE_URL`).

use std::error::Error;
use std::sync::Arc;

use image_gateway::auth::{KeyRegistry, KeyStore, PgKeys, SqliteKeys, WithFixedKeys};
use image_gateway::generations::{Generations, PgGenerations, SqliteGenerations};
use image_gateway::idempotency::{IdempotencyRecords, PgIdempotency, SqliteIdempotency};
use image_gateway::jobs::{JobRecords, PgJobs, SqliteJobs};
use image_gateway::ledger::{Durability, Ledger, PgLedger, SqliteLedger};
use image_gateway::postgres::Postgres;
use image_gateway::store::{FileStore, LocalFileStore, S3FileStore};

use super::keys::Keys;
use super::settings::Config;

/// The ledger, the records and the key store, as one configuration chose them.
pub struct Stores {
    pub ledger: Arc<dyn Ledger>,
    pub generations: Arc<dyn Generations>,
    pub idempotency: Arc<dyn IdempotencyRecords>,
    pub keys: Arc<dyn KeyStore>,
    /// The store of keys managed through the admin API, when the stores have one.
    pub registry: Option<Arc<dyn KeyRegistry>>,
    pub files: Arc<dyn FileStore>,
    /// Where job records are kept.
    pub jobs: Arc<dyn JobRecords>,
    /// Whether this process alone runs the jobs of its records (so, at start, the open
    /// ones were left by a run that died).
    pub sole_runner: bool,
    /// What to say on start.
    pub described: &'static str,
    /// The S3 store whose writes cut midway are swept, when files are in a bucket.
    pub bucket: Option<S3FileStore>,
}

impl Stores {
    /// PostgreSQL when a database URL is set (its schema migrated, the configured keys
    /// added to its key table), else SQLite files in the data dir: the configured keys in
    /// memory, the managed ones in `keys.db`.
    pub async fn open(config: &Config, keys: &Keys) -> Result<Stores, Box<dyn Error>> {
        let local = || -> Result<Arc<dyn FileStore>, Box<dyn Error>> {
            let store = LocalFileStore::open(&config.data_dir)?;
            Ok(Arc::new(store.min_free_bytes(config.min_free_bytes)))
        };
        let Some(url) = &config.database_url else {
            if config.s3.is_some() {
                return Err(
                    "GATEWAY_S3_BUCKET needs GATEWAY_DATABASE_URL: the bucket's \
                            index is kept in PostgreSQL"
                        .into(),
                );
            }
            let dir = &config.data_dir;
            let managed = SqliteKeys::open(dir.join("keys.db"))
                .map_err(|e| format!("cannot open the key store (keys.db): {e}"))?;
            let registry: Arc<dyn KeyRegistry> =
                Arc::new(WithFixedKeys::new(keys.to_static()?, Arc::new(managed)));
            let generations = SqliteGenerations::open(dir.join("generations.db"))?;
            // Job records beside the generation records: one writer, one commit for both.
            let jobs = SqliteJobs::beside(&generations)?;
            return Ok(Stores {
                // Every settle and deposit fsynced before it is answered: with group commit,
                // concurrent edits share the fsync, and the load harness measures no cost
                // over crash-only durability.
                ledger: Arc::new(SqliteLedger::open_with(
                    dir.join("ledger.db"),
                    Durability::PowerLoss,
                )?),
                generations: Arc::new(generations),
                idempotency: Arc::new(SqliteIdempotency::open(dir.join("generations.db"))?),
                keys: Arc::new(registry.clone()),
                registry: Some(registry),
                files: local()?,
                jobs: Arc::new(jobs),
                sole_runner: true,
                described: "SQLite in the data dir",
                bucket: None,
            });
        };
        let db = Postgres::connect(url)
            .await
            .map_err(|e| format!("cannot use the database (GATEWAY_DATABASE_URL): {e}"))?;
        // The configured keys become managed keys (listed, revocable); those taken out of
        // the configuration are revoked, so removing one ends it on every replica.
        let stored = PgKeys::new(db.clone());
        let origin = if keys.demo.is_some() {
            "demo"
        } else {
            "configured"
        };
        for (user, key) in &keys.entries {
            stored
                .add(user, key, origin)
                .await
                .map_err(|e| format!("cannot store the configured keys: {e}"))?;
        }
        let kept: Vec<&str> = match keys.demo {
            Some(_) => Vec::new(),
            None => keys.entries.iter().map(|(_, key)| key.as_str()).collect(),
        };
        let retired = stored
            .retire_configured(&kept)
            .await
            .map_err(|e| format!("cannot retire removed configured keys: {e}"))?;
        if retired > 0 {
            tracing::info!(retired, "keys taken out of GATEWAY_API_KEYS revoked");
        }
        let bucket = match &config.s3 {
            Some(s3) => Some(
                S3FileStore::s3(s3, db.clone())
                    .map_err(|e| format!("cannot use the S3 bucket (GATEWAY_S3_*): {e}"))?,
            ),
            None => None,
        };
        let files: Arc<dyn FileStore> = match &bucket {
            Some(bucket) => Arc::new(bucket.clone()),
            None => local()?,
        };
        Ok(Stores {
            files,
            jobs: Arc::new(PgJobs::new(db.clone())),
            sole_runner: false,
            ledger: Arc::new(PgLedger::new(db.clone())),
            generations: Arc::new(PgGenerations::new(db.clone())),
            idempotency: Arc::new(PgIdempotency::new(db)),
            keys: Arc::new(stored.clone()),
            registry: Some(Arc::new(stored)),
            described: "PostgreSQL (GATEWAY_DATABASE_URL)",
            bucket,
        })
    }
}
