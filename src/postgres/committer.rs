//! Group commit: one task per [`Postgres`](super::Postgres) owns a connection and commits
//! every statement waiting for it in one transaction, so concurrent edits share one commit
//! (one WAL flush, one server process woken) instead of each taking a connection, a
//! transaction and, for a hold, its turn at the account's row.
//!
//! The batch is pipelined: `BEGIN`, every prepared statement and `COMMIT` are sent at once
//! and answered in order, one round trip for the whole batch. Each [`Statement`] is one
//! statement that is complete on its own, so whether its answer stands is whether its
//! transaction committed:
//! - every statement answered and `COMMIT` succeeded: each caller gets its rows;
//! - the server refused a statement: it aborted the transaction, and the `COMMIT` (if it
//!   arrived) rolled it back, so nothing of the batch happened; each caller runs its
//!   statement again on its own ([`Ran::Alone`]), where only the one that failed fails again;
//! - `BEGIN` or `COMMIT` failed with no statement refused (a connection lost): whether the
//!   batch committed is unknown, and every caller gets the error, as a lone transaction's
//!   caller would.
//!
//! A batch of one is its statement alone, committed by itself.

use std::sync::{Arc, OnceLock};

use deadpool_postgres::{Object, Pool};
use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::BoxError;

/// The most statements one commit takes: enough to share a flush among every request a
/// busy replica has in flight, few enough that one batch's locks are not held for long.
const MAX_BATCH: usize = 64;

/// Statements waiting for the committer at most; a caller beyond it waits to queue.
const QUEUE: usize = 1_024;

/// One statement for the committer. Its contract: it is complete on its own (committed
/// alone or in any batch, it does the same), and it touches only rows it locks itself.
pub(crate) trait Statement: Send + Sync + 'static {
    /// The statement's text; each connection prepares it once and keeps it.
    fn sql(&self) -> &'static str;

    /// Its parameters, in its order.
    fn params(&self) -> Vec<&(dyn ToSql + Sync)>;

    /// The ledger account it changes, which other replicas' statements may change at once.
    /// A batch locks all of its accounts first, in one order (see [`LOCK_ACCOUNTS`]).
    fn account(&self) -> Account<'_> {
        Account::None
    }
}

/// The account an [`Statement`] changes.
pub(crate) enum Account<'a> {
    /// None (a generation record, a hold's renewal).
    None,
    /// This one (a hold).
    Named(&'a str),
    /// The one of this open hold (its end).
    OfHold(uuid::Uuid),
}

/// The first statement of a batch that changes accounts: locks every account it changes, in
/// the order of their names (PostgreSQL locks the rows of a `FOR UPDATE` after it sorted
/// them). Every batch takes its accounts in that one order, so two replicas' batches never
/// wait for each other in a circle: without it, one batch ending a hold of account A (whose
/// row the end finds on the hold) while holding B, and another the other way round, is a
/// deadlock PostgreSQL resolves only after `deadlock_timeout` (1 s by default), by aborting
/// one. A hold that is gone by then has no account to lock; its end changes nothing.
const LOCK_ACCOUNTS: &str = "
SELECT account FROM accounts
WHERE account = ANY($1::text[])
   OR account IN (SELECT account FROM holds WHERE id = ANY($2::uuid[]))
ORDER BY account
FOR UPDATE";

/// What became of a queued statement.
enum Ran {
    /// Its rows, committed.
    Rows(Vec<Row>),
    /// Not run, or run in a batch that was rolled back: the caller runs it alone.
    Alone(Box<dyn Statement>),
}

struct Job {
    op: Box<dyn Statement>,
    reply: oneshot::Sender<Result<Ran, BoxError>>,
}

/// The handle callers queue statements on. The task starts on the first statement (on the
/// caller's runtime) and stops when every handle is dropped.
#[derive(Clone)]
pub(super) struct Committer {
    pool: Pool,
    jobs: Arc<OnceLock<mpsc::Sender<Job>>>,
}

impl Committer {
    pub(super) fn new(pool: Pool) -> Self {
        Committer {
            pool,
            jobs: Arc::new(OnceLock::new()),
        }
    }

    /// Runs `op` in the next batch, or alone when its batch was rolled back; answers its
    /// rows once they are committed.
    pub(super) async fn run(&self, op: Box<dyn Statement>) -> Result<Vec<Row>, BoxError> {
        let jobs = self.jobs.get_or_init(|| {
            let (jobs, queue) = mpsc::channel(QUEUE);
            tokio::spawn(serve(self.pool.clone(), queue));
            jobs
        });
        let (reply, answer) = oneshot::channel();
        let ran = match jobs.send(Job { op, reply }).await {
            Ok(()) => answer
                .await
                .map_err(|_| BoxError::from("the database's committer stopped"))??,
            // The task is gone with the runtime it started on: the statement runs alone.
            Err(refused) => Ran::Alone(refused.0.op),
        };
        match ran {
            Ran::Rows(rows) => Ok(rows),
            Ran::Alone(op) => {
                let client = self.pool.get().await?;
                let statement = client.prepare_cached(op.sql()).await?;
                Ok(client.query(&statement, &op.params()).await?)
            }
        }
    }
}

/// The committer's task: takes what is queued, up to [`MAX_BATCH`], and commits it.
async fn serve(pool: Pool, mut queue: mpsc::Receiver<Job>) {
    let mut connection: Option<Object> = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let client = match connection.take() {
            Some(client) if !client.is_closed() => client,
            _ => match pool.get().await {
                Ok(client) => client,
                Err(error) => {
                    answer_all(&mut batch, &error);
                    continue;
                }
            },
        };
        if commit(&client, &mut batch).await {
            connection = Some(client);
        } else {
            // A connection that failed a batch is not used again, by this task or the pool:
            // its server process may have ended without the client knowing yet.
            drop(Object::take(client));
        }
    }
}

/// Commits `batch` on `client` and answers every job of it; `false` when anything failed.
async fn commit(client: &Object, batch: &mut Vec<Job>) -> bool {
    let mut statements = Vec::with_capacity(batch.len());
    for job in batch.iter() {
        match client.prepare_cached(job.op.sql()).await {
            Ok(statement) => statements.push(statement),
            Err(error) => {
                answer_all(batch, &error);
                return false;
            }
        }
    }
    if let ([job], [statement]) = (batch.as_slice(), statements.as_slice()) {
        let result = client.query(statement, &job.op.params()).await;
        let fit = result.is_ok();
        if let Some(job) = batch.pop() {
            let _ = job
                .reply
                .send(result.map(Ran::Rows).map_err(BoxError::from));
        }
        return fit;
    }

    let (mut named, mut of_holds) = (Vec::new(), Vec::new());
    for job in batch.iter() {
        match job.op.account() {
            Account::None => {}
            Account::Named(account) => named.push(account),
            Account::OfHold(hold) => of_holds.push(hold),
        }
    }
    let lock = if named.is_empty() && of_holds.is_empty() {
        None
    } else {
        match client.prepare_cached(LOCK_ACCOUNTS).await {
            Ok(lock) => Some(lock),
            Err(error) => {
                answer_all(batch, &error);
                return false;
            }
        }
    };

    // One pipeline, one round trip: tokio-postgres sends requests in the order they are
    // first polled, and `join!` and `join_all` poll in order.
    let locked = async {
        match &lock {
            Some(lock) => client.query(lock, &[&named, &of_holds]).await.map(drop),
            None => Ok(()),
        }
    };
    let rows = batch
        .iter()
        .zip(&statements)
        .map(|(job, statement)| async move {
            let params = job.op.params();
            client.query(statement, &params).await
        });
    let (begun, locked, rows, committed) = futures_util::join!(
        client.batch_execute("BEGIN"),
        locked,
        join_all(rows),
        client.batch_execute("COMMIT"),
    );
    if let Err(error) = begun {
        answer_all(batch, &error);
        return false;
    }
    if refused(&locked) || rows.iter().any(refused) {
        for job in batch.drain(..) {
            let _ = job.reply.send(Ok(Ran::Alone(job.op)));
        }
        return false;
    }
    if let Err(error) = committed {
        answer_all(batch, &error);
        return false;
    }
    for (job, rows) in batch.drain(..).zip(rows) {
        let _ = job.reply.send(rows.map(Ran::Rows).map_err(BoxError::from));
    }
    true
}

/// Whether the server refused the statement, which proves its transaction aborted; an error
/// of the client's own (a lost connection) proves nothing.
fn refused<T>(result: &Result<T, tokio_postgres::Error>) -> bool {
    result.as_ref().is_err_and(|e| e.as_db_error().is_some())
}

fn answer_all(batch: &mut Vec<Job>, error: &dyn std::fmt::Display) {
    for job in batch.drain(..) {
        let _ = job.reply.send(Err(error.to_string().into()));
    }
}
