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

/// Runs `work` to its end whatever happens to the caller: it is polled where it is awaited,
/// and handed to a task of its own only when the caller drops it before its end, so a
/// dropped caller never cuts it and the usual path costs no task (no spawn, no wake-up of
/// another worker when it ends). Money steps and the records that follow them run this way.
/// A panic in the work answers `500`, as a failed task would.
pub(crate) fn run_to_end<T, F>(work: F) -> RunToEnd<F>
where
    T: Send + 'static,
    F: Future<Output = Result<T, crate::GatewayError>> + Send + 'static,
{
    RunToEnd {
        work: Some(Box::pin(work)),
    }
}

/// The future [`run_to_end`] returns.
pub(crate) struct RunToEnd<F: Future + Send + 'static> {
    /// `None` once the work has ended (answered or panicked).
    work: Option<Pin<Box<F>>>,
}

impl<T, F> Future for RunToEnd<F>
where
    F: Future<Output = Result<T, crate::GatewayError>> + Send + 'static,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(work) = self.work.as_mut() else {
            let error = crate::GatewayError::internal("work that ran to its end was polled again");
            error.report();
            return Poll::Ready(Err(error));
        };
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work.as_mut().poll(cx)));
        let done = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(done)) => done,
            Err(_) => {
                // Logged here: the work's client may have gone, and nothing then renders its end.
                let error = crate::GatewayError::internal("work that must run to its end panicked");
                error.report();
                Err(error)
            }
        };
        self.work = None;
        Poll::Ready(done)
    }
}

impl<F: Future + Send + 'static> Drop for RunToEnd<F> {
    fn drop(&mut self) {
        let Some(work) = self.work.take() else {
            return;
        };
        // The caller left between two polls: the rest runs on a task of its own, whose
        // answer nobody waits for.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(async move {
                work.await;
            })),
            Err(_) => {
                tracing::error!("work that must run to its end was dropped outside a runtime")
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use tokio::sync::oneshot;

    use super::{run_to_end, RunToEnd};
    use crate::GatewayError;

    /// Work that waits for `open`, then sets `ended`: polled once (it waits), then
    /// answered with the runtime's count of live tasks.
    struct Waiting {
        open: oneshot::Sender<()>,
        ended: Arc<AtomicBool>,
        work: RunToEnd<Gated>,
        tasks: usize,
    }

    type Gated = Pin<Box<dyn Future<Output = Result<u32, GatewayError>> + Send>>;

    async fn waiting() -> Waiting {
        let (open, gate) = oneshot::channel::<()>();
        let ended = Arc::new(AtomicBool::new(false));
        let flag = ended.clone();
        let work: Gated = Box::pin(async move {
            let _ = gate.await;
            flag.store(true, Ordering::SeqCst);
            Ok(7)
        });
        let mut work = run_to_end(work);
        assert!(futures_util::poll!(&mut work).is_pending());
        let tasks = live_tasks();
        Waiting {
            open,
            ended,
            work,
            tasks,
        }
    }

    fn live_tasks() -> usize {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    }

    #[tokio::test]
    async fn work_awaited_to_its_end_runs_on_the_callers_task() {
        let Waiting {
            open,
            ended,
            work,
            tasks,
        } = waiting().await;
        assert_eq!(tasks, 0, "waiting work has no task of its own");
        open.send(()).unwrap();
        assert_eq!(work.await.unwrap(), 7);
        assert!(ended.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn work_dropped_while_it_waits_still_runs_to_its_end() {
        let Waiting {
            open, ended, work, ..
        } = waiting().await;
        drop(work);
        assert_eq!(live_tasks(), 1, "the rest went to a task of its own");
        open.send(()).unwrap();
        for _ in 0..100 {
            if ended.load(Ordering::SeqCst) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the dropped work never ended");
    }

    #[tokio::test]
    async fn a_panic_in_the_work_answers_internal() {
        let work = run_to_end(async {
            if std::hint::black_box(true) {
                panic!("a bug in a money step");
            }
            Ok(())
        });
        assert!(matches!(work.await, Err(GatewayError::Internal { .. })));
    }

    #[tokio::test]
    async fn a_panic_after_a_wait_answers_internal_too() {
        let (open, gate) = oneshot::channel::<()>();
        let mut work = Box::pin(run_to_end(async move {
            let _ = gate.await;
            if std::hint::black_box(true) {
                panic!("a bug after the ledger answered");
            }
            Ok(())
        }));
        assert!(futures_util::poll!(work.as_mut()).is_pending());
        open.send(()).unwrap();
        assert!(matches!(work.await, Err(GatewayError::Internal { .. })));
    }
}
