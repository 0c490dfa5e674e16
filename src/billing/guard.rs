use std::sync::Arc;

use crate::ledger::{Amount, HoldId, Ledger};

/// What a guard still owes its hold.
#[derive(Clone, Copy)]
enum Owed {
    /// Nothing: the hold has ended (or its end is on a task of its own).
    Nothing,
    /// A release, because nothing was delivered yet.
    Release(HoldId),
    /// A settlement, because the backend answered: the charge stands even if the client
    /// leaves while it is being written.
    Settle(HoldId, Amount, u32),
}

/// Ends a hold exactly once: by [`settle`](Self::settle), by [`release`](Self::release), or,
/// when dropped on the way (a cancelled request), by a task spawned from `Drop` that finishes
/// what was owed: a release before the backend answered, the settlement after.
///
/// Ending a hold twice is harmless (the ledger makes a second settle or release a no-op), so
/// a settlement cut off mid-write and finished from `Drop` still charges once.
pub(crate) struct HoldGuard {
    ledger: Arc<dyn Ledger>,
    owed: Owed,
}

impl HoldGuard {
    pub(crate) fn new(ledger: Arc<dyn Ledger>, hold: HoldId) -> Self {
        HoldGuard {
            ledger,
            owed: Owed::Release(hold),
        }
    }

    /// Charges `charge` for `units` images.
    pub(crate) async fn settle(mut self, charge: Amount, units: u32) {
        let Owed::Release(hold) = self.owed else {
            return;
        };
        // From here a drop settles rather than releases.
        self.owed = Owed::Settle(hold, charge, units);
        if let Err(error) = self.ledger.settle(hold, charge, units).await {
            // The hold stays open and expires: the client keeps its images uncharged.
            tracing::error!(%error, %hold, "settling a hold failed");
        }
        self.owed = Owed::Nothing;
    }

    /// Frees the whole hold.
    pub(crate) async fn release(mut self) {
        let Owed::Release(hold) = self.owed else {
            return;
        };
        self.owed = Owed::Nothing;
        if let Err(error) = self.ledger.release(hold).await {
            tracing::error!(%error, %hold, "releasing a hold failed; it will expire");
        }
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        let owed = std::mem::replace(&mut self.owed, Owed::Nothing);
        let hold = match owed {
            Owed::Nothing => return,
            Owed::Release(hold) | Owed::Settle(hold, ..) => hold,
        };
        let ledger = self.ledger.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime left (shutdown): the hold's expiry releases it.
            tracing::warn!(%hold, "hold dropped without a runtime; it will expire");
            return;
        };
        runtime.spawn(async move {
            let ended = match owed {
                Owed::Settle(_, charge, units) => ledger.settle(hold, charge, units).await,
                _ => ledger.release(hold).await,
            };
            if let Err(error) = ended {
                tracing::error!(%error, %hold, "ending a dropped hold failed; it will expire");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_trait::async_trait;
    use tokio::sync::Notify;

    use super::*;
    use crate::auth::UserId;
    use crate::ledger::{Balance, Hold, JournalEntry, LedgerError, Memo, MemoryLedger};

    /// A memory ledger whose settle waits at a gate, so a test can cut it off mid-write.
    struct GatedSettle {
        inner: MemoryLedger,
        gate: Notify,
    }

    #[async_trait]
    impl Ledger for GatedSettle {
        async fn hold(
            &self,
            account: &UserId,
            amount: Amount,
            ttl: Duration,
            memo: Memo,
        ) -> Result<Hold, LedgerError> {
            self.inner.hold(account, amount, ttl, memo).await
        }
        async fn settle(
            &self,
            hold: HoldId,
            charge: Amount,
            units: u32,
        ) -> Result<(), LedgerError> {
            self.gate.notified().await;
            self.inner.settle(hold, charge, units).await
        }
        async fn release(&self, hold: HoldId) -> Result<(), LedgerError> {
            self.inner.release(hold).await
        }
        async fn balance(&self, account: &UserId) -> Result<Balance, LedgerError> {
            self.inner.balance(account).await
        }
        async fn deposit(
            &self,
            account: &UserId,
            amount: i64,
            r: &str,
        ) -> Result<bool, LedgerError> {
            self.inner.deposit(account, amount, r).await
        }
        async fn expire(&self, now: u64) -> Result<usize, LedgerError> {
            self.inner.expire(now).await
        }
        async fn journal(
            &self,
            account: &UserId,
            after_seq: Option<u64>,
            limit: usize,
        ) -> Result<Vec<JournalEntry>, LedgerError> {
            self.inner.journal(account, after_seq, limit).await
        }
    }

    async fn ledger_with_hold(amount: u64) -> (Arc<GatedSettle>, UserId, HoldId) {
        let ledger = Arc::new(GatedSettle {
            inner: MemoryLedger::new(),
            gate: Notify::new(),
        });
        let user = UserId::new("alice").unwrap();
        ledger.deposit(&user, 100, "opening").await.unwrap();
        let memo = Memo::new("req", "m", 2);
        let hold = ledger
            .hold(&user, Amount::new(amount), Duration::from_secs(60), memo)
            .await
            .unwrap();
        (ledger, user, hold.id)
    }

    #[tokio::test]
    async fn a_settlement_cut_off_mid_write_still_charges_once() {
        let (ledger, user, hold) = ledger_with_hold(20).await;
        let guard = HoldGuard::new(ledger.clone(), hold);
        let settling = guard.settle(Amount::new(10), 1);
        // Polled until it waits at the gate, then dropped: the client went away.
        assert!(tokio::time::timeout(Duration::from_millis(20), settling)
            .await
            .is_err());
        ledger.gate.notify_one();
        for _ in 0..100 {
            if ledger.balance(&user).await.unwrap().held == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let balance = ledger.balance(&user).await.unwrap();
        assert_eq!((balance.available, balance.held), (90, 0));
    }

    #[tokio::test]
    async fn a_guard_dropped_before_the_answer_releases_the_hold() {
        let (ledger, user, hold) = ledger_with_hold(20).await;
        drop(HoldGuard::new(ledger.clone(), hold));
        for _ in 0..100 {
            if ledger.balance(&user).await.unwrap().held == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let balance = ledger.balance(&user).await.unwrap();
        assert_eq!((balance.available, balance.held), (100, 0));
    }
}
