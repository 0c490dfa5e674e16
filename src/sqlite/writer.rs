//! Group commit: one thread owns a database's write connection and commits every operation
//! waiting for it in one transaction, so concurrent requests share one commit (and, with
//! `synchronous = FULL`, one fsync) instead of taking turns at the file.
//!
//! Each operation runs inside a savepoint of the batch's transaction: one that fails (an
//! insufficient balance, an unknown hold) is rolled back alone, the others commit. Callers
//! are answered only once the batch's commit returned, so an answer is never ahead of what is
//! on disk; a failed commit answers every operation of the batch with the error.

use std::sync::mpsc;

use rusqlite::Connection;
use tokio::sync::oneshot;

/// Why the database gave no answer of the operation's own: its batch's commit failed, the
/// writer is gone, or a read could not start. Each store turns it into its own error type.
#[derive(Debug)]
pub(crate) struct DbFailed(pub(crate) String);

impl std::fmt::Display for DbFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DbFailed {}

/// The most operations one commit takes: enough to share an fsync among every request a
/// busy gateway has in flight, small enough that a batch's first caller does not wait long.
const MAX_BATCH: usize = 64;

/// One queued operation: runs on the writer's transaction, answers after the commit.
trait Operation: Send {
    /// Runs the work inside the batch's transaction; `false` when it failed (its savepoint
    /// is rolled back).
    fn run(&mut self, db: &Connection) -> bool;
    /// Answers the caller: the work's result once `committed` is `Ok`, else the commit's
    /// error.
    fn answer(self: Box<Self>, committed: Result<(), &rusqlite::Error>);
}

struct Pending<T, E, F> {
    work: Option<F>,
    result: Option<Result<T, E>>,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<T, E, F> Operation for Pending<T, E, F>
where
    T: Send,
    E: From<DbFailed> + Send,
    F: FnOnce(&Connection) -> Result<T, E> + Send,
{
    fn run(&mut self, db: &Connection) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let result = work(db);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn answer(self: Box<Self>, committed: Result<(), &rusqlite::Error>) {
        let result = match (committed, self.result) {
            (Ok(()), Some(result)) => result,
            (Err(error), _) => Err(DbFailed(error.to_string()).into()),
            (Ok(()), None) => Err(DbFailed("the operation never ran".into()).into()),
        };
        // A caller that stopped waiting (a cancelled request) learns nothing; what was
        // committed stays committed (the stores' writes are idempotent or expected to land
        // after their caller left).
        let _ = self.reply.send(result);
    }
}

struct Job {
    op: Box<dyn Operation>,
    /// Fsynced whatever the durability setting (deposits).
    durable: bool,
}

/// The handle callers queue operations on; the thread stops when every handle is dropped.
#[derive(Clone, Debug)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the thread `name` that owns `db`. `relaxed` is the connection's usual
    /// `synchronous = NORMAL` (then a durable operation is committed alone under `FULL`).
    pub(crate) fn start(db: Connection, name: &str, relaxed: bool) -> std::io::Result<Writer> {
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(db, queue, relaxed))?;
        Ok(Writer { jobs })
    }

    /// Runs `work` in the next batch (on the writer's connection, inside the batch's
    /// transaction) and answers once it is committed.
    pub(crate) async fn submit<T, E, F>(&self, durable: bool, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbFailed> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op = Box::new(Pending {
            work: Some(work),
            result: None,
            reply,
        });
        let stopped = || DbFailed("the database's writer has stopped".into());
        self.jobs.send(Job { op, durable }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn run(db: Connection, queue: mpsc::Receiver<Job>, relaxed: bool) {
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match queue.recv() {
                Ok(job) => job,
                Err(_) => return, // every handle dropped
            },
        };
        if first.durable {
            commit(&db, vec![first], relaxed);
            continue;
        }
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                // A durable operation waits for the next commit of its own.
                Ok(job) if job.durable => {
                    carried = Some(job);
                    break;
                }
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit(&db, batch, false);
    }
}

/// Runs `batch` in one transaction and answers each operation after the commit.
fn commit(db: &Connection, mut batch: Vec<Job>, fsync: bool) {
    if fsync {
        if let Err(error) = db.execute_batch("PRAGMA synchronous = FULL;") {
            return answer_all(batch, Err(&error));
        }
    }
    // Every statement, the transaction's own included, is prepared once per connection:
    // `BEGIN` and `COMMIT` are parsed again on each batch otherwise.
    let step = |sql: &str| db.prepare_cached(sql)?.execute([]).map(drop);
    let committed = step("BEGIN IMMEDIATE").and_then(|()| {
        for job in &mut batch {
            step("SAVEPOINT op")?;
            // A panicking operation fails alone: the thread (and every later caller) lives on.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.op.run(db)));
            if !ran.unwrap_or(false) {
                step("ROLLBACK TO op")?;
            }
            step("RELEASE op")?;
        }
        step("COMMIT")
    });
    // A batch that failed before or at its commit leaves nothing behind (SQLite may have
    // rolled it back itself already, then the connection is back in autocommit).
    if committed.is_err() && !db.is_autocommit() {
        if let Err(error) = step("ROLLBACK") {
            tracing::error!(%error, "rolling back a failed batch failed");
        }
    }
    if fsync {
        if let Err(error) = db.execute_batch("PRAGMA synchronous = NORMAL;") {
            tracing::error!(%error, "restoring a database's synchronous setting failed");
        }
    }
    answer_all(batch, committed.as_ref().map(|_| ()));
}

fn answer_all(batch: Vec<Job>, committed: Result<(), &rusqlite::Error>) {
    for job in batch {
        job.op.answer(committed);
    }
}
