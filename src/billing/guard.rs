use std::sync::Arc;

use crate::auth::{KeyId, KeyRegistry};
use crate::ledger::{Amount, HoldId, Ledger, LedgerError, Settlement};
use crate::metrics::Metrics;

/// Ends a hold exactly once: by [`settle`](Self::settle), by [`release`](Self::release), or,
/// when dropped without either (a panic, a runtime shutting down), by a release on a task
/// spawned from `Drop`.
///
/// Billing runs the whole billed edit to its end (a client that hangs up hands it to a task
/// of its own), so a client that hangs up does not drop the guard: the work goes on and
/// ends the hold itself. Releasing a hold that a
/// settle already ended changes nothing (the ledger's settle and release are idempotent), so
/// the release from `Drop` can never undo a charge.
pub(crate) struct HoldGuard {
    ledger: Arc<dyn Ledger>,
    open: Option<HoldId>,
    tally: Option<Tally>,
    spend: Option<Spend>,
}

/// A reservation against a key's daily limit, as large as the hold: what the hold does not
/// charge is given back where the guard ends the hold, so the day's spend ends up exactly
/// what was charged.
pub(crate) struct Spend {
    pub(crate) registry: Arc<dyn KeyRegistry>,
    pub(crate) key: KeyId,
    pub(crate) day: u64,
    pub(crate) reserved: Amount,
}

impl Spend {
    /// Gives back what `charged` leaves of the reservation.
    pub(crate) async fn give_back(self, charged: Amount) {
        let back = self.reserved.get().saturating_sub(charged.get());
        if back == 0 {
            return;
        }
        if let Err(error) = self.registry.refund(self.key, self.day, back).await {
            // Errs on the safe side: the key may spend less today, never more.
            tracing::error!(%error, key = %self.key, back, "giving back a daily-limit reservation failed");
        }
    }
}

/// The metrics a hold moves: counted held when the guard is made, and charged or released
/// exactly where the guard ends it, so the counters add up like the ledger.
struct Tally {
    metrics: Metrics,
    model: String,
    held: Amount,
}

impl Tally {
    fn ended(self, charged: Amount, returned: u32) {
        let held = self.held.get();
        self.metrics
            .ended(&self.model, held, charged.get().min(held), returned);
    }
}

impl HoldGuard {
    pub(crate) fn new(ledger: Arc<dyn Ledger>, hold: HoldId) -> Self {
        HoldGuard {
            ledger,
            open: Some(hold),
            tally: None,
            spend: None,
        }
    }

    /// Ends `spend` with this hold.
    pub(crate) fn spending(mut self, spend: Option<Spend>) -> Self {
        self.spend = spend;
        self
    }

    /// Counts this hold of `held` for `n` images of `model` in `metrics`.
    pub(crate) fn counted(mut self, metrics: Metrics, model: &str, n: u32, held: Amount) -> Self {
        metrics.held(model, n, held.get());
        self.tally = Some(Tally {
            metrics,
            model: model.to_owned(),
            held,
        });
        self
    }

    /// Charges `charge` for `units` images. On a ledger failure the hold stays owed a
    /// release, which the caller (or `Drop`) gives it.
    /// Settles for `charge` and `units` images, rendered by `upstream` if a backend named it.
    pub(crate) async fn settle(
        &mut self,
        charge: Amount,
        units: u32,
        upstream: Option<&str>,
    ) -> Result<(), LedgerError> {
        let Some(hold) = self.open else {
            return Ok(());
        };
        match self
            .ledger
            .settle_from(hold, charge, units, upstream)
            .await?
        {
            Settlement::Settled => {}
            // Ended elsewhere: by another run of the same job (a replica that took it over
            // while this one still ran). Its images are that run's to charge, not these.
            Settlement::AlreadyEnded => {
                self.open = None;
                if let Some(tally) = self.tally.take() {
                    tally.ended(Amount::new(0), 0);
                }
                return Err(LedgerError::HoldEnded);
            }
            Settlement::AfterExpiry => {
                // Charged all the same; the TTL or its renewal was too short for this edit.
                tracing::error!(%hold, %charge, "settled a hold after it expired; charged from the available balance");
            }
        }
        self.open = None;
        if let Some(tally) = self.tally.take() {
            tally.ended(charge, units);
        }
        if let Some(spend) = self.spend.take() {
            spend.give_back(charge).await;
        }
        Ok(())
    }

    /// Frees the whole hold.
    pub(crate) async fn release(mut self) {
        let Some(hold) = self.open.take() else {
            return;
        };
        if let Some(tally) = self.tally.take() {
            tally.ended(Amount::new(0), 0);
        }
        if let Some(spend) = self.spend.take() {
            spend.give_back(Amount::new(0)).await;
        }
        if let Err(error) = self.ledger.release(hold).await {
            tracing::error!(%error, %hold, "releasing a hold failed; it will expire");
        }
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        let Some(hold) = self.open.take() else {
            return;
        };
        if let Some(tally) = self.tally.take() {
            tally.ended(Amount::new(0), 0);
        }
        let ledger = self.ledger.clone();
        let spend = self.spend.take();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime left (shutdown): the hold's expiry releases it; the reservation
            // stays counted for the day (the safe side).
            tracing::warn!(%hold, "hold dropped without a runtime; it will expire");
            return;
        };
        runtime.spawn(async move {
            if let Some(spend) = spend {
                spend.give_back(Amount::new(0)).await;
            }
            if let Err(error) = ledger.release(hold).await {
                tracing::error!(%error, %hold, "releasing a dropped hold failed; it will expire");
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
        ) -> Result<Settlement, LedgerError> {
            self.gate.notified().await;
            self.inner.settle(hold, charge, units).await
        }
        async fn release(&self, hold: HoldId) -> Result<(), LedgerError> {
            self.inner.release(hold).await
        }
        async fn renew(&self, hold: HoldId, ttl: Duration) -> Result<bool, LedgerError> {
            self.inner.renew(hold, ttl).await
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
    async fn a_guard_dropped_after_its_settlement_does_not_undo_the_charge() {
        let (ledger, user, hold) = ledger_with_hold(20).await;
        let mut guard = HoldGuard::new(ledger.clone(), hold);
        ledger.gate.notify_one();
        guard.settle(Amount::new(10), 1, None).await.unwrap();
        drop(guard);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let balance = ledger.balance(&user).await.unwrap();
        assert_eq!(
            (balance.available, balance.held, balance.charged),
            (90, 0, 10)
        );
    }

    #[tokio::test]
    async fn a_settlement_after_expiry_still_charges_once() {
        let (ledger, user, hold) = ledger_with_hold(20).await;
        ledger.expire(u64::MAX).await.unwrap();
        assert_eq!(ledger.balance(&user).await.unwrap().available, 100);
        let mut guard = HoldGuard::new(ledger.clone(), hold);
        ledger.gate.notify_one();
        guard.settle(Amount::new(10), 1, None).await.unwrap();
        ledger.gate.notify_one();
        assert_eq!(
            ledger.settle(hold, Amount::new(10), 1).await.unwrap(),
            Settlement::AlreadyEnded
        );
        let balance = ledger.balance(&user).await.unwrap();
        assert_eq!(
            (balance.available, balance.held, balance.charged),
            (90, 0, 10)
        );
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

    #[tokio::test]
    async fn a_second_run_settling_a_hold_the_first_charged_charges_nothing() {
        let (ledger, user, hold) = ledger_with_hold(20).await;
        let mut first = HoldGuard::new(ledger.clone(), hold);
        let mut second = HoldGuard::new(ledger.clone(), hold);
        ledger.gate.notify_one();
        first.settle(Amount::new(10), 1, None).await.unwrap();
        ledger.gate.notify_one();
        assert!(matches!(
            second.settle(Amount::new(10), 1, None).await,
            Err(LedgerError::HoldEnded)
        ));
        drop(second);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let balance = ledger.balance(&user).await.unwrap();
        assert_eq!(
            (balance.available, balance.held, balance.charged),
            (90, 0, 10)
        );
    }
}
