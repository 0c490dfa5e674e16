//! A ready accept loop: serve any gateway service on a `TcpListener` with hyper.
//!
//! [`serve`] speaks HTTP/1.1 and HTTP/2 (by preface) on every accepted connection, gives
//! each connection its own task, and on `shutdown` stops accepting, tells every connection
//! to close once its requests are answered, and waits up to the grace period for them.
//!
//! # Bounds against slow, silent and greedy clients
//! - at most [`ServeOptions::max_connections`] connections at once. At the cap, the worst
//!   offender is closed to make room: the connection idle for longest (no request in
//!   flight: silent, or kept alive between requests), else the one reading a request body
//!   at the lowest rate; only when every connection's request is at work does a new one
//!   wait;
//! - at most [`ServeOptions::max_connections_per_peer`] connections per peer address; at
//!   that share the peer's own worst offender is closed for a newcomer (so silent sockets
//!   never keep an answering client of their address out), and the newcomer is refused
//!   only when all of the peer's connections are at work. A
//!   [trusted proxy](ServeOptions::trusted_proxies) has no share: it carries many clients;
//! - a request body must arrive at [`ServeOptions::min_body_rate`] on average once its first
//!   10 s of waiting are over (`408`);
//! - a first request must begin within [`ServeOptions::header_read_timeout`] of the accept,
//!   on either protocol (a socket that sends nothing, or only the HTTP/2 preface, is
//!   closed); a request head must arrive within the same time (slowloris);
//! - a connection with no request in flight for [`ServeOptions::idle_timeout`] is closed; a
//!   request is in flight until its answer's body is sent, so a stream or a large answer
//!   being read keeps its connection busy;
//!   HTTP/2 peers are pinged every [`ServeOptions::http2_keep_alive_interval`] and dropped
//!   when they stop answering;
//! - a request body must arrive within [`ServeOptions::body_read_timeout`] ([`TimedBody`]),
//!   or it is answered `408 request_timeout`;
//! - every request is answered within [`ServeOptions::request_timeout`] (`408`). A billed
//!   edit's work is not tied to the answer: it runs to its end (see [`billing`](crate::billing)).
//! - protocol errors are logged once per connection, at `debug`.
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
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;
use tower_service::Service;

use crate::auth::ClientIp;
use crate::{ClientAborted, GatewayError, ResponseBody};

mod conn;
mod timed_body;

pub use crate::body::BodyTimeout;
use conn::{Close, Registered, Registry};
pub use timed_body::TimedBody;

/// How long an idle connection may take to close politely (HTTP/2 GOAWAY) before it is
/// dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How often a connection waiting at the cap looks again for an idle one to close.
const EVICT_RETRY: Duration = Duration::from_millis(100);

/// Settings of [`serve`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServeOptions {
    /// How long a client may take from the accept to its first request, and to send any
    /// request head (default 30 s).
    pub header_read_timeout: Duration,
    /// How long a client may take to send a whole request body (default 120 s: 26 MiB at
    /// about 220 KB/s).
    pub body_read_timeout: Duration,
    /// How long one request may take from head to answer (default 600 s: image models are
    /// slow).
    pub request_timeout: Duration,
    /// How long a connection may stay open with no request in flight (default 60 s).
    pub idle_timeout: Duration,
    /// How often an HTTP/2 peer is pinged; one that does not answer within the same time is
    /// dropped (default 20 s).
    pub http2_keep_alive_interval: Duration,
    /// How many connections are served at once (default 1024).
    pub max_connections: usize,
    /// How many of them one peer address may hold (default 256).
    pub max_connections_per_peer: usize,
    /// How long in-flight requests may run after shutdown begins (default 30 s).
    pub grace_period: Duration,
    /// The least average rate, in bytes per second of waiting, at which a request body must
    /// arrive once its first 10 s are over; slower is `408` (default 1024; 0: no minimum).
    pub min_body_rate: u64,
    /// Proxies whose `X-Forwarded-For` (or `Forwarded: for=`) is believed: a request from
    /// one is from the address they name (the last one not itself a trusted proxy), which
    /// keys' IP allow-lists check; a trusted proxy holds any number of connections. Default
    /// none: a forwarded header is never believed, as any client can send one.
    pub trusted_proxies: Vec<crate::auth::Cidr>,
    /// Where open connections are counted (`image_gateway_connections_open`); default none.
    pub metrics: Option<crate::metrics::Metrics>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(60),
            http2_keep_alive_interval: Duration::from_secs(20),
            max_connections: 1024,
            max_connections_per_peer: 256,
            grace_period: Duration::from_secs(30),
            min_body_rate: 1024,
            trusted_proxies: Vec::new(),
            metrics: None,
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
    let mut shutdown = std::pin::pin!(shutdown);
    let max = options.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max));
    let registry = Registry::new();
    loop {
        let (stream, peer) = tokio::select! {
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
        let share = (!ClientIp::is_trusted(&options.trusted_proxies, peer.ip()))
            .then_some(options.max_connections_per_peer.max(1));
        let Some(registered) = registry.register(peer.ip(), share) else {
            tracing::debug!(%peer, "connection refused: the peer's connections are all at work");
            continue;
        };
        // At the cap: make room by closing the worst offender; wait only while every
        // connection is at work, trying again now and then.
        let slot = loop {
            if let Ok(slot) = slots.clone().try_acquire_owned() {
                break Some(slot);
            }
            registry.make_room(&registered);
            tokio::select! {
                slot = slots.clone().acquire_owned() => break slot.ok(),
                () = tokio::time::sleep(EVICT_RETRY) => {}
                () = &mut shutdown => break None,
            }
        };
        let Some(slot) = slot else { break };
        let service = service.clone();
        tokio::spawn(serve_connection(
            stream,
            peer,
            service,
            registered,
            slot,
            options.clone(),
        ));
    }
    drop(listener);
    registry.close_all();
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(options.grace_period, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing the remaining connections");
    }
    Ok(())
}

/// Serves one connection until it ends, or until its watchdog or the server closes it.
async fn serve_connection<S>(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    service: S,
    registered: Registered,
    slot: OwnedSemaphorePermit,
    options: ServeOptions,
) where
    S: Service<Request<TimedBody<Incoming>>, Response = Response<ResponseBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let _slot = slot;
    let _open = options.metrics.as_ref().map(|m| m.connection());
    let registered = Arc::new(registered);
    // hyper's head timeout starts with the first byte; a client that sends nothing at all
    // is cut off here, or it would hold its connection slot until the idle watchdog.
    let mut first = [0u8; 1];
    tokio::select! {
        peeked = tokio::time::timeout(options.header_read_timeout, stream.peek(&mut first)) => {
            if !matches!(peeked, Ok(Ok(n)) if n > 0) {
                return;
            }
        }
        () = registered.told_to_close() => return,
    }
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        // hyper's read buffer grows to this while a body streams in and keeps its size for
        // the connection's life: 64 KiB instead of about 400 KiB bounds what each idle or
        // waiting connection holds after a large upload (headers still have 64 KiB).
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(options.http2_keep_alive_interval)
        .keep_alive_timeout(options.http2_keep_alive_interval);
    let service = Bounded {
        inner: service,
        options: options.clone(),
        connection: Some(registered.clone()),
        peer: Some(peer.ip()),
    };
    let connection =
        builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => Some(ended),
        why = registered.closing(options.header_read_timeout, options.idle_timeout) => {
            let idle = registered.active() == 0;
            if (idle && why == Close::Told) || registered.cut() {
                // Evicted (someone needs the room now; a slow body with it) or shutting
                // down while idle: no goodbye.
                None
            } else {
                connection.as_mut().graceful_shutdown();
                let grace = if idle { IDLE_CLOSE_GRACE } else { options.grace_period };
                tokio::time::timeout(grace, connection.as_mut()).await.ok()
            }
        }
    };
    // One line per connection, whatever the peer did: never one per request or frame.
    let aborted = registered.aborted_count();
    match ended {
        Some(Err(error)) => {
            tracing::debug!(%peer, %error, aborted, "connection ended with an error")
        }
        _ if aborted > 0 => {
            tracing::info!(%peer, aborted, "connection ended; its client cut off requests")
        }
        _ => {}
    }
}

/// Puts each request's body on its read deadline and the whole request on its deadline,
/// and marks the connection busy while it runs.
#[derive(Clone)]
struct Bounded<S> {
    inner: S,
    options: ServeOptions,
    connection: Option<Arc<Registered>>,
    peer: Option<std::net::IpAddr>,
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
        let watch = self.connection.as_ref().map(|c| c.body_watch());
        let (limit, rate) = (self.options.body_read_timeout, self.options.min_body_rate);
        let mut req = req.map(|body| {
            let body = TimedBody::new(body, limit).min_rate(rate);
            match watch {
                Some(watch) => body.watched(watch),
                None => body,
            }
        });
        if let Some(peer) = self.peer {
            let client = ClientIp::resolve(peer, req.headers(), &self.options.trusted_proxies);
            req.extensions_mut().insert(client);
        }
        let answer = self.inner.clone().oneshot(req);
        let limit = self.options.request_timeout;
        let connection = self.connection.clone();
        let in_request = connection.as_ref().map(|c| c.begin());
        crate::ResponseFuture::new(async move {
            let response = match tokio::time::timeout(limit, answer).await {
                Ok(answered) => answered?,
                Err(_) => GatewayError::RequestTimeout.into_response(),
            };
            if response.extensions().get::<ClientAborted>().is_some() {
                if let Some(connection) = &connection {
                    connection.aborted();
                }
            }
            // The request is in flight until its answer's body is sent, not only its head: a
            // stream that waits for a long render, or a large answer read slowly, keeps its
            // connection busy (never closed as idle, never evicted to make room).
            Ok(match in_request {
                Some(in_request) => response.map(|body| body.keep_while_sent(in_request)),
                None => response,
            })
        })
    }
}
