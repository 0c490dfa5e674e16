//! The SQLite ledger's tables and durability settings.

/// How hard each commit is pushed to disk.
///
/// Only a settle has to reach the disk before its answer: it is what makes delivered images
/// paid for. A hold, a renewal, a release and the expiry sweep are committed without an
/// fsync under either setting. A power cut can lose only the last of them, never one that a
/// synced commit came after (SQLite appends commits to the WAL in order, and each fsync
/// flushes all of it), and losing them loses nothing owed: a hold that vanishes vanishes
/// with the request that made it (the process is gone), and a hold whose release or
/// renewal vanished is released by the sweep at the next start. Deposits are fsynced under
/// either setting: a credit is never rolled back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Every settle is fsynced before it is answered; survives power loss. The default.
    #[default]
    PowerLoss,
    /// Settles survive a crash or kill of the process, and the WAL is fsynced at checkpoints;
    /// a power loss may roll back the last commits, to a consistent earlier state
    /// (conservation still holds). Faster for a lone caller; under concurrent load group
    /// commit shares each fsync among the waiting operations, and the difference all but
    /// vanishes.
    ProcessCrash,
}

pub(super) const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA busy_timeout = 5000;
CREATE TABLE IF NOT EXISTS accounts (
    account   TEXT PRIMARY KEY,
    available INTEGER NOT NULL DEFAULT 0,
    held      INTEGER NOT NULL DEFAULT 0 CHECK (held >= 0),
    charged   INTEGER NOT NULL DEFAULT 0 CHECK (charged >= 0),
    deposited INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS holds (
    id         TEXT PRIMARY KEY,
    account    TEXT NOT NULL,
    amount     INTEGER NOT NULL CHECK (amount >= 0),
    expires_at INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    model      TEXT NOT NULL,
    units      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS holds_expiry ON holds (expires_at);
CREATE TABLE IF NOT EXISTS journal (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    account        TEXT NOT NULL,
    kind           TEXT NOT NULL,
    amount         INTEGER NOT NULL,
    hold_id        TEXT,
    reference      TEXT,
    request_id     TEXT,
    model          TEXT,
    units          INTEGER,
    units_returned INTEGER,
    at             INTEGER NOT NULL
);
-- Holds that ended; an expired one (expired = 1) is what a late settle charges, once.
CREATE TABLE IF NOT EXISTS ended_holds (
    id         TEXT PRIMARY KEY,
    account    TEXT NOT NULL,
    amount     INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    model      TEXT NOT NULL,
    units      INTEGER NOT NULL,
    expired    INTEGER NOT NULL,
    -- What a settle (in time or late) charged, and for how many images.
    charged        INTEGER,
    units_returned INTEGER
);
CREATE INDEX IF NOT EXISTS journal_account ON journal (account, seq);
CREATE UNIQUE INDEX IF NOT EXISTS deposit_reference ON journal (account, reference)
    WHERE kind = 'deposit';
";

/// Columns added after the first schema, added to a database made before them: the key a
/// hold was taken with (for the usage log's `key` filter), on a hold's end entry the
/// amount it held and on a settle the upstream that rendered, and on an ended hold what
/// its settle charged.
pub(super) fn add_columns(db: &rusqlite::Connection) -> rusqlite::Result<()> {
    for (table, column, kind) in [
        ("holds", "key_id", "TEXT"),
        ("ended_holds", "key_id", "TEXT"),
        ("journal", "key_id", "TEXT"),
        ("journal", "held", "INTEGER"),
        ("ended_holds", "charged", "INTEGER"),
        ("ended_holds", "units_returned", "INTEGER"),
        ("journal", "upstream", "TEXT"),
    ] {
        let present = db
            .prepare(&format!(
                "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
            ))?
            .exists([column])?;
        if !present {
            db.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}
