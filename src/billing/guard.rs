use std::sync::Arc;

use crate::ledger::{Amount, HoldId, Ledger};

/// Ends a hold exactly once: by [`settle`](Self::settle), by [`release`](Self::release), or
/// when dropped unended (a cancelled request), by a release spawned from `Drop`.
pub(crate) struct HoldGuard {
    ledger: Arc<dyn Ledger>,
    hold: Option<HoldId>,
}

impl HoldGuard {
    pub(crate) fn new(ledger: Arc<dyn Ledger>, hold: HoldId) -> Self {
        HoldGuard {
            ledger,
            hold: Some(hold),
        }
    }

    /// Charges `charge` for `units` images. Runs on its own task so that the charge for
    /// images already produced is not lost to a client that disconnects now.
    pub(crate) async fn settle(mut self, charge: Amount, units: u32) {
        let Some(hold) = self.hold.take() else { return };
        let ledger = self.ledger.clone();
        let settled = tokio::spawn(async move {
            if let Err(error) = ledger.settle(hold, charge, units).await {
                // The hold stays open and expires: the client keeps its images uncharged.
                tracing::error!(%error, %hold, "settling a hold failed");
            }
        });
        let _ = settled.await;
    }

    /// Frees the whole hold.
    pub(crate) async fn release(mut self) {
        let Some(hold) = self.hold.take() else { return };
        if let Err(error) = self.ledger.release(hold).await {
            tracing::error!(%error, %hold, "releasing a hold failed; it will expire");
        }
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        let Some(hold) = self.hold.take() else { return };
        let ledger = self.ledger.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(error) = ledger.release(hold).await {
                        tracing::error!(%error, %hold, "releasing a dropped hold failed");
                    }
                });
            }
            // No runtime left (shutdown): the hold's expiry releases it.
            Err(_) => tracing::warn!(%hold, "hold dropped without a runtime; it will expire"),
        }
    }
}
