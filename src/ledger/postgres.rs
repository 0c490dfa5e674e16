use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

use super::{
    deadline, hold_refusal, Amount, Balance, EntryKind, Hold, HoldId, JournalEntry, Ledger,
    LedgerError, Memo, Settlement,
};
use crate::auth::UserId;
use crate::clock::unix_now;
use crate::postgres::{seconds, Postgres};

/// A ledger in PostgreSQL, shared by every replica.
///
/// Each operation is one transaction at `READ COMMITTED` whose every change is guarded by the
/// row it claims: a hold locks its account's row (`SELECT ... FOR UPDATE`) from the check to
/// the reservation, a hold ends
/// by the `DELETE ... RETURNING` of its row, a late settle by clearing the `expired` flag of
/// its ended row. Two replicas that race for one hold (a settle and another replica's expiry
/// sweep) serialize on that row, and the second finds it gone: every hold ends exactly once
/// and no account is overdrawn, however many replicas share the database.
#[derive(Clone, Debug)]
pub struct PgLedger {
    db: Postgres,
}

impl PgLedger {
    /// The ledger in `db`.
    pub fn new(db: Postgres) -> Self {
        PgLedger { db }
    }

    /// Runs `work` in one transaction, committed when it returns `Ok`.
    async fn transaction<T>(
        &self,
        work: impl for<'t> FnOnce(
            &'t Transaction<'t>,
        )
            -> futures_util::future::BoxFuture<'t, Result<T, LedgerError>>,
    ) -> Result<T, LedgerError> {
        let mut client = self.db.client().await.map_err(LedgerError::Storage)?;
        let tx = client.transaction().await.map_err(storage)?;
        let value = work(&tx).await?;
        tx.commit().await.map_err(storage)?;
        Ok(value)
    }
}

fn storage(error: tokio_postgres::Error) -> LedgerError {
    LedgerError::Storage(error.into())
}

/// A hold as its row keeps it: open in `holds`, or ended in `ended_holds`.
struct HoldRow {
    account: String,
    amount: i64,
    request_id: String,
    model: String,
    units: i32,
    key_id: Option<String>,
}

/// The columns [`HoldRow::of`] reads, in its order.
const HOLD_COLUMNS: &str = "account, amount, request_id, model, units, key_id";

impl HoldRow {
    /// From [`HOLD_COLUMNS`].
    fn of(row: &Row) -> HoldRow {
        HoldRow {
            account: row.get(0),
            amount: row.get(1),
            request_id: row.get(2),
            model: row.get(3),
            units: row.get(4),
            key_id: row.get(5),
        }
    }
}

async fn ensure_account(tx: &Transaction<'_>, account: &str) -> Result<(), LedgerError> {
    tx.execute(
        "INSERT INTO accounts (account) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&account],
    )
    .await
    .map_err(storage)?;
    Ok(())
}

/// Ends the open hold `id` inside `tx`; `false` when it was not open.
async fn end_hold(
    tx: &Transaction<'_>,
    id: HoldId,
    charge: Amount,
    units_returned: Option<u32>,
    kind: EntryKind,
) -> Result<bool, LedgerError> {
    let uuid = id.as_uuid();
    let Some(row) = tx
        .query_opt(
            &format!("DELETE FROM holds WHERE id = $1 RETURNING {HOLD_COLUMNS}"),
            &[&uuid],
        )
        .await
        .map_err(storage)?
    else {
        return Ok(false);
    };
    let hold = HoldRow::of(&row);
    if charge.signed() > hold.amount {
        return Err(LedgerError::ChargeExceedsHold);
    }
    tx.execute(
        "INSERT INTO ended_holds (id, account, amount, request_id, model, units, expired, key_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &uuid,
            &hold.account,
            &hold.amount,
            &hold.request_id,
            &hold.model,
            &hold.units,
            &(kind == EntryKind::Expire),
            &hold.key_id,
        ],
    )
    .await
    .map_err(storage)?;
    tx.execute(
        "UPDATE accounts SET held = held - $2, charged = charged + $3,
                available = available + $2 - $3 WHERE account = $1",
        &[&hold.account, &hold.amount, &charge.signed()],
    )
    .await
    .map_err(storage)?;
    journal_end(tx, &hold, kind, charge, id, units_returned).await?;
    Ok(true)
}

/// Appends the journal entry of a hold's end.
async fn journal_end(
    tx: &Transaction<'_>,
    hold: &HoldRow,
    kind: EntryKind,
    charge: Amount,
    id: HoldId,
    units_returned: Option<u32>,
) -> Result<(), LedgerError> {
    let returned = units_returned.map(|u| i32::try_from(u).unwrap_or(i32::MAX));
    tx.execute(
        "INSERT INTO journal (account, kind, amount, hold_id, request_id, model, units,
                              units_returned, at, key_id, held)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &[
            &hold.account,
            &kind.as_str(),
            &charge.signed(),
            &id.as_uuid(),
            &hold.request_id,
            &hold.model,
            &hold.units,
            &returned,
            &seconds(unix_now()),
            &hold.key_id,
            &hold.amount,
        ],
    )
    .await
    .map_err(storage)?;
    Ok(())
}

/// Whether `id` is a hold that ended (settled, released or expired).
async fn has_ended(tx: &Transaction<'_>, id: HoldId) -> Result<bool, LedgerError> {
    let row = tx
        .query_opt("SELECT 1 FROM ended_holds WHERE id = $1", &[&id.as_uuid()])
        .await
        .map_err(storage)?;
    Ok(row.is_some())
}

/// Settles a hold that is no longer open: charges an expired one from the available
/// balance, once (claimed by clearing its `expired` flag); changes nothing for one that was
/// settled or released.
async fn settle_ended(
    tx: &Transaction<'_>,
    id: HoldId,
    charge: Amount,
    units_returned: u32,
) -> Result<Settlement, LedgerError> {
    let claimed = tx
        .query_opt(
            &format!(
                "UPDATE ended_holds SET expired = false WHERE id = $1 AND expired
                 RETURNING {HOLD_COLUMNS}"
            ),
            &[&id.as_uuid()],
        )
        .await
        .map_err(storage)?;
    let Some(row) = claimed else {
        return if has_ended(tx, id).await? {
            Ok(Settlement::AlreadyEnded)
        } else {
            Err(LedgerError::UnknownHold)
        };
    };
    let hold = HoldRow::of(&row);
    if charge.signed() > hold.amount {
        return Err(LedgerError::ChargeExceedsHold);
    }
    tx.execute(
        "UPDATE accounts SET charged = charged + $2, available = available - $2
         WHERE account = $1",
        &[&hold.account, &charge.signed()],
    )
    .await
    .map_err(storage)?;
    let kind = EntryKind::LateSettle;
    journal_end(tx, &hold, kind, charge, id, Some(units_returned)).await?;
    Ok(Settlement::AfterExpiry)
}

#[async_trait]
impl Ledger for PgLedger {
    async fn hold(
        &self,
        account: &UserId,
        amount: Amount,
        ttl: Duration,
        memo: Memo,
    ) -> Result<Hold, LedgerError> {
        let owner = account.as_str().to_owned();
        let id = HoldId::new();
        self.transaction(|tx| {
            Box::pin(async move {
                ensure_account(tx, &owner).await?;
                // The account's row is locked from the check to the reservation: no other
                // transaction can spend the same money in between.
                let row = tx
                    .query_one(
                        "SELECT available FROM accounts WHERE account = $1 FOR UPDATE",
                        &[&owner],
                    )
                    .await
                    .map_err(storage)?;
                hold_refusal(row.get(0), amount)?;
                tx.execute(
                    "UPDATE accounts SET available = available - $2, held = held + $2
                     WHERE account = $1",
                    &[&owner, &amount.signed()],
                )
                .await
                .map_err(storage)?;
                let now = unix_now();
                let units = i32::try_from(memo.units_requested).unwrap_or(i32::MAX);
                tx.execute(
                    "INSERT INTO holds (id, account, amount, expires_at, request_id, model, units,
                                        key_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    &[
                        &id.as_uuid(),
                        &owner,
                        &amount.signed(),
                        &seconds(deadline(now, ttl)),
                        &memo.request_id,
                        &memo.model,
                        &units,
                        &memo.key,
                    ],
                )
                .await
                .map_err(storage)?;
                tx.execute(
                    "INSERT INTO journal (account, kind, amount, hold_id, request_id, model,
                                          units, at, key_id)
                     VALUES ($1, 'hold', $2, $3, $4, $5, $6, $7, $8)",
                    &[
                        &owner,
                        &amount.signed(),
                        &id.as_uuid(),
                        &memo.request_id,
                        &memo.model,
                        &units,
                        &seconds(now),
                        &memo.key,
                    ],
                )
                .await
                .map_err(storage)?;
                Ok(())
            })
        })
        .await?;
        Ok(Hold {
            id,
            account: account.clone(),
            amount,
        })
    }

    async fn settle(
        &self,
        hold: HoldId,
        charge: Amount,
        units_returned: u32,
    ) -> Result<Settlement, LedgerError> {
        self.transaction(|tx| {
            Box::pin(async move {
                if end_hold(tx, hold, charge, Some(units_returned), EntryKind::Settle).await? {
                    return Ok(Settlement::Settled);
                }
                settle_ended(tx, hold, charge, units_returned).await
            })
        })
        .await
    }

    async fn release(&self, hold: HoldId) -> Result<(), LedgerError> {
        self.transaction(|tx| {
            Box::pin(async move {
                if end_hold(tx, hold, Amount::ZERO, None, EntryKind::Release).await? {
                    return Ok(());
                }
                // An expired hold released: nothing was delivered, so no late settle may
                // charge it.
                let closed = tx
                    .execute(
                        "UPDATE ended_holds SET expired = false WHERE id = $1",
                        &[&hold.as_uuid()],
                    )
                    .await
                    .map_err(storage)?;
                if closed == 0 {
                    return Err(LedgerError::UnknownHold);
                }
                Ok(())
            })
        })
        .await
    }

    async fn renew(&self, hold: HoldId, ttl: Duration) -> Result<bool, LedgerError> {
        self.transaction(|tx| {
            Box::pin(async move {
                let renewed = tx
                    .execute(
                        "UPDATE holds SET expires_at = $2 WHERE id = $1",
                        &[&hold.as_uuid(), &seconds(deadline(unix_now(), ttl))],
                    )
                    .await
                    .map_err(storage)?;
                if renewed > 0 {
                    Ok(true)
                } else if has_ended(tx, hold).await? {
                    Ok(false)
                } else {
                    Err(LedgerError::UnknownHold)
                }
            })
        })
        .await
    }

    async fn balance(&self, account: &UserId) -> Result<Balance, LedgerError> {
        let client = self.db.client().await.map_err(LedgerError::Storage)?;
        let row = client
            .query_opt(
                "SELECT available, held, charged, deposited FROM accounts WHERE account = $1",
                &[&account.as_str()],
            )
            .await
            .map_err(storage)?;
        Ok(row.map_or_else(Balance::default, |r| Balance {
            available: r.get(0),
            held: r.get::<_, i64>(1).max(0) as u64,
            charged: r.get::<_, i64>(2).max(0) as u64,
            deposited: r.get(3),
        }))
    }

    async fn deposit(
        &self,
        account: &UserId,
        amount: i64,
        reference: &str,
    ) -> Result<bool, LedgerError> {
        let owner = account.as_str().to_owned();
        let reference = reference.to_owned();
        self.transaction(|tx| {
            Box::pin(async move {
                ensure_account(tx, &owner).await?;
                let inserted = tx
                    .execute(
                        "INSERT INTO journal (account, kind, amount, reference, at)
                         VALUES ($1, 'deposit', $2, $3, $4)
                         ON CONFLICT (account, reference) WHERE kind = 'deposit' DO NOTHING",
                        &[&owner, &amount, &reference, &seconds(unix_now())],
                    )
                    .await
                    .map_err(storage)?;
                if inserted == 0 {
                    return Ok(false);
                }
                // BIGINT arithmetic that overflows is an error, and the whole deposit (its
                // journal entry included) rolls back.
                tx.execute(
                    "UPDATE accounts SET available = available + $2, deposited = deposited + $2
                     WHERE account = $1",
                    &[&owner, &amount],
                )
                .await
                .map_err(|e| {
                    if e.code() == Some(&SqlState::NUMERIC_VALUE_OUT_OF_RANGE) {
                        LedgerError::Overflow
                    } else {
                        storage(e)
                    }
                })?;
                Ok(true)
            })
        })
        .await
    }

    async fn expire(&self, now: u64) -> Result<usize, LedgerError> {
        self.transaction(|tx| {
            Box::pin(async move {
                // Holds another transaction is ending right now are skipped, not waited for:
                // that one ends them.
                let due = tx
                    .query(
                        "SELECT id FROM holds WHERE expires_at <= $1 FOR UPDATE SKIP LOCKED",
                        &[&seconds(now)],
                    )
                    .await
                    .map_err(storage)?;
                let mut ended = 0;
                for row in due {
                    let id = HoldId::from_uuid(row.get(0));
                    if end_hold(tx, id, Amount::ZERO, None, EntryKind::Expire).await? {
                        ended += 1;
                    }
                }
                Ok(ended)
            })
        })
        .await
    }

    async fn journal(
        &self,
        account: &UserId,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, LedgerError> {
        let client = self.db.client().await.map_err(LedgerError::Storage)?;
        let after = i64::try_from(after_seq.unwrap_or(0)).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                "SELECT seq, kind, amount, hold_id, reference, request_id, model, units,
                        units_returned, at, key_id, held
                 FROM journal WHERE account = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                &[&account.as_str(), &after, &limit],
            )
            .await
            .map_err(storage)?;
        let corrupt = || LedgerError::Storage("corrupt journal row".into());
        rows.iter()
            .map(|r| {
                let units: Option<i32> = r.get(7);
                let memo = Memo::from_columns(r.get(5), r.get(6), units.map(i64::from))?
                    .map(|m| m.with_key(r.get(10)));
                let kind: String = r.get(1);
                Ok(JournalEntry {
                    seq: r.get::<_, i64>(0).max(0) as u64,
                    account: account.clone(),
                    kind: EntryKind::parse(&kind).ok_or_else(corrupt)?,
                    amount: r.get(2),
                    hold: r.get::<_, Option<uuid::Uuid>>(3).map(HoldId::from_uuid),
                    reference: r.get(4),
                    memo,
                    units_returned: r
                        .get::<_, Option<i32>>(8)
                        .and_then(|u| u32::try_from(u).ok()),
                    held: r
                        .get::<_, Option<i64>>(11)
                        .and_then(|h| u64::try_from(h).ok()),
                    at: r.get::<_, i64>(9).max(0) as u64,
                })
            })
            .collect()
    }
}
