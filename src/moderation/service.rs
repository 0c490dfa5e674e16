use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::ServiceExt;
use tower_service::Service;

use super::{Moderation, ModerationError, Verdict};
use crate::future::ResponseFuture;
use crate::job::{EditJob, EditOutcome, EditRequest, Stage};
use crate::GatewayError;

/// Checks a request's prompt before the inner service (source resolution, the hold) sees
/// it; see the module docs.
#[derive(Clone)]
pub struct Moderated<S> {
    inner: S,
    moderation: Option<Arc<dyn Moderation>>,
    fail_open: bool,
}

impl<S> std::fmt::Debug for Moderated<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moderated").finish_non_exhaustive()
    }
}

impl<S> Moderated<S> {
    pub(crate) fn new(inner: S, moderation: Option<Arc<dyn Moderation>>, fail_open: bool) -> Self {
        Moderated {
            inner,
            moderation,
            fail_open,
        }
    }
}

impl<S> Service<EditRequest> for Moderated<S>
where
    S: Stage<EditRequest, EditOutcome>,
{
    type Response = EditOutcome;
    type Error = GatewayError;
    type Future = ResponseFuture<EditOutcome, GatewayError>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: EditRequest) -> Self::Future {
        let inner = self.inner.clone();
        let (moderation, fail_open) = (self.moderation.clone(), self.fail_open);
        ResponseFuture::new(async move {
            // A job run again after a crash was checked when it was accepted.
            if let (Some(moderation), None) = (moderation, req.resume) {
                let verdict = moderation.check(&req.params.prompt).await;
                judge(verdict, fail_open)?;
            }
            inner.oneshot(req).await
        })
    }
}

impl<S> Service<EditJob> for Moderated<S>
where
    S: Stage<EditJob, EditOutcome>,
{
    type Response = EditOutcome;
    type Error = GatewayError;
    type Future = ResponseFuture<EditOutcome, GatewayError>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, job: EditJob) -> Self::Future {
        let inner = self.inner.clone();
        let (moderation, fail_open) = (self.moderation.clone(), self.fail_open);
        ResponseFuture::new(async move {
            let checked = moderation.filter(|_| job.resume.is_none() && !job.sources.is_empty());
            if let Some(moderation) = checked {
                let verdict = moderation.check_images(&job.sources).await;
                judge(verdict, fail_open)?;
            }
            inner.oneshot(job).await
        })
    }
}

/// What a check's outcome means for the request: flagged, refused; failed, refused unless
/// the gateway fails open.
fn judge(verdict: Result<Verdict, ModerationError>, fail_open: bool) -> Result<(), GatewayError> {
    match verdict {
        Ok(Verdict::Allowed) => Ok(()),
        Ok(Verdict::Flagged { reason }) => {
            Err(GatewayError::ContentPolicyViolation { message: reason })
        }
        Err(error) if fail_open => {
            tracing::warn!(%error, "moderation failed; the request goes through (fail open)");
            Ok(())
        }
        Err(error) => {
            tracing::error!(%error, "moderation failed; the request is refused (fail closed)");
            Err(GatewayError::ModerationUnavailable {
                retry_after: Duration::from_secs(1),
            })
        }
    }
}
