//! The boxed response future shared by the layers whose work is `async`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

type Boxed<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// Response future of a layer that awaits trait objects (key stores, ledgers, backends).
///
/// It is boxed because those calls are `async fn`s of `dyn` traits; the states stay private.
pub struct ResponseFuture<T, E> {
    inner: Boxed<T, E>,
}

impl<T, E> ResponseFuture<T, E> {
    pub(crate) fn new(future: impl Future<Output = Result<T, E>> + Send + 'static) -> Self {
        ResponseFuture {
            inner: Box::pin(future),
        }
    }
}

impl<T: Send + 'static, E: Send + 'static> ResponseFuture<T, E> {
    /// A future that is already answered.
    pub fn ready(value: T) -> Self {
        ResponseFuture::new(async move { Ok(value) })
    }
}

impl ResponseFuture<http::Response<crate::ResponseBody>, std::convert::Infallible> {
    /// Answers with the response `answer` produces, or with its error rendered in the spec's
    /// envelope: the one way an endpoint turns a [`GatewayError`](crate::GatewayError) into
    /// a reply.
    pub(crate) fn answer(
        answer: impl Future<Output = Result<http::Response<crate::ResponseBody>, crate::GatewayError>>
            + Send
            + 'static,
    ) -> Self {
        ResponseFuture::new(async move {
            Ok(answer
                .await
                .unwrap_or_else(crate::GatewayError::into_response))
        })
    }

    /// Answers at once with `error` in the spec's envelope.
    pub(crate) fn reject(error: crate::GatewayError) -> Self {
        ResponseFuture::ready(error.into_response())
    }
}

/// Runs `work` to its end whatever happens to the caller: polled once inline (work that is
/// done at once needs no task), then, if it waits, on a task of its own that a dropped
/// caller does not cancel. Money steps and the records that follow them run this way.
pub(crate) async fn run_to_end<T: Send + 'static>(
    work: impl Future<Output = Result<T, crate::GatewayError>> + Send + 'static,
) -> Result<T, crate::GatewayError> {
    let mut work = Box::pin(work);
    // A drop falls between polls, so work done in its first poll cannot be cut.
    if let Poll::Ready(done) = futures_util::poll!(work.as_mut()) {
        return done;
    }
    tokio::spawn(work).await.unwrap_or_else(|error| {
        tracing::error!(%error, "a task that must run to its end failed");
        Err(crate::GatewayError::Internal)
    })
}

impl<T, E> Future for ResponseFuture<T, E> {
    type Output = Result<T, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T, E> fmt::Debug for ResponseFuture<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
