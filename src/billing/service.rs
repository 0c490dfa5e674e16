use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::ServiceExt;
use tower_service::Service;
use tracing::Instrument;

use super::guard::{HoldGuard, Spend};
use super::price::{priced_size, total};
use crate::auth::{utc_day, KeyRegistry, Principal};
use crate::clock::unix_now;

use crate::backend::Rendered;
use crate::catalog::Catalog;
use crate::future::{run_to_end, ResponseFuture};
use crate::job::{EditJob, EditOutcome, Progress, Stage, Ticket};

use crate::lease::ClientWatch;
use crate::ledger::{Amount, HoldId, Ledger, Memo};
use crate::metrics::Metrics;
use crate::GatewayError;

/// Holds before the inner service runs; settles for what it returned, then publishes it;
/// releases on any failure.
#[derive(Clone)]
pub struct Billing<S> {
    inner: S,
    ledger: Arc<dyn Ledger>,
    catalog: Catalog,
    hold_ttl: Duration,
    cancel_abandoned: bool,
    metrics: Option<Metrics>,
    registry: Option<Arc<dyn KeyRegistry>>,
}

impl<S> Billing<S> {
    pub(crate) fn new(inner: S, layer: &super::BillingLayer) -> Self {
        Billing {
            inner,
            ledger: layer.ledger.clone(),
            catalog: layer.catalog.clone(),
            hold_ttl: layer.hold_ttl,
            cancel_abandoned: layer.cancel_abandoned,
            metrics: layer.metrics.clone(),
            registry: layer.registry.clone(),
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
    S: Stage<EditJob, Rendered>,
{
    type Response = EditOutcome;
    type Error = GatewayError;
    type Future = ResponseFuture<EditOutcome, GatewayError>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, job: EditJob) -> Self::Future {
        // The billed work runs to its end: the request's future (which a client that hangs
        // up drops at any await) hands what is left to a task of its own instead of cutting
        // it between two money steps. The job's client watch tells it when the client is
        // gone.
        ResponseFuture::new(run_to_end(self.clone().bill(job).in_current_span()))
    }
}

impl<S> Billing<S>
where
    S: Stage<EditJob, Rendered>,
{
    /// Hold, work, settle, publish: in this order, so an image is reachable only once it
    /// has been charged. The job (and the leases it carries, such as the caller's in-flight
    /// slot) lives until the backend's work has ended.
    async fn bill(mut self, mut job: EditJob) -> Result<EditOutcome, GatewayError> {
        let size = priced_size(job.params.size, job.sources.first().map(|s| &s.bytes[..]));
        let spec = self.catalog.get(&job.params.model)?;
        let price = Amount::new(spec.price_for(&size, job.params.quality.as_str()));
        let n = job.params.n;
        let amount = total(price, n)?;
        let fee = Amount::new(spec.violation_fee()).min(amount);
        let (ledger, ttl) = (self.ledger.clone(), self.hold_ttl);
        let (hold, spend) = match job.resume {
            Some(hold) => (take_over(&ledger, hold, ttl).await?, None),
            None => hold(&ledger, self.registry.clone(), &job, amount, ttl).await?,
        };
        let mut guard = HoldGuard::new(self.ledger.clone(), hold).spending(spend);
        if let Some(metrics) = &self.metrics {
            guard = guard.counted(metrics.clone(), &job.params.model, n, amount);
        }
        let (sources, mask) = job.keys.clone();
        job.progress.held(Ticket::new(hold, sources, mask));
        let client = job.client.clone();
        let (by_store, leaving) = (job.by_store, job.client.clone());
        let progress = job.progress.clone();
        let served_by = job.served_by.clone();
        // Kept until the job ends, whatever the backend does with the job itself (an
        // upstream drops it once its request is sent): the caller's in-flight slot counts
        // the job's work, not the request.
        let _leases = std::mem::take(&mut job.leases);
        job.hold = Some(hold);
        let work = self.inner.clone().oneshot(job);
        let rendered = match self.watch(hold, work, client, &progress).await {
            Ok(rendered) => rendered,
            Err(GatewayError::ContentPolicyViolation { message }) if fee.get() > 0 => {
                // The upstream refused, and bills its refusals: the operator's fee, for no
                // image (the usage log's `violation_fee`).
                let upstream = served_by.get();
                if let Err(error) = guard.settle(fee, 0, upstream.as_deref()).await {
                    guard.release().await;
                    return Err(error.into());
                }
                tracing::info!(held = %amount, charged = %fee, "refused by the upstream; its fee charged");
                return Err(GatewayError::ContentPolicyViolation {
                    message: format!(
                        "{message}; this model's fee for a refused request, {fee}, was charged"
                    ),
                });
            }
            Err(error) => {
                guard.release().await;
                return Err(error);
            }
        };
        let returned = rendered.len().min(n as usize) as u32;
        let charge = price.times(returned).unwrap_or(amount).min(amount);
        let upstream = served_by.get();
        if let Err(error) = guard.settle(charge, returned, upstream.as_deref()).await {
            // Not charged, so never reachable.
            rendered.discard().await;
            guard.release().await;
            return Err(error.into());
        }
        tracing::info!(held = %amount, charged = %charge, returned, "edit billed");
        let by_store = by_store || leaving.is_gone();
        rendered.publish(&*self.ledger, by_store).await
    }

    /// Runs the inner service, renewing the hold while it works so the expiry sweep never
    /// takes it from a live request. A client that leaves before the backend was given the
    /// job cancels it; once the backend has begun, the work is owed (a render's time, an
    /// upstream's bill) and runs on to be charged, unless the backend declared that
    /// dropping its future stops the work at nobody's cost.
    async fn watch(
        &mut self,
        hold: HoldId,
        work: impl std::future::Future<Output = Result<Rendered, GatewayError>>,
        mut client: ClientWatch,
        progress: &Progress,
    ) -> Result<Rendered, GatewayError> {
        tokio::pin!(work);
        // Most work never waits a third of a TTL: no timer for work that is done at once.
        if let Poll::Ready(done) = futures_util::poll!(work.as_mut()) {
            return done;
        }
        let every = (self.hold_ttl / 3).max(Duration::from_millis(100));
        let mut renewals = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut watching = true;
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = renewals.tick() => match self.ledger.renew(hold, self.hold_ttl).await {
                    Ok(true) => {}
                    Ok(false) => tracing::error!(%hold, "a live request's hold expired; its settle will charge late"),
                    Err(error) => tracing::error!(%error, %hold, "renewing a hold failed"),
                },
                () = client.gone(), if watching => {
                    // `work` is polled only here, so it cannot begin between this check
                    // and its drop.
                    if self.cancel_abandoned || !progress.has_started() {
                        tracing::info!("client gone; the job's work is cancelled");
                        return Err(GatewayError::RequestTimeout);
                    }
                    tracing::info!("client gone; the job's work runs to its end and is charged");
                    watching = false;
                }
            }
        }
    }
}

/// Takes `amount` on hold for the job's caller, within its key's daily limit.
async fn hold(
    ledger: &Arc<dyn Ledger>,
    registry: Option<Arc<dyn KeyRegistry>>,
    job: &EditJob,
    amount: Amount,
    ttl: Duration,
) -> Result<(HoldId, Option<Spend>), GatewayError> {
    let key = job.principal.key.as_ref().map(|grant| grant.id.to_string());
    let memo = Memo::new(
        job.request_id.as_str(),
        job.params.model.clone(),
        job.params.n,
    )
    .with_key(key);
    let spend = reserve(registry, &job.principal, amount).await?;
    match ledger
        .hold(job.principal.user_id(), amount, ttl, memo)
        .await
    {
        Ok(hold) => Ok((hold.id, spend)),
        Err(error) => {
            if let Some(spend) = spend {
                spend.give_back(Amount::new(0)).await;
            }
            Err(error.into())
        }
    }
}

/// Takes over the hold of an earlier run of the job (its process died): still open, it
/// is renewed and this run ends it. An ended one (expired, so its money is back, or
/// settled) is not run on: the job fails, interrupted, and nothing more is charged.
/// The earlier run's daily-limit reservation stays counted (the safe side).
async fn take_over(
    ledger: &Arc<dyn Ledger>,
    hold: HoldId,
    ttl: Duration,
) -> Result<HoldId, GatewayError> {
    match ledger.renew(hold, ttl).await? {
        true => Ok(hold),
        false => {
            tracing::warn!(%hold, "a job run again found its hold ended; it is not run");
            Err(GatewayError::Upstream)
        }
    }
}

/// Reserves `amount` against the key's daily limit, when it has one (`429
/// daily_limit_exceeded` when the day's spend would pass it).
async fn reserve(
    registry: Option<Arc<dyn KeyRegistry>>,
    principal: &Principal,
    amount: Amount,
) -> Result<Option<Spend>, GatewayError> {
    let (Some(registry), Some(grant)) = (registry, &principal.key) else {
        return Ok(None);
    };
    let Some(limit) = grant.limits.daily_limit else {
        return Ok(None);
    };
    let now = unix_now();
    let day = utc_day(now);
    let reserved = registry
        .reserve(grant.id, day, amount.get(), limit)
        .await
        .map_err(|error| {
            GatewayError::internal(format!("key store, counting a daily limit: {error}"))
        })?;
    if !reserved {
        let to_midnight = 86_400 - now % 86_400;
        return Err(GatewayError::DailyLimitExceeded {
            retry_after: Duration::from_secs(to_midnight),
        });
    }
    Ok(Some(Spend {
        registry,
        key: grant.id,
        day,
        reserved: amount,
    }))
}
