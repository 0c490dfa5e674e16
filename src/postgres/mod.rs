//! PostgreSQL: one database that every replica of a gateway shares (feature `postgres`).
//!
//! # Guarantees
//! - [`Postgres::connect`] brings the schema up to date before it returns. Migrations are
//!   numbered and each is applied once, all in one transaction under an advisory lock, so
//!   replicas that start together apply each exactly once and a failed start applies none.
//! - Every operation of the ledger, the generation records, the idempotency records and the
//!   key store is one statement or one transaction, keyed by account, hold, generation, key:
//!   the rules of each trait hold across processes, not just within one.
//!
//! The statements a request runs are prepared once per pooled connection
//! (`prepare_cached`): a statement sent as text alone is parsed and described by the server
//! on every call, one more round trip each time. What every edit writes (its hold and its
//! end, its generation records) goes through one group commit per process: a task
//! that commits every such statement waiting at one moment in one transaction.
//!
//! Its parts are [`PgLedger`](crate::ledger::PgLedger),
//! [`PgGenerations`](crate::generations::PgGenerations),
//! [`PgIdempotency`](crate::idempotency::PgIdempotency) and [`PgKeys`](crate::auth::PgKeys),
//! each made from one shared [`Postgres`].

mod committer;
mod schema;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::{NoTls, Row};

use self::committer::Committer;
pub(crate) use self::committer::{Account, Statement};
use crate::BoxError;

/// Connections a [`Postgres`] keeps open at most.
const POOL_SIZE: usize = 16;

/// A pool of connections to one PostgreSQL database whose schema is up to date. Cheap to
/// clone; clones share the pool.
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
    committer: Committer,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: it is never kept, so never printed.
        let status = self.pool.status();
        f.debug_struct("Postgres")
            .field("connections", &status.size)
            .finish_non_exhaustive()
    }
}

impl Postgres {
    /// Connects to `url` (`postgres://user:password@host:port/database`, the libpq form;
    /// `?options=-csearch_path%3Dschema` picks a schema) and migrates the schema.
    pub async fn connect(url: &str) -> Result<Postgres, BoxError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| format!("the database URL is not valid: {e}"))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // A pooled connection the server closed (a restart, an idle timeout) is
                // replaced, not used; no extra round trip per use (20% of a hold's time).
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager).max_size(POOL_SIZE).build()?;
        let db = Postgres {
            committer: Committer::new(pool.clone()),
            pool,
        };
        let mut client = db.client().await?;
        schema::migrate(&mut client).await?;
        Ok(db)
    }

    /// A connection from the pool.
    pub(crate) async fn client(&self) -> Result<Object, BoxError> {
        Ok(self.pool.get().await?)
    }

    /// Runs `op` in the next group commit (see [`committer`]); its rows once committed.
    pub(crate) async fn commit(&self, op: impl Statement) -> Result<Vec<Row>, BoxError> {
        self.committer.run(Box::new(op)).await
    }
}

/// Unix seconds as PostgreSQL's `BIGINT`; the gateway's times are far below `i64::MAX`.
pub(crate) fn seconds(unix: u64) -> i64 {
    i64::try_from(unix).unwrap_or(i64::MAX)
}
