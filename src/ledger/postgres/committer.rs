//! Group commit: one task per ledger owns a connection and commits every operation waiting
//! for it in one transaction, so concurrent holds and settles share one commit (one WAL
//! flush) instead of taking turns at their account's row, each holding it through its own.
//!
//! The batch is pipelined: `BEGIN`, every operation's prepared statement and `COMMIT` are
//! sent at once and answered in order, one round trip for the whole batch. Each operation
//! is one statement that is complete on its own ([`super::statement`]), so its answer
//! holds exactly when its transaction committed:
//! - every statement answered and `COMMIT` succeeded: each caller gets its statement's row;
//! - a statement failed: PostgreSQL aborted the transaction and the `COMMIT` rolled it back,
//!   so nothing of the batch happened; each caller runs its statement again on its own
//!   ([`Ran::Alone`]), where only the one that failed fails again;
//! - `BEGIN` or `COMMIT` failed (a connection lost): whether the batch committed is unknown;
//!   every caller gets the error, as a lone transaction's caller would.
//!
//! A batch of one is its statement alone, committed by itself.

use std::sync::{Arc, OnceLock};

use deadpool_postgres::Object;
use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Row;

use super::statement::Op;
use super::{storage, LedgerError};
use crate::postgres::Postgres;

/// The most operations one commit takes: enough to share a flush among every request a
/// busy replica has in flight, few enough that one batch's locks are not held for long.
const MAX_BATCH: usize = 64;

/// Operations waiting for the committer at most; a caller beyond it waits to queue.
const QUEUE: usize = 1_024;

/// What became of a queued operation.
pub(super) enum Ran {
    /// Its statement's answer, committed.
    Row(Row),
    /// Not run, or run in a batch that was rolled back: the caller runs it alone.
    Alone(Op),
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Ran, LedgerError>>,
}

/// The handle callers queue operations on. The task starts on the first operation (on the
/// caller's runtime) and stops when every handle is dropped.
#[derive(Clone, Debug)]
pub(super) struct Committer {
    db: Postgres,
    jobs: Arc<OnceLock<mpsc::Sender<Job>>>,
}

impl Committer {
    pub(super) fn new(db: Postgres) -> Self {
        Committer {
            db,
            jobs: Arc::new(OnceLock::new()),
        }
    }

    /// Runs `op` in the next batch; answers once that batch's commit returned.
    pub(super) async fn run(&self, op: Op) -> Result<Ran, LedgerError> {
        let jobs = self.jobs.get_or_init(|| {
            let (jobs, queue) = mpsc::channel(QUEUE);
            tokio::spawn(serve(self.db.clone(), queue));
            jobs
        });
        let (reply, answer) = oneshot::channel();
        if let Err(refused) = jobs.send(Job { op, reply }).await {
            // The task is gone with the runtime it started on: the operation runs alone.
            return Ok(Ran::Alone(refused.0.op));
        }
        answer.await.unwrap_or_else(|_| {
            Err(LedgerError::Storage(
                "the ledger's committer stopped".into(),
            ))
        })
    }
}

/// The committer's task: takes what is queued, up to [`MAX_BATCH`], and commits it.
async fn serve(db: Postgres, mut queue: mpsc::Receiver<Job>) {
    let mut connection: Option<Object> = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let client = match connection.take() {
            Some(client) if !client.is_closed() => client,
            _ => match db.client().await {
                Ok(client) => client,
                Err(error) => {
                    let error = error.to_string();
                    for job in batch.drain(..) {
                        let _ = job
                            .reply
                            .send(Err(LedgerError::Storage(error.clone().into())));
                    }
                    continue;
                }
            },
        };
        // Holds in the order of their accounts: two replicas' batches of holds then take
        // the accounts' rows in one order and never deadlock on them.
        batch.sort_by(|a, b| a.op.account().cmp(&b.op.account()));
        if commit(&client, &mut batch).await {
            connection = Some(client);
        }
    }
}

/// Commits `batch` on `client` and answers every job of it; `false` when the connection is
/// not fit for another batch.
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
        let result = client.query_one(statement, &job.op.params()).await;
        let fit = result.is_ok() || !client.is_closed();
        if let Some(job) = batch.pop() {
            let _ = job.reply.send(result.map(Ran::Row).map_err(storage));
        }
        return fit;
    }

    // One pipeline, one round trip: tokio-postgres sends requests in the order they are
    // first polled, and `join!` and `join_all` poll in order.
    let rows = batch
        .iter()
        .zip(&statements)
        .map(|(job, statement)| async move {
            let params = job.op.params();
            client.query_one(statement, &params).await
        });
    let (begun, rows, committed) = futures_util::join!(
        client.batch_execute("BEGIN"),
        join_all(rows),
        client.batch_execute("COMMIT"),
    );
    if let Err(error) = begun {
        answer_all(batch, &error);
        return false;
    }
    if rows.iter().any(Result::is_err) {
        // The transaction was aborted at the failed statement and the `COMMIT` (if it
        // arrived) rolled it back: nothing of the batch stands.
        for job in batch.drain(..) {
            let _ = job.reply.send(Ok(Ran::Alone(job.op)));
        }
        return !client.is_closed();
    }
    if let Err(error) = committed {
        answer_all(batch, &error);
        return false;
    }
    for (job, row) in batch.drain(..).zip(rows) {
        let _ = job.reply.send(row.map(Ran::Row).map_err(storage));
    }
    true
}

fn answer_all(batch: &mut Vec<Job>, error: &tokio_postgres::Error) {
    for job in batch.drain(..) {
        let _ = job
            .reply
            .send(Err(LedgerError::Storage(error.to_string().into())));
    }
}
