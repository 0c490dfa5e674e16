//! A ready accept loop: serve any gateway service on a `TcpListener` with hyper.
//!
//! [`serve`] speaks HTTP/1.1 and HTTP/2 (by preface) on every accepted connection, gives
//! each connection its own task, and on `shutdown` stops accepting, then waits up to the
//! grace period for in-flight requests to finish.
//!
//! # Bounds against slow and greedy clients
//! - at most [`ServeOptions::max_connections`] connections at once; further ones wait in
//!   the listen backlog until one closes;
//! - a request head must arrive within [`ServeOptions::header_read_timeout`], or the
//!   connection is closed (slowloris);
//! - a request body must arrive within [`ServeOptions::body_read_timeout`] ([`TimedBody`]),
//!   or it is answered `408 request_timeout`;
//! - every request is answered within [`ServeOptions::request_timeout`] (`408`), its work
//!   dropped (so holds are released).
//!
//! It exists so an operator can run the gateway as its own process in a few lines; mounting
//! into an existing hyper or axum server needs none of it (see the `hyper_server` and
//! `axum_mount` examples).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tower_service::Service;

use crate::{GatewayError, ResponseBody};

mod timed_body;

pub use timed_body::{BodyTimeout, TimedBody};

/// Settings of [`serve`].
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ServeOptions {
    /// How long a client may take to send its request head (default 30 s).
    pub header_read_timeout: Duration,
    /// How long a client may take to send a whole request body (default 120 s: 26 MiB at
    /// about 220 KB/s).
    pub body_read_timeout: Duration,
    /// How long one request may take from head to answer (default 600 s: image models are
    /// slow).
    pub request_timeout: Duration,
    /// How many connections are served at once (default 1024).
    pub max_connections: usize,
    /// How long in-flight requests may run after shutdown begins (default 30 s).
    pub grace_period: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(600),
            max_connections: 1024,
            grace_period: Duration::from_secs(30),
        }
    }
}

/// Serves `service` on `listener` until `shutdown` completes, then drains connections for
/// up to [`ServeOptions::grace_period`].
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    S: Service<Request<TimedBody<Incoming>>, Response = Response<ResponseBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let connections = Arc::new(Semaphore::new(options.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    // Out of descriptors and similar: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = Bounded {
            inner: service.clone(),
            options,
        };
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // hyper's head timeout starts with the first byte; a client that sends nothing
            // at all is cut off here, or it would hold its connection slot forever.
            let mut first = [0u8; 1];
            match tokio::time::timeout(options.header_read_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return drop(permit),
            }
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(options.header_read_timeout);
            let connection = builder
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                .into_owned();
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(options.grace_period, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing the remaining connections");
    }
    Ok(())
}

/// Puts each request's body on its read deadline and the whole request on its deadline.
#[derive(Clone)]
struct Bounded<S> {
    inner: S,
    options: ServeOptions,
}

impl<S> Service<Request<Incoming>> for Bounded<S>
where
    S: Service<Request<TimedBody<Incoming>>, Response = Response<ResponseBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = crate::ResponseFuture<Response<ResponseBody>, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let req = req.map(|body| TimedBody::new(body, self.options.body_read_timeout));
        let answer = self.inner.clone().oneshot(req);
        let limit = self.options.request_timeout;
        crate::ResponseFuture::new(async move {
            match tokio::time::timeout(limit, answer).await {
                Ok(answered) => answered,
                Err(_) => Ok(GatewayError::RequestTimeout.into_response()),
            }
        })
    }
}
