use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::Billing;
use crate::catalog::Catalog;
use crate::ledger::Ledger;

/// Applies [`Billing`] to a service of [`EditJob`](crate::backend::EditJob)s.
#[derive(Clone)]
pub struct BillingLayer {
    ledger: Arc<dyn Ledger>,
    catalog: Catalog,
    hold_ttl: Duration,
}

impl BillingLayer {
    /// Bills edits on `ledger` at the prices of `catalog`; holds live 10 minutes at most.
    pub fn new(ledger: Arc<dyn Ledger>, catalog: Catalog) -> Self {
        BillingLayer {
            ledger,
            catalog,
            hold_ttl: Duration::from_secs(600),
        }
    }

    /// How long a hold lives if nothing ends it (a crash). Make it longer than the slowest
    /// edit. Default: 10 minutes.
    pub fn hold_ttl(mut self, ttl: Duration) -> Self {
        self.hold_ttl = ttl;
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
        Billing::new(
            inner,
            self.ledger.clone(),
            self.catalog.clone(),
            self.hold_ttl,
        )
    }
}
