//! Billing: nothing reaches the backend without a hold, every hold ends exactly once, and
//! no image is reachable before it is charged.
//!
//! [`BillingLayer`] wraps the edit service. Per request it holds `n x price` on the
//! caller's account ([`Ledger::hold`]), runs the inner service (the backend, whose images come
//! back recorded but not yet reachable), settles `returned x price`, and only then publishes
//! the images (stores their bytes, marks their generations ready). The price is the rule of
//! the size and quality the job will produce: `auto` on an edit or compose is its first
//! source's size, and any `auto` still unresolved is priced as the dearest value it could
//! become ([`ModelSpec::price_for`](crate::catalog::ModelSpec::price_for)). Before any source
//! a request names is read or fetched, its caller's balance is checked against the least it
//! could cost, so a caller who cannot pay spends no reads:
//!
//! | outcome | money |
//! |---|---|
//! | images returned | settled for `returned x price`, then published; the rest of the hold is freed |
//! | backend error, content policy, unsupported size, storage error before the settle | released whole; nothing published |
//! | the settle itself fails | released; the images are discarded, never reachable |
//! | the client leaves before the backend was given the job (sources being stored, waiting its turn) | the job is cancelled, the hold released whole, nothing of it stored |
//! | the client leaves once the backend has begun (sync, streamed, after any partial image) | the work runs on, is charged for what it returns and published (listed in the caller's files, by generation id) |
//! | the same, backend [cancellable](crate::backend::ImageBackend::cancellable) (its abandoned work costs nobody) | the work is cancelled and the hold released whole |
//! | the process died holding it | released by expiry, at the next start or sweep |
//! | balance below the hold | `402 insufficient_balance`, nothing held |
//! | balance negative | `402 OUTSTANDING_DEBT`, nothing held |
//!
//! The whole sequence runs to its end: a client that hangs up cannot cut it between two
//! money steps, since dropping the request's future hands the rest of the sequence to a task
//! of its own (and only then: the usual edit runs on the connection's task). The request's
//! [`Leases`](crate::lease::Leases) (its in-flight slot) live in that sequence until the
//! backend's work has ended. While the backend works, the
//! hold is renewed every third of its TTL, so the expiry sweep never takes it from a live
//! request; if it expired all the same (a stalled process), the settle still charges, from
//! the available balance, and logs an error. A hold guard releases on drop (a
//! panic); a release after a committed settle changes nothing.
//!
//! [`AccountApi`] serves `GET /api/v1/balance` and `GET /api/v1/usage`; the admin API
//! ([`crate::admin`]) deposits and reads any user's usage.

mod api;
mod guard;
mod layer;
mod price;
mod service;

use std::sync::Arc;
use std::time::Duration;

pub(crate) use api::usage;
pub use api::{AccountApi, BALANCE_PATH, USAGE_PATH};
pub use layer::BillingLayer;
pub use service::Billing;

pub(crate) use price::Admission;

use crate::clock::unix_now;
use crate::ledger::Ledger;

/// The shortest hold TTL: deadlines are whole seconds, and a live request renews its hold
/// every third of the TTL.
pub const MIN_HOLD_TTL: Duration = Duration::from_secs(2);

/// How long a hold lives when nothing ends it (its process died), unless configured.
pub const DEFAULT_HOLD_TTL: Duration = Duration::from_secs(600);

/// Releases the holds of processes that died: [`Ledger::expire`] at once, then every
/// `min(ttl / 2, 30 s)` (at least every second). It runs until dropped; the embedder
/// spawns [`run`](Self::run) on its runtime and owns the task, so nothing is started behind
/// its back and a test can leave it out.
#[derive(Clone)]
pub struct ExpirySweep {
    ledger: Arc<dyn Ledger>,
    every: Duration,
}

impl ExpirySweep {
    /// The sweep of `ledger` for holds that live `ttl`.
    pub fn new(ledger: Arc<dyn Ledger>, ttl: Duration) -> Self {
        ExpirySweep {
            ledger,
            every: (ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(30)),
        }
    }

    /// Sweeps now and then at every interval, forever.
    pub async fn run(self) {
        let mut ticks = tokio::time::interval(self.every);
        loop {
            ticks.tick().await;
            match self.ledger.expire(unix_now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(released = n, "expired holds released"),
                Err(error) => tracing::error!(%error, "expiring holds failed"),
            }
        }
    }
}

impl std::fmt::Debug for ExpirySweep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpirySweep")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}
