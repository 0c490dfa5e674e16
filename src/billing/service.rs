use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::ServiceExt;
use tower_service::Service;

use super::guard::HoldGuard;
use crate::backend::EditJob;
use crate::catalog::Catalog;
use crate::future::ResponseFuture;
use crate::gateway::EditOutcome;
use crate::ledger::{Amount, Ledger, Memo};
use crate::GatewayError;

/// Holds before the inner service runs; settles for what it returned or releases.
#[derive(Clone)]
pub struct Billing<S> {
    inner: S,
    ledger: Arc<dyn Ledger>,
    catalog: Catalog,
    hold_ttl: Duration,
}

impl<S> Billing<S> {
    pub(crate) fn new(
        inner: S,
        ledger: Arc<dyn Ledger>,
        catalog: Catalog,
        hold_ttl: Duration,
    ) -> Self {
        Billing {
            inner,
            ledger,
            catalog,
            hold_ttl,
        }
    }
}

impl<S> std::fmt::Debug for Billing<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Billing").finish_non_exhaustive()
    }
}

impl<S> Service<EditJob> for Billing<S>
where
    S: Service<EditJob, Response = EditOutcome, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = EditOutcome;
    type Error = GatewayError;
    type Future = ResponseFuture<EditOutcome, GatewayError>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, job: EditJob) -> Self::Future {
        let this = self.clone();
        ResponseFuture::new(async move {
            let price = Amount::new(this.catalog.get(&job.params.model)?.price_per_image());
            let n = job.params.n;
            let amount = price.times(n).ok_or_else(|| {
                GatewayError::invalid_request("n x price is beyond any balance", Some("n"))
            })?;
            let memo = Memo::new(job.request_id.clone(), job.params.model.clone(), n);
            let hold = this
                .ledger
                .hold(job.principal.user_id(), amount, this.hold_ttl, memo)
                .await?;
            let guard = HoldGuard::new(this.ledger.clone(), hold.id);
            match this.inner.oneshot(job).await {
                Ok(outcome) => {
                    let returned = outcome.images.len().min(n as usize) as u32;
                    let charge = price.times(returned).unwrap_or(amount).min(amount);
                    guard.settle(charge, returned).await;
                    tracing::info!(held = %amount, charged = %charge, returned, "edit billed");
                    Ok(outcome)
                }
                Err(error) => {
                    guard.release().await;
                    Err(error)
                }
            }
        })
    }
}
