use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::{
    deadline, hold_refusal, Amount, Balance, Charge, EntryKind, Hold, HoldId, JournalEntry, Ledger,
    LedgerError, Memo, Settlement,
};
use crate::auth::UserId;
use crate::clock::unix_now;

mod schema;

pub use schema::Durability;
use schema::SCHEMA;

use crate::sqlite::{DbFailed, Reader, Writer};

/// A ledger in a SQLite file, WAL mode.
///
/// Writes go through one writer thread that commits every operation waiting for it in one
/// `IMMEDIATE` transaction (group commit, in the crate's `sqlite` module): concurrent
/// requests share a commit and its fsync, and holds do not wait for settles' fsyncs (see
/// [`Durability`]). Reads (balances, the journal) use a connection of
/// their own and never wait for the writer. Several processes sharing the file still never
/// overdraw an account: each batch holds SQLite's write lock from its first check to its
/// commit.
#[derive(Clone, Debug)]
pub struct SqliteLedger {
    writer: Writer,
    reader: Reader,
    durability: Durability,
}

impl SqliteLedger {
    /// Opens (or creates) the ledger at `path`, fsyncing every settle and deposit.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LedgerError> {
        Self::open_with(path, Durability::PowerLoss)
    }

    /// Opens (or creates) the ledger at `path` with the given durability.
    pub fn open_with(path: impl AsRef<Path>, durability: Durability) -> Result<Self, LedgerError> {
        let path = path.as_ref();
        let db = Connection::open(path).map_err(storage)?;
        db.execute_batch(SCHEMA).map_err(storage)?;
        schema::add_columns(&db).map_err(storage)?;
        db.set_prepared_statement_cache_capacity(64);
        let reader = Reader::open(path).map_err(storage)?;
        Ok(SqliteLedger {
            writer: Writer::start(db, "sqlite-ledger-writer")
                .map_err(|e| LedgerError::Storage(e.into()))?,
            reader,
            durability,
        })
    }

    /// Runs `work` in the writer's next batch; answers once its commit returned, and was
    /// fsynced when `fsync`.
    async fn transaction<T: Send + 'static>(
        &self,
        fsync: bool,
        work: impl FnOnce(&rusqlite::Connection) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        self.writer.submit(fsync, work).await
    }

    /// Runs `work` on the read connection, in one read transaction (one snapshot).
    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&rusqlite::Connection) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        self.reader.read(work).await
    }
}

/// Runs one statement, prepared once per connection: the writer runs the same few
/// statements for every edit, so SQLite parses each once instead of on every call.
fn exec(
    tx: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params)
}

/// [`exec`] for a statement that answers one row.
fn query_row<T>(
    tx: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
    row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    tx.prepare_cached(sql)?.query_row(params, row)
}

impl From<DbFailed> for LedgerError {
    fn from(failed: DbFailed) -> Self {
        LedgerError::Storage(failed.into())
    }
}

fn storage(error: rusqlite::Error) -> LedgerError {
    LedgerError::Storage(error.into())
}

fn ensure_account(tx: &rusqlite::Connection, account: &UserId) -> Result<(), LedgerError> {
    exec(
        tx,
        "INSERT OR IGNORE INTO accounts (account) VALUES (?1)",
        params![account.as_str()],
    )
    .map_err(storage)?;
    Ok(())
}

/// Ends an open hold inside `tx`; `false` when it was not open.
fn end_hold(
    tx: &rusqlite::Connection,
    id: HoldId,
    charge: Amount,
    units_returned: Option<u32>,
    kind: EntryKind,
    upstream: Option<&str>,
) -> Result<bool, LedgerError> {
    let Some(hold) = hold_row(tx, OPEN_HOLD, id)? else {
        return Ok(false);
    };
    let HoldRow {
        account, amount, ..
    } = &hold;
    if charge.signed() > *amount {
        return Err(LedgerError::ChargeExceedsHold);
    }
    exec(
        tx,
        "DELETE FROM holds WHERE id = ?1",
        params![id.to_string()],
    )
    .map_err(storage)?;
    exec(
        tx,
        "INSERT INTO ended_holds (id, account, amount, request_id, model, units, expired, key_id,
                                  charged, units_returned)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            id.to_string(),
            account,
            amount,
            hold.request_id,
            hold.model,
            hold.units,
            kind == EntryKind::Expire,
            hold.key_id,
            units_returned.map(|_| charge.signed()),
            units_returned
        ],
    )
    .map_err(storage)?;
    exec(
        tx,
        "UPDATE accounts SET held = held - ?2, charged = charged + ?3,
                available = available + ?2 - ?3 WHERE account = ?1",
        params![account, amount, charge.signed()],
    )
    .map_err(storage)?;
    journal_end(tx, &hold, (kind, charge, id), units_returned, upstream)?;
    Ok(true)
}

/// A hold as a row keeps it: open in `holds`, or ended in `ended_holds`.
struct HoldRow {
    account: String,
    amount: i64,
    request_id: String,
    model: String,
    units: i64,
    /// For an ended hold: whether it expired and no late settle has charged it yet.
    expired: bool,
    key_id: Option<String>,
}

const OPEN_HOLD: &str =
    "SELECT account, amount, request_id, model, units, 0, key_id FROM holds WHERE id = ?1";
const ENDED_HOLD: &str = "SELECT account, amount, request_id, model, units, expired, key_id
     FROM ended_holds WHERE id = ?1";

/// The hold `id` by `query` ([`OPEN_HOLD`] or [`ENDED_HOLD`]), if there is one.
fn hold_row(
    tx: &rusqlite::Connection,
    query: &str,
    id: HoldId,
) -> Result<Option<HoldRow>, LedgerError> {
    query_row(tx, query, params![id.to_string()], |r| {
        Ok(HoldRow {
            account: r.get(0)?,
            amount: r.get(1)?,
            request_id: r.get(2)?,
            model: r.get(3)?,
            units: r.get(4)?,
            expired: r.get(5)?,
            key_id: r.get(6)?,
        })
    })
    .optional()
    .map_err(storage)
}

/// Appends the journal entry of a hold's end.
fn journal_end(
    tx: &rusqlite::Connection,
    hold: &HoldRow,
    (kind, charge, id): (EntryKind, Amount, HoldId),
    units_returned: Option<u32>,
    upstream: Option<&str>,
) -> Result<(), LedgerError> {
    exec(
        tx,
        "INSERT INTO journal (account, kind, amount, hold_id, request_id, model, units,
                              units_returned, at, key_id, held, upstream)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            hold.account,
            kind.as_str(),
            charge.signed(),
            id.to_string(),
            hold.request_id,
            hold.model,
            hold.units,
            units_returned,
            unix_now() as i64,
            hold.key_id,
            hold.amount,
            upstream
        ],
    )
    .map_err(storage)?;
    Ok(())
}

/// Settles a hold that is no longer open: charges an expired one from the available
/// balance, once; changes nothing for one that was settled or released.
fn settle_ended(
    tx: &rusqlite::Connection,
    id: HoldId,
    charge: Amount,
    units_returned: u32,
    upstream: Option<&str>,
) -> Result<Settlement, LedgerError> {
    let Some(hold) = hold_row(tx, ENDED_HOLD, id)? else {
        return Err(LedgerError::UnknownHold);
    };
    if !hold.expired {
        return Ok(Settlement::AlreadyEnded);
    }
    if charge.signed() > hold.amount {
        return Err(LedgerError::ChargeExceedsHold);
    }
    exec(
        tx,
        "UPDATE ended_holds SET expired = 0, charged = ?2, units_returned = ?3 WHERE id = ?1",
        params![id.to_string(), charge.signed(), units_returned],
    )
    .map_err(storage)?;
    exec(
        tx,
        "UPDATE accounts SET charged = charged + ?2, available = available - ?2
         WHERE account = ?1",
        params![hold.account, charge.signed()],
    )
    .map_err(storage)?;
    journal_end(
        tx,
        &hold,
        (EntryKind::LateSettle, charge, id),
        Some(units_returned),
        upstream,
    )?;
    Ok(Settlement::AfterExpiry)
}

/// Whether `id` is a hold that ended (settled, released or expired).
fn has_ended(tx: &rusqlite::Connection, id: HoldId) -> Result<bool, LedgerError> {
    query_row(
        tx,
        "SELECT 1 FROM ended_holds WHERE id = ?1",
        params![id.to_string()],
        |_| Ok(()),
    )
    .optional()
    .map(|row| row.is_some())
    .map_err(storage)
}

#[async_trait]
impl Ledger for SqliteLedger {
    async fn hold(
        &self,
        account: &UserId,
        amount: Amount,
        ttl: Duration,
        memo: Memo,
    ) -> Result<Hold, LedgerError> {
        let account = account.clone();
        self.transaction(false, move |tx| {
            ensure_account(tx, &account)?;
            let available: i64 = query_row(
                tx,
                "SELECT available FROM accounts WHERE account = ?1",
                params![account.as_str()],
                |r| r.get(0),
            )
            .map_err(storage)?;
            hold_refusal(available, amount)?;
            exec(
                tx,
                "UPDATE accounts SET available = available - ?2, held = held + ?2
                 WHERE account = ?1",
                params![account.as_str(), amount.signed()],
            )
            .map_err(storage)?;
            let id = HoldId::new();
            let now = unix_now();
            let expires_at = deadline(now, ttl);
            exec(
                tx,
                "INSERT INTO holds (id, account, amount, expires_at, request_id, model, units,
                                    key_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    id.to_string(),
                    account.as_str(),
                    amount.signed(),
                    expires_at as i64,
                    memo.request_id,
                    memo.model,
                    memo.units_requested,
                    memo.key
                ],
            )
            .map_err(storage)?;
            exec(
                tx,
                "INSERT INTO journal (account, kind, amount, hold_id, request_id, model, units, at,
                                      key_id)
                 VALUES (?1, 'hold', ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    account.as_str(),
                    amount.signed(),
                    id.to_string(),
                    memo.request_id,
                    memo.model,
                    memo.units_requested,
                    now as i64,
                    memo.key
                ],
            )
            .map_err(storage)?;
            Ok(Hold {
                id,
                account,
                amount,
            })
        })
        .await
    }

    async fn settle(
        &self,
        hold: HoldId,
        charge: Amount,
        units_returned: u32,
    ) -> Result<Settlement, LedgerError> {
        self.settle_from(hold, charge, units_returned, None).await
    }

    async fn settle_from(
        &self,
        hold: HoldId,
        charge: Amount,
        units_returned: u32,
        upstream: Option<&str>,
    ) -> Result<Settlement, LedgerError> {
        let upstream = upstream.map(str::to_owned);
        self.transaction(self.durability == Durability::PowerLoss, move |tx| {
            let upstream = upstream.as_deref();
            let settled = Some(units_returned);
            if end_hold(tx, hold, charge, settled, EntryKind::Settle, upstream)? {
                return Ok(Settlement::Settled);
            }
            settle_ended(tx, hold, charge, units_returned, upstream)
        })
        .await
    }

    async fn release(&self, hold: HoldId) -> Result<(), LedgerError> {
        self.transaction(false, move |tx| {
            if end_hold(tx, hold, Amount::ZERO, None, EntryKind::Release, None)? {
                return Ok(());
            }
            // An expired hold released: nothing was delivered, so no late settle may charge it.
            let closed = exec(
                tx,
                "UPDATE ended_holds SET expired = 0 WHERE id = ?1",
                params![hold.to_string()],
            )
            .map_err(storage)?;
            if closed == 0 {
                return Err(LedgerError::UnknownHold);
            }
            Ok(())
        })
        .await
    }

    async fn renew(&self, hold: HoldId, ttl: Duration) -> Result<bool, LedgerError> {
        self.transaction(false, move |tx| {
            let renewed = exec(
                tx,
                "UPDATE holds SET expires_at = ?2 WHERE id = ?1",
                params![hold.to_string(), deadline(unix_now(), ttl) as i64],
            )
            .map_err(storage)?;
            if renewed > 0 {
                Ok(true)
            } else if has_ended(tx, hold)? {
                Ok(false)
            } else {
                Err(LedgerError::UnknownHold)
            }
        })
        .await
    }

    async fn balance(&self, account: &UserId) -> Result<Balance, LedgerError> {
        let account = account.clone();
        self.read(move |tx| {
            let row = query_row(
                tx,
                "SELECT available, held, charged, deposited FROM accounts WHERE account = ?1",
                params![account.as_str()],
                |r| {
                    Ok(Balance {
                        available: r.get(0)?,
                        held: r.get::<_, i64>(1)?.max(0) as u64,
                        charged: r.get::<_, i64>(2)?.max(0) as u64,
                        deposited: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(storage)?;
            Ok(row.unwrap_or_default())
        })
        .await
    }

    async fn deposit(
        &self,
        account: &UserId,
        amount: i64,
        reference: &str,
    ) -> Result<bool, LedgerError> {
        let (account, reference) = (account.clone(), reference.to_owned());
        self.transaction(true, move |tx| {
            ensure_account(tx, &account)?;
            let inserted = exec(
                tx,
                "INSERT OR IGNORE INTO journal (account, kind, amount, reference, at)
                 VALUES (?1, 'deposit', ?2, ?3, ?4)",
                params![account.as_str(), amount, reference, unix_now() as i64],
            )
            .map_err(storage)?;
            if inserted == 0 {
                return Ok(false);
            }
            // SQLite turns an overflowing integer sum into a float; money never goes there.
            let (available, deposited): (i64, i64) = query_row(
                tx,
                "SELECT available, deposited FROM accounts WHERE account = ?1",
                params![account.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(storage)?;
            if available.checked_add(amount).is_none() || deposited.checked_add(amount).is_none() {
                return Err(LedgerError::Overflow);
            }
            exec(
                tx,
                "UPDATE accounts SET available = available + ?2, deposited = deposited + ?2
                 WHERE account = ?1",
                params![account.as_str(), amount],
            )
            .map_err(storage)?;
            Ok(true)
        })
        .await
    }

    async fn expire(&self, now: u64) -> Result<usize, LedgerError> {
        self.transaction(false, move |tx| {
            let due: Vec<String> = {
                let mut stmt = tx
                    .prepare_cached("SELECT id FROM holds WHERE expires_at <= ?1")
                    .map_err(storage)?;
                let rows = stmt
                    .query_map(params![now as i64], |r| r.get::<_, String>(0))
                    .map_err(storage)?;
                rows.collect::<Result<_, _>>().map_err(storage)?
            };
            let mut ended = 0;
            for id in due {
                let id = Uuid::parse_str(&id).map_err(|e| LedgerError::Storage(e.into()))?;
                if end_hold(
                    tx,
                    HoldId::from_uuid(id),
                    Amount::ZERO,
                    None,
                    EntryKind::Expire,
                    None,
                )? {
                    ended += 1;
                }
            }
            Ok(ended)
        })
        .await
    }

    async fn charged(&self, hold: HoldId) -> Result<Option<Charge>, LedgerError> {
        self.read(move |tx| {
            let row = query_row(
                tx,
                "SELECT charged, units_returned FROM ended_holds
                 WHERE id = ?1 AND charged IS NOT NULL AND units_returned IS NOT NULL",
                params![hold.to_string()],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()
            .map_err(storage)?;
            Ok(row.and_then(|(amount, units)| {
                let amount = Amount::new(u64::try_from(amount).ok()?);
                Some(Charge::new(amount, u32::try_from(units).ok()?))
            }))
        })
        .await
    }

    async fn journal(
        &self,
        account: &UserId,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, LedgerError> {
        let owner = account.clone();
        self.read(move |tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT seq, kind, amount, hold_id, reference, request_id, model, units,
                            units_returned, at, key_id, held, upstream
                     FROM journal WHERE account = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )
                .map_err(storage)?;
            let rows = stmt
                .query_map(
                    params![owner.as_str(), after_seq.unwrap_or(0) as i64, limit as i64],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, Option<String>>(4)?,
                            r.get::<_, Option<String>>(5)?,
                            r.get::<_, Option<String>>(6)?,
                            r.get::<_, Option<i64>>(7)?,
                            r.get::<_, Option<i64>>(8)?,
                            r.get::<_, i64>(9)?,
                            r.get::<_, Option<String>>(10)?,
                            r.get::<_, Option<i64>>(11)?,
                            r.get::<_, Option<String>>(12)?,
                        ))
                    },
                )
                .map_err(storage)?;
            let mut entries = Vec::new();
            for row in rows {
                let (
                    seq,
                    kind,
                    amount,
                    hold,
                    reference,
                    request_id,
                    model,
                    units,
                    returned,
                    at,
                    key,
                    held,
                    upstream,
                ) = row.map_err(storage)?;
                let corrupt = || LedgerError::Storage("corrupt journal row".into());
                let memo = Memo::from_columns(request_id, model, units)?.map(|m| m.with_key(key));
                entries.push(JournalEntry {
                    seq: seq as u64,
                    account: owner.clone(),
                    kind: EntryKind::parse(&kind).ok_or_else(corrupt)?,
                    amount,
                    hold: hold
                        .map(|h| Uuid::parse_str(&h).map(HoldId::from_uuid))
                        .transpose()
                        .map_err(|_| corrupt())?,
                    reference,
                    memo,
                    units_returned: returned.and_then(|u| u32::try_from(u).ok()),
                    held: held.and_then(|h| u64::try_from(h).ok()),
                    upstream,
                    at: at.max(0) as u64,
                });
            }
            Ok(entries)
        })
        .await
    }
}
