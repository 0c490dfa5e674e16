//! Billing: nothing reaches the backend without a hold, and every hold ends exactly once.
//!
//! [`BillingLayer`] wraps the edit service. Per request it holds `n x price_per_image` on the
//! caller's account ([`Ledger::hold`]), runs the inner service, then:
//!
//! | outcome | money |
//! |---|---|
//! | images returned | settled for `returned x price`; the rest of the hold is freed |
//! | backend error, content policy, unsupported size, storage error | released whole |
//! | the client went away before the backend answered (future dropped) | released whole |
//! | the process died holding it | released by expiry, at the next start or sweep |
//! | balance below the hold | `402 insufficient_balance`, nothing held |
//! | balance negative | `402 OUTSTANDING_DEBT`, nothing held |
//!
//! Both come from one drop guard. Before the backend answers, dropping the request future
//! releases the hold. Once it has answered, the guard owes a settlement: if the client
//! disconnects while it is being written, the guard's `Drop` finishes it on a task, so the
//! client is still charged for the images it was given (they are stored and stay reachable
//! by generation id). The ledger makes a second settle of the same hold a no-op, so a
//! settlement cut off mid-write and finished from `Drop` charges once.
//!
//! [`AccountApi`] serves `GET /api/v1/balance` and `GET /api/v1/usage`; [`AdminApi`] serves
//! `POST /admin/v1/accounts/{user_id}/deposits` to holders of a separate admin key.

mod admin;
mod api;
mod guard;
mod layer;
mod service;

use std::sync::Arc;
use std::time::Duration;

pub use admin::AdminApi;
pub use api::{AccountApi, BALANCE_PATH, USAGE_PATH};
pub use layer::BillingLayer;
pub use service::Billing;

use crate::gateway::unix_now;
use crate::ledger::Ledger;

/// Runs [`Ledger::expire`] now and then every `every`, on the current Tokio runtime, until
/// the runtime shuts down. The first run releases holds left by a process that died.
pub fn spawn_expiry_sweep(ledger: Arc<dyn Ledger>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every.max(Duration::from_millis(100)));
        loop {
            ticks.tick().await;
            match ledger.expire(unix_now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(released = n, "expired holds released"),
                Err(error) => tracing::error!(%error, "expiring holds failed"),
            }
        }
    })
}
