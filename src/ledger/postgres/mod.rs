//! The PostgreSQL ledger: [`PgLedger`].
//!
//! # How
//! What every edit does (a hold, its settle or release, a renewal) is one prepared statement
//! ([`statement`]), and a replica commits the ones waiting at the same moment in one
//! transaction on one connection (the [group commit](crate::postgres) of its `Postgres`):
//! concurrent edits share one round trip and one WAL flush. A statement that meets an
//! uncommon case changes nothing, and the operation runs as the general transaction
//! ([`transaction`]) instead; deposits and the expiry sweep always do.
//!
//! A batch first locks every account it changes, in the order of their names, so the
//! batches of two replicas never wait for each other in a circle (an end finds its account
//! on its hold's row; without that first lock, ends and holds of two accounts crossing
//! between replicas deadlocked, which PostgreSQL resolves only after `deadlock_timeout`).
//! Should a batch still be aborted, its operations run again, each alone.
//!
//! Every commit waits for the WAL flush, holds included. The SQLite ledger commits holds
//! unsynced because a power cut that loses one also ends the process whose request made
//! it. A PostgreSQL server can crash, or fail over, while the gateway lives on: an unsynced
//! hold lost that way would leave a live request working against a hold that no longer
//! exists, and its settle would find nothing to charge.

mod statement;
mod transaction;

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Transaction;

use self::statement::Op;
use super::{
    deadline, Amount, Balance, Charge, EntryKind, Hold, HoldId, JournalEntry, Ledger, LedgerError,
    Memo, Settlement,
};
use crate::auth::UserId;
use crate::clock::unix_now;
use crate::postgres::{seconds, Postgres};

/// A ledger in PostgreSQL, shared by every replica.
///
/// # Guarantees
/// - Every hold ends exactly once and no account is overdrawn, however many replicas share
///   the database: each operation acts only on rows it has locked (a hold on its account's
///   row from the check to the reservation, an end on the hold's row, which it deletes, a
///   late settle on its ended row's `expired` flag), so two replicas racing for one hold
///   serialize on that row and the second finds it gone.
/// - A caller is answered only once its operation committed.
/// - Concurrent operations of one process share commits: a hold, an end and a renewal are
///   one statement each, committed with whatever else waits (the group commit of its
///   [`Postgres`]); an uncommon case runs as a transaction of its own.
#[derive(Clone, Debug)]
pub struct PgLedger {
    db: Postgres,
}

impl PgLedger {
    /// The ledger in `db`.
    pub fn new(db: Postgres) -> Self {
        PgLedger { db }
    }

    /// Runs `op`'s statement in the next group commit; its one row once committed.
    async fn run(&self, op: Op) -> Result<tokio_postgres::Row, LedgerError> {
        let rows = self.db.commit(op).await.map_err(LedgerError::Storage)?;
        rows.into_iter()
            .next()
            .ok_or_else(|| LedgerError::Storage("the ledger's statement answered no row".into()))
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

/// A count of images as PostgreSQL's `INTEGER`; the gateway's counts are far below
/// `i32::MAX`.
fn units(count: u32) -> i32 {
    i32::try_from(count).unwrap_or(i32::MAX)
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
        let id = HoldId::new();
        let owner = account.as_str().to_owned();
        let now = unix_now();
        let (expires_at, at) = (seconds(deadline(now, ttl)), seconds(now));
        let op = Op::hold(owner.clone(), amount, id, expires_at, memo.clone(), at);
        let row = self.run(op).await?;
        match statement::held(&row, amount) {
            Some(held) => held?,
            None => {
                self.transaction(|tx| {
                    Box::pin(
                        async move { transaction::hold(tx, &owner, amount, id, ttl, &memo).await },
                    )
                })
                .await?
            }
        }
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
        self.settle_from(hold, charge, units_returned, None).await
    }

    async fn settle_from(
        &self,
        hold: HoldId,
        charge: Amount,
        units_returned: u32,
        upstream: Option<&str>,
    ) -> Result<Settlement, LedgerError> {
        let op = Op::end(
            hold,
            charge,
            EntryKind::Settle,
            Some(units_returned),
            seconds(unix_now()),
            upstream,
        );
        if statement::changed(&self.run(op).await?) {
            return Ok(Settlement::Settled);
        }
        let upstream = upstream.map(str::to_owned);
        self.transaction(move |tx| {
            let upstream = upstream.clone();
            Box::pin(async move {
                transaction::settle(tx, hold, charge, units_returned, upstream.as_deref()).await
            })
        })
        .await
    }

    async fn release(&self, hold: HoldId) -> Result<(), LedgerError> {
        let op = Op::end(
            hold,
            Amount::ZERO,
            EntryKind::Release,
            None,
            seconds(unix_now()),
            None,
        );
        if statement::changed(&self.run(op).await?) {
            return Ok(());
        }
        self.transaction(|tx| Box::pin(transaction::release(tx, hold)))
            .await
    }

    async fn renew(&self, hold: HoldId, ttl: Duration) -> Result<bool, LedgerError> {
        let op = Op::renew(hold, seconds(deadline(unix_now(), ttl)));
        if statement::changed(&self.run(op).await?) {
            return Ok(true);
        }
        self.transaction(|tx| Box::pin(transaction::renew(tx, hold, ttl)))
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
            Box::pin(async move { transaction::deposit(tx, &owner, amount, &reference).await })
        })
        .await
    }

    async fn expire(&self, now: u64) -> Result<usize, LedgerError> {
        self.transaction(|tx| Box::pin(transaction::expire(tx, now)))
            .await
    }

    async fn charged(&self, hold: HoldId) -> Result<Option<Charge>, LedgerError> {
        let client = self.db.client().await.map_err(LedgerError::Storage)?;
        let row = client
            .query_opt(
                "SELECT charged, units_returned FROM ended_holds
                 WHERE id = $1 AND charged IS NOT NULL AND units_returned IS NOT NULL",
                &[&hold.as_uuid()],
            )
            .await
            .map_err(storage)?;
        Ok(row.and_then(|row| {
            let amount = Amount::new(u64::try_from(row.get::<_, i64>(0)).ok()?);
            Some(Charge::new(
                amount,
                u32::try_from(row.get::<_, i32>(1)).ok()?,
            ))
        }))
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
                        units_returned, at, key_id, held, upstream
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
                    upstream: r.get(12),
                    at: r.get::<_, i64>(9).max(0) as u64,
                })
            })
            .collect()
    }
}
