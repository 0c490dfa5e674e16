//! Group commit: one thread owns a database's write connection and commits every operation
//! waiting for it in one transaction, so concurrent requests share one commit (and, with
//! `synchronous = FULL`, one fsync) instead of taking turns at the file.
//!
//! Each operation runs inside a savepoint of the batch's transaction: one that fails (an
//! insufficient balance, an unknown hold) is rolled back alone, the others commit. Callers
//! are answered only once the batch's commit returned, so an answer is never ahead of what is
//! on disk; a failed commit answers every operation of the batch with the error.
//!
//! Each operation says whether its answer must wait for an fsync. The connection runs at
//! `synchronous = NORMAL` (WAL: a commit survives a killed process, not a power cut); the
//! operations of a batch that need no fsync are committed and answered first, then those
//! that do, in a second commit under `FULL`. SQLite appends commits to the WAL in order, so
//! that fsync also makes every earlier commit durable: a power cut can lose only the last
//! unsynced commits, never one that a synced commit came after.

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
trait Write: Send {
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

impl<T, E, F> Write for Pending<T, E, F>
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
    op: Box<dyn Write>,
    /// Answered only after an fsync.
    fsync: bool,
}

/// The handle callers queue operations on; the thread stops when every handle is dropped.
#[derive(Clone, Debug)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the thread `name` that owns `db` (in WAL mode; the thread sets its
    /// `synchronous`).
    pub(crate) fn start(db: Connection, name: &str) -> std::io::Result<Writer> {
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(db, queue))?;
        Ok(Writer { jobs })
    }

    /// Runs `work` in the next batch (on the writer's connection, inside the batch's
    /// transaction) and answers once it is committed, and fsynced when `fsync`.
    pub(crate) async fn submit<T, E, F>(&self, fsync: bool, work: F) -> Result<T, E>
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
        self.jobs.send(Job { op, fsync }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn run(db: Connection, queue: mpsc::Receiver<Job>) {
    let mut synced = Synchronous::new(db);
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Every operation of the batch was in flight at once, so any order is one they
        // could have run in: those that wait for no fsync go first and are not held up by it.
        let (fsynced, relaxed): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|j| j.fsync);
        if !relaxed.is_empty() {
            commit(&mut synced, relaxed, false);
        }
        if !fsynced.is_empty() {
            commit(&mut synced, fsynced, true);
        }
    }
    // Every handle dropped.
}

/// The write connection and its `synchronous` setting, changed only when a commit needs the
/// other one.
struct Synchronous {
    db: Connection,
    full: Option<bool>,
}

impl Synchronous {
    fn new(db: Connection) -> Self {
        Synchronous { db, full: None }
    }

    /// The connection, set to fsync its commits or not.
    fn set(&mut self, full: bool) -> rusqlite::Result<&Connection> {
        if self.full != Some(full) {
            self.full = None;
            let pragma = if full {
                "PRAGMA synchronous = FULL"
            } else {
                "PRAGMA synchronous = NORMAL"
            };
            self.db.prepare_cached(pragma)?.execute([])?;
            self.full = Some(full);
        }
        Ok(&self.db)
    }
}

/// Runs `batch` in one transaction and answers each operation after the commit.
fn commit(synced: &mut Synchronous, mut batch: Vec<Job>, fsync: bool) {
    let db = match synced.set(fsync) {
        Ok(db) => db,
        Err(error) => return answer_all(batch, Err(&error)),
    };
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
    answer_all(batch, committed.as_ref().map(|_| ()));
}

fn answer_all(batch: Vec<Job>, committed: Result<(), &rusqlite::Error>) {
    for job in batch {
        job.op.answer(committed);
    }
}

#[cfg(test)]
mod tests {
    use super::{DbFailed, Writer};

    /// `PRAGMA synchronous` as the operation saw it: 1 is `NORMAL`, 2 `FULL`.
    fn synchronous(db: &rusqlite::Connection) -> Result<i64, DbFailed> {
        db.query_row("PRAGMA synchronous", [], |r| r.get(0))
            .map_err(|e| DbFailed(e.to_string()))
    }

    #[tokio::test]
    async fn only_operations_that_ask_for_an_fsync_are_committed_under_full() {
        let path = std::env::temp_dir().join(format!("igw-writer-{}.db", uuid::Uuid::new_v4()));
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v INTEGER);")
            .unwrap();
        let writer = Writer::start(db, "test-writer").unwrap();
        // Both kinds queued at once land in one batch, split in two commits.
        let ops = (0..16).map(|i| {
            let writer = writer.clone();
            async move {
                let fsync = i % 2 == 0;
                let seen = writer
                    .submit(fsync, move |db| {
                        db.execute("INSERT INTO t (v) VALUES (?1)", [i])
                            .map_err(|e| DbFailed(e.to_string()))?;
                        synchronous(db)
                    })
                    .await
                    .unwrap();
                (fsync, seen)
            }
        });
        for (fsync, seen) in futures_util::future::join_all(ops).await {
            assert_eq!(seen, if fsync { 2 } else { 1 }, "fsync asked: {fsync}");
        }
        let rows: i64 = writer
            .submit(false, |db| {
                db.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                    .map_err(|e| DbFailed(e.to_string()))
            })
            .await
            .unwrap();
        assert_eq!(rows, 16, "every operation of both commits landed");
        drop(writer);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
