//! The ledger's general transactions: every case of every operation, statement by
//! statement, under the rows they lock. Holds, ends and renewals run here only when their
//! one statement ([`super::statement`]) found an uncommon case; deposits and the expiry
//! sweep always do.

use std::time::Duration;

use deadpool_postgres::Transaction;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

use super::super::{
    deadline, hold_refusal, Amount, EntryKind, HoldId, LedgerError, Memo, Settlement,
};
use super::{storage, units};
use crate::clock::unix_now;
use crate::postgres::seconds;

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

pub(super) async fn ensure_account(tx: &Transaction<'_>, account: &str) -> Result<(), LedgerError> {
    tx.execute(
        "INSERT INTO accounts (account) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&account],
    )
    .await
    .map_err(storage)?;
    Ok(())
}

/// Ends the open hold `id` inside `tx`; `false` when it was not open.
pub(super) async fn end_hold(
    tx: &Transaction<'_>,
    id: HoldId,
    charge: Amount,
    units_returned: Option<u32>,
    kind: EntryKind,
    upstream: Option<&str>,
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
        "INSERT INTO ended_holds (id, account, amount, request_id, model, units, expired, key_id,
                                  charged, units_returned)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &uuid,
            &hold.account,
            &hold.amount,
            &hold.request_id,
            &hold.model,
            &hold.units,
            &(kind == EntryKind::Expire),
            &hold.key_id,
            &units_returned.map(|_| charge.signed()),
            &units_returned.map(units),
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
    journal_end(tx, &hold, (kind, charge, id), units_returned, upstream).await?;
    Ok(true)
}

/// Appends the journal entry of a hold's end.
async fn journal_end(
    tx: &Transaction<'_>,
    hold: &HoldRow,
    (kind, charge, id): (EntryKind, Amount, HoldId),
    units_returned: Option<u32>,
    upstream: Option<&str>,
) -> Result<(), LedgerError> {
    let returned = units_returned.map(units);
    tx.execute(
        "INSERT INTO journal (account, kind, amount, hold_id, request_id, model, units,
                              units_returned, at, key_id, held, upstream)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
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
            &upstream,
        ],
    )
    .await
    .map_err(storage)?;
    Ok(())
}

/// Whether `id` is a hold that ended (settled, released or expired).
pub(super) async fn has_ended(tx: &Transaction<'_>, id: HoldId) -> Result<bool, LedgerError> {
    let row = tx
        .query_opt("SELECT 1 FROM ended_holds WHERE id = $1", &[&id.as_uuid()])
        .await
        .map_err(storage)?;
    Ok(row.is_some())
}

/// Settles a hold that is no longer open: charges an expired one from the available
/// balance, once (claimed by clearing its `expired` flag); changes nothing for one that was
/// settled or released.
pub(super) async fn settle_ended(
    tx: &Transaction<'_>,
    id: HoldId,
    charge: Amount,
    units_returned: u32,
    upstream: Option<&str>,
) -> Result<Settlement, LedgerError> {
    let claimed = tx
        .query_opt(
            &format!(
                "UPDATE ended_holds SET expired = false, charged = $2, units_returned = $3
                 WHERE id = $1 AND expired
                 RETURNING {HOLD_COLUMNS}"
            ),
            &[&id.as_uuid(), &charge.signed(), &units(units_returned)],
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
    journal_end(
        tx,
        &hold,
        (kind, charge, id),
        Some(units_returned),
        upstream,
    )
    .await?;
    Ok(Settlement::AfterExpiry)
}

/// A hold of `amount` on `account`, the account made if it has no row yet.
pub(super) async fn hold(
    tx: &Transaction<'_>,
    account: &str,
    amount: Amount,
    id: HoldId,
    ttl: Duration,
    memo: &Memo,
) -> Result<(), LedgerError> {
    ensure_account(tx, account).await?;
    // The account's row is locked from the check to the reservation: no other transaction
    // can spend the same money in between.
    let row = tx
        .query_one(
            "SELECT available FROM accounts WHERE account = $1 FOR UPDATE",
            &[&account],
        )
        .await
        .map_err(storage)?;
    hold_refusal(row.get(0), amount)?;
    tx.execute(
        "UPDATE accounts SET available = available - $2, held = held + $2 WHERE account = $1",
        &[&account, &amount.signed()],
    )
    .await
    .map_err(storage)?;
    let now = unix_now();
    let units = units(memo.units_requested);
    tx.execute(
        "INSERT INTO holds (id, account, amount, expires_at, request_id, model, units, key_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &id.as_uuid(),
            &account,
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
        "INSERT INTO journal (account, kind, amount, hold_id, request_id, model, units, at,
                              key_id)
         VALUES ($1, 'hold', $2, $3, $4, $5, $6, $7, $8)",
        &[
            &account,
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
}

/// The settle of `id`: of the open hold, or (late) of an expired one.
pub(super) async fn settle(
    tx: &Transaction<'_>,
    id: HoldId,
    charge: Amount,
    units_returned: u32,
    upstream: Option<&str>,
) -> Result<Settlement, LedgerError> {
    let settled = Some(units_returned);
    if end_hold(tx, id, charge, settled, EntryKind::Settle, upstream).await? {
        return Ok(Settlement::Settled);
    }
    settle_ended(tx, id, charge, units_returned, upstream).await
}

/// The release of `id`: of the open hold, or the closing of an expired one.
pub(super) async fn release(tx: &Transaction<'_>, id: HoldId) -> Result<(), LedgerError> {
    if end_hold(tx, id, Amount::ZERO, None, EntryKind::Release, None).await? {
        return Ok(());
    }
    // An expired hold released: nothing was delivered, so no late settle may charge it.
    let closed = tx
        .execute(
            "UPDATE ended_holds SET expired = false WHERE id = $1",
            &[&id.as_uuid()],
        )
        .await
        .map_err(storage)?;
    if closed == 0 {
        return Err(LedgerError::UnknownHold);
    }
    Ok(())
}

/// The renewal of `id`: `true` when it was open, `false` when it ended.
pub(super) async fn renew(
    tx: &Transaction<'_>,
    id: HoldId,
    ttl: Duration,
) -> Result<bool, LedgerError> {
    let renewed = tx
        .execute(
            "UPDATE holds SET expires_at = $2 WHERE id = $1",
            &[&id.as_uuid(), &seconds(deadline(unix_now(), ttl))],
        )
        .await
        .map_err(storage)?;
    if renewed > 0 {
        Ok(true)
    } else if has_ended(tx, id).await? {
        Ok(false)
    } else {
        Err(LedgerError::UnknownHold)
    }
}

/// A deposit, once per `reference`.
pub(super) async fn deposit(
    tx: &Transaction<'_>,
    account: &str,
    amount: i64,
    reference: &str,
) -> Result<bool, LedgerError> {
    ensure_account(tx, account).await?;
    let inserted = tx
        .execute(
            "INSERT INTO journal (account, kind, amount, reference, at)
             VALUES ($1, 'deposit', $2, $3, $4)
             ON CONFLICT (account, reference) WHERE kind = 'deposit' DO NOTHING",
            &[&account, &amount, &reference, &seconds(unix_now())],
        )
        .await
        .map_err(storage)?;
    if inserted == 0 {
        return Ok(false);
    }
    // BIGINT arithmetic that overflows is an error, and the whole deposit (its journal
    // entry included) rolls back.
    tx.execute(
        "UPDATE accounts SET available = available + $2, deposited = deposited + $2
         WHERE account = $1",
        &[&account, &amount],
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
}

/// Ends every hold due by `now`; how many it ended.
pub(super) async fn expire(tx: &Transaction<'_>, now: u64) -> Result<usize, LedgerError> {
    // Holds another transaction is ending right now are skipped, not waited for: that one
    // ends them.
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
        if end_hold(tx, id, Amount::ZERO, None, EntryKind::Expire, None).await? {
            ended += 1;
        }
    }
    Ok(ended)
}
