//! The ledger's common operations, each as one SQL statement.
//!
//! A hold that is paid for, the end of a hold that is open and a renewal are what every edit
//! does; each is one statement whose parts all act on rows it has locked, so it can commit on
//! its own or inside another transaction (a batch) with the same effect. When a statement
//! finds the uncommon case (an account with no row, a hold that already ended, a charge
//! above the hold) it changes nothing and says so: the ledger then runs the general
//! transaction of [`super::transaction`], which handles every case.

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::super::{hold_refusal, Amount, EntryKind, HoldId, LedgerError, Memo};
use super::units;
use crate::postgres::{Account, Statement};

/// Reserves the amount if the account's available balance covers it, and records the hold
/// and its journal entry. The account's row is locked (`FOR UPDATE`) before the check, and
/// the reservation applies to the row's latest version, so no concurrent transaction spends
/// the same money. Answers the available balance it checked (`NULL` without an account) and
/// whether it reserved.
const HOLD: &str = "
WITH account AS (
    SELECT available FROM accounts WHERE account = $1 FOR UPDATE
), reserved AS (
    UPDATE accounts SET available = accounts.available - $2, held = accounts.held + $2
    FROM account
    WHERE accounts.account = $1 AND account.available >= 0 AND account.available >= $2
    RETURNING accounts.account
), hold AS (
    INSERT INTO holds (id, account, amount, expires_at, request_id, model, units, key_id)
    SELECT $3::uuid, account, $2::bigint, $4::bigint, $5::text, $6::text, $7::integer,
           $8::text
    FROM reserved
), entry AS (
    INSERT INTO journal (account, kind, amount, hold_id, request_id, model, units, at, key_id)
    SELECT account, 'hold', $2::bigint, $3::uuid, $5::text, $6::text, $7::integer,
           $9::bigint, $8::text
    FROM reserved
)
SELECT (SELECT available FROM account), EXISTS (SELECT 1 FROM reserved)";

/// Ends an open hold whose amount covers the charge: the hold's row is deleted (the claim:
/// a concurrent end of the same hold finds it gone), kept in `ended_holds`, its amount
/// returned to the account less the charge, and the end journaled. Answers how many holds
/// it ended (0 or 1).
const END: &str = "
WITH ended AS (
    DELETE FROM holds WHERE id = $1 AND amount >= $2
    RETURNING id, account, amount, request_id, model, units, key_id
), kept AS (
    INSERT INTO ended_holds (id, account, amount, request_id, model, units, expired, key_id,
                             charged, units_returned)
    SELECT id, account, amount, request_id, model, units, false, key_id,
           CASE WHEN $4::integer IS NULL THEN NULL ELSE $2::bigint END, $4::integer
    FROM ended
), paid AS (
    UPDATE accounts SET held = accounts.held - ended.amount,
                        charged = accounts.charged + $2,
                        available = accounts.available + ended.amount - $2
    FROM ended WHERE accounts.account = ended.account
), entry AS (
    INSERT INTO journal (account, kind, amount, hold_id, request_id, model, units,
                         units_returned, at, key_id, held, upstream)
    SELECT account, $3::text, $2::bigint, id, request_id, model, units, $4::integer,
           $5::bigint, key_id, amount, $6::text
    FROM ended
)
SELECT count(*) FROM ended";

/// Moves an open hold's expiry. Answers how many holds it moved (0 or 1).
const RENEW: &str = "
WITH renewed AS (UPDATE holds SET expires_at = $2 WHERE id = $1 RETURNING 1)
SELECT count(*) FROM renewed";

/// One operation as its statement's parameters.
#[derive(Clone, Debug)]
pub(super) enum Op {
    Hold {
        account: String,
        amount: i64,
        id: uuid::Uuid,
        expires_at: i64,
        memo: Memo,
        units: i32,
        at: i64,
    },
    End {
        id: uuid::Uuid,
        charge: i64,
        kind: &'static str,
        units_returned: Option<i32>,
        at: i64,
        upstream: Option<String>,
    },
    Renew {
        id: uuid::Uuid,
        expires_at: i64,
    },
}

impl Op {
    /// A hold of `amount` on `account` until `expires_at`, taken `at`.
    pub(super) fn hold(
        account: String,
        amount: Amount,
        id: HoldId,
        expires_at: i64,
        memo: Memo,
        at: i64,
    ) -> Op {
        let units = units(memo.units_requested);
        Op::Hold {
            account,
            amount: amount.signed(),
            id: id.as_uuid(),
            expires_at,
            memo,
            units,
            at,
        }
    }

    /// The end of the open hold `id` (a settle or a release) charging `charge`; a settle
    /// names the `upstream` that rendered, if known.
    pub(super) fn end(
        id: HoldId,
        charge: Amount,
        kind: EntryKind,
        units_returned: Option<u32>,
        at: i64,
        upstream: Option<&str>,
    ) -> Op {
        Op::End {
            id: id.as_uuid(),
            charge: charge.signed(),
            kind: kind.as_str(),
            units_returned: units_returned.map(units),
            at,
            upstream: upstream.map(str::to_owned),
        }
    }

    /// The renewal of the open hold `id` until `expires_at`.
    pub(super) fn renew(id: HoldId, expires_at: i64) -> Op {
        Op::Renew {
            id: id.as_uuid(),
            expires_at,
        }
    }
}

impl Statement for Op {
    fn account(&self) -> Account<'_> {
        match self {
            Op::Hold { account, .. } => Account::Named(account),
            Op::End { id, .. } => Account::OfHold(*id),
            Op::Renew { .. } => Account::None,
        }
    }

    fn sql(&self) -> &'static str {
        match self {
            Op::Hold { .. } => HOLD,
            Op::End { .. } => END,
            Op::Renew { .. } => RENEW,
        }
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        match self {
            Op::Hold {
                account,
                amount,
                id,
                expires_at,
                memo,
                units,
                at,
            } => vec![
                account,
                amount,
                id,
                expires_at,
                &memo.request_id,
                &memo.model,
                units,
                &memo.key,
                at,
            ],
            Op::End {
                id,
                charge,
                kind,
                units_returned,
                at,
                upstream,
            } => vec![id, charge, kind, units_returned, at, upstream],
            Op::Renew { id, expires_at } => vec![id, expires_at],
        }
    }
}

/// What a hold's statement decided: `Some` of the hold's result, or `None` when the general
/// transaction must decide (no account row yet; nothing was changed).
pub(super) fn held(row: &Row, amount: Amount) -> Option<Result<(), LedgerError>> {
    let available: Option<i64> = row.get(0);
    let reserved: bool = row.get(1);
    if reserved {
        return Some(Ok(()));
    }
    // Refused with the balance it saw; a balance that would have paid means the row changed
    // in a way the statement did not foresee, so the general path decides.
    available.and_then(|available| hold_refusal(available, amount).err().map(Err))
}

/// Whether an end's or a renewal's statement changed its hold; `false` leaves the decision
/// (a hold that ended, an unknown one, a charge above the hold) to the general transaction.
pub(super) fn changed(row: &Row) -> bool {
    row.get::<_, i64>(0) > 0
}
