use std::task::{Context, Poll};

use tower::ServiceExt;
use tower_service::Service;

use crate::backend::EditJob;
use crate::future::ResponseFuture;
use crate::request::{EditRequest, Source};
use crate::GatewayError;

/// Fetches the source image of each edit and hands the inner service an [`EditJob`].
#[derive(Clone, Debug)]
pub struct ResolveSource<S> {
    inner: S,
}

impl<S> ResolveSource<S> {
    pub(crate) fn new(inner: S) -> Self {
        ResolveSource { inner }
    }
}

impl<S, R> Service<EditRequest> for ResolveSource<S>
where
    S: Service<EditJob, Response = R, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
    R: Send + 'static,
{
    type Response = R;
    type Error = GatewayError;
    type Future = ResponseFuture<R, GatewayError>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: EditRequest) -> Self::Future {
        let inner = self.inner.clone();
        ResponseFuture::new(async move {
            let sources = match req.source {
                Source::Upload(images) => images,
                Source::ImageKey(_) => return Err(GatewayError::ImageNotFound),
                Source::Generation(_) => return Err(GatewayError::GenerationNotFound),
            };
            let job = EditJob {
                principal: req.principal,
                sources,
                params: req.params,
            };
            inner.oneshot(job).await
        })
    }
}
