use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use http::{Request, Response};
use tower::ServiceExt;
use tower_service::Service;

use super::layer::Limits;
use crate::auth::{Principal, UserId};
use crate::future::ResponseFuture;
use crate::lease::Leases;
use crate::GatewayError;

/// Refuses callers over their rate or in-flight limit with `429`.
#[derive(Clone)]
pub struct RateLimit<S> {
    pub(super) inner: S,
    pub(super) limits: Arc<Limits>,
}

impl<S> std::fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit").finish_non_exhaustive()
    }
}

impl Limits {
    /// `Err(wait)` when `user` is over its rate.
    fn check_rate(&self, user: &UserId) -> Result<(), Duration> {
        let limiter = self.overrides.get(user).or(self.global.as_ref());
        match limiter.map(|l| l.check_key(user)) {
            None | Some(Ok(())) => Ok(()),
            Some(Err(not_until)) => Err(not_until.wait_time_from(DefaultClock::default().now())),
        }
    }

    /// Takes one in-flight slot of `user`, or `None` when all are taken.
    fn enter(self: &Arc<Self>, user: &UserId) -> Option<InFlight> {
        let Some(max) = self.max_in_flight else {
            return Some(InFlight {
                limits: None,
                user: user.clone(),
            });
        };
        let mut counts = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(user.clone()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(InFlight {
            limits: Some(self.clone()),
            user: user.clone(),
        })
    }
}

/// One request in flight; the slot is given back on drop, whatever ended the request.
struct InFlight {
    limits: Option<Arc<Limits>>,
    user: UserId,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(limits) = &self.limits else { return };
        let mut counts = limits.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

/// One request in flight counted in Redis; given back on drop.
#[cfg(feature = "redis")]
struct SharedSlot {
    redis: super::RedisLimits,
    user: UserId,
    slot: Option<String>,
}

#[cfg(feature = "redis")]
impl Drop for SharedSlot {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.redis.leave(&self.user, slot);
        }
    }
}

impl<S, B, ResBody> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    ResBody: From<Bytes> + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<Response<ResBody>, S::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let limits = self.limits.clone();
        ResponseFuture::new(async move {
            let mut req = req;
            let Ok(principal) = Principal::of_request(req.extensions()) else {
                return inner.oneshot(req).await;
            };
            let user = principal.user_id();
            #[cfg(feature = "redis")]
            if let Some(redis) = &limits.redis {
                let (rate, most) = (limits.rate_of(user), limits.max_in_flight);
                if rate.is_none() && most.is_none() {
                    return inner.oneshot(req).await;
                }
                let slot = match redis.admit(user, rate, most).await {
                    Ok(Ok(slot)) => slot,
                    Ok(Err(wait)) => {
                        let refused = GatewayError::RateLimitExceeded { retry_after: wait };
                        return Ok(refused.into_response());
                    }
                    Err(error) => {
                        tracing::error!(%error, "the shared rate limits cannot be checked");
                        return Ok(GatewayError::LimitsUnavailable.into_response());
                    }
                };
                if let Some(slot) = slot {
                    let slot = SharedSlot {
                        redis: redis.clone(),
                        user: user.clone(),
                        slot: Some(slot),
                    };
                    Leases::add_to(req.extensions_mut(), Arc::new(slot));
                }
                return inner.oneshot(req).await;
            }
            if let Err(wait) = limits.check_rate(user) {
                return Ok(GatewayError::RateLimitExceeded { retry_after: wait }.into_response());
            }
            let Some(slot) = limits.enter(user) else {
                return Ok(GatewayError::RateLimitExceeded {
                    retry_after: Duration::from_secs(1),
                }
                .into_response());
            };
            // Held here for the request and, through its lease, by billing for as long as
            // the edit's work runs, which can be longer than the client stays.
            let slot = Arc::new(slot);
            Leases::add_to(req.extensions_mut(), slot.clone());
            inner.oneshot(req).await
        })
    }
}
