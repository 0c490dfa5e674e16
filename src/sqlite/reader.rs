//! The read side beside a [`Writer`](super::Writer): a connection of its own, read-only, so
//! reads never queue behind a batch's commit.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use super::DbFailed;

/// A read-only connection to a database whose writes go through its writer.
#[derive(Clone, Debug)]
pub(crate) struct Reader {
    db: Arc<Mutex<Connection>>,
}

impl Reader {
    /// Opens `path` for reading; it waits up to 5 s for a lock rather than failing.
    pub(crate) fn open(path: &Path) -> rusqlite::Result<Reader> {
        let db = Connection::open(path)?;
        db.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA query_only = ON;")?;
        Ok(Reader {
            db: Arc::new(Mutex::new(db)),
        })
    }

    /// Runs `work` on the blocking pool, in one read transaction (one snapshot).
    pub(crate) async fn read<T, E, F>(&self, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbFailed> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let db = self.db.clone();
        let failed = |error: &dyn std::fmt::Display| DbFailed(error.to_string());
        tokio::task::spawn_blocking(move || {
            let mut db = db.lock().unwrap_or_else(|e| e.into_inner());
            let tx = db.transaction().map_err(|e| failed(&e))?;
            work(&tx)
        })
        .await
        .map_err(|e| failed(&e))?
    }
}
