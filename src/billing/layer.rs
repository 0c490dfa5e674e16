use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::{Billing, DEFAULT_HOLD_TTL, MIN_HOLD_TTL};
use crate::auth::KeyRegistry;
use crate::catalog::Catalog;
use crate::ledger::Ledger;
use crate::metrics::Metrics;

/// Applies [`Billing`] to a service of [`EditJob`](crate::job::EditJob)s.
#[derive(Clone)]
pub struct BillingLayer {
    pub(super) ledger: Arc<dyn Ledger>,
    pub(super) catalog: Catalog,
    pub(super) hold_ttl: Duration,
    pub(super) cancel_abandoned: bool,
    pub(super) metrics: Option<Metrics>,
    pub(super) registry: Option<Arc<dyn KeyRegistry>>,
}

impl BillingLayer {
    /// Bills edits on `ledger` at the prices of `catalog`; holds live 10 minutes at most.
    pub fn new(ledger: Arc<dyn Ledger>, catalog: Catalog) -> Self {
        BillingLayer {
            ledger,
            catalog,
            hold_ttl: DEFAULT_HOLD_TTL,
            cancel_abandoned: false,
            metrics: None,
            registry: None,
        }
    }

    /// Counts each managed key's holds and charges against its daily limit in `registry`
    /// (a key without a limit is not counted). Default: daily limits are not enforced.
    pub fn daily_limits(mut self, registry: Arc<dyn KeyRegistry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Counts images asked for and returned, and money held, charged and released, in
    /// `metrics`.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Whether a client that leaves after the backend began cancels the backend's work (and
    /// is charged nothing). Set it only for a backend whose abandoned work costs nobody
    /// anything ([`ImageBackend::cancellable`](crate::backend::ImageBackend::cancellable));
    /// otherwise begun work runs to its end and is charged, never free. Work not yet begun
    /// is cancelled either way. Default: `false`.
    pub fn cancel_abandoned(mut self, cancel: bool) -> Self {
        self.cancel_abandoned = cancel;
        self
    }

    /// How long a hold lives if nothing ends it (a crash). A live request renews its hold
    /// every third of this, so it bounds only how long a crashed process's money stays
    /// held. Default: 10 minutes.
    pub fn hold_ttl(mut self, ttl: Duration) -> Self {
        // Deadlines are whole seconds: under 2 s a renewal could come after the deadline.
        self.hold_ttl = ttl.max(MIN_HOLD_TTL);
        self
    }
}

impl std::fmt::Debug for BillingLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BillingLayer")
            .field("hold_ttl", &self.hold_ttl)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for BillingLayer {
    type Service = Billing<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Billing::new(inner, self)
    }
}
