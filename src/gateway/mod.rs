//! The assembled gateway: every layer in the spec's order, as one `tower::Service`.
//!
//! [`Gateway::builder`] stacks, outermost first:
//!
//! ```text
//! Auth -> RateLimit -> BodyLimit -> routes: POST /v1/images/{edits,generations,compose} -> Normalize -> Idempotency -> ResolveSource -> Billing -> EditService
//!                                          GET /v1/models                        -> the catalog
//!                                          /api/v1/upload, /api/v1/files[/{key}] -> FileApi
//!                                          /api/v1/balance, /api/v1/usage        -> AccountApi
//! /admin/v1/... (own admin key, when configured)                     -> AdminApi
//! GET /metrics (the admin key, when metrics and the key are configured) -> Metrics
//! GET /healthz, GET /readyz (no key)                                  -> health
//! ```
//!
//! Every request runs in a `tracing` span `request{id, method, path, user, model, n}` and
//! ends with one `request finished` event (status, latency); its [`RequestId`] (the client's
//! `x-request-id` when it sent a sane one, otherwise a fresh UUID) is echoed in the
//! `x-request-id` response header. No span or event carries a key or image bytes.
//!
//! The result is a `Service<http::Request<B>>` for any body `B` with `Bytes` data, whose
//! error type is [`Infallible`]: every failure is answered with a response in the spec's
//! envelope, so hyper never closes a connection without a reply. It mounts in plain hyper
//! (through `hyper_util::service::TowerToHyperService`) or in axum
//! (`Router::route_service`). Every layer is also usable alone; see their modules.
//!
//! # Example
//! ```
//! use bytes::Bytes;
//! use http::{Request, StatusCode};
//! use http_body_util::Full;
//! use image_gateway::auth::StaticKeys;
//! use image_gateway::Gateway;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let keys = StaticKeys::new().with_key("alice", "pk_live_alice").unwrap();
//! let gateway = Gateway::builder().keys(keys).build();
//!
//! let req = Request::post("/v1/images/edits")
//!     .header("authorization", "Bearer pk_live_alice")
//!     .header("content-type", "application/json")
//!     .body(Full::<Bytes>::from(r#"{"model":"gpt-image-2","prompt":"p","generation_id":"nope"}"#))
//!     .unwrap();
//! let res = gateway.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::BAD_REQUEST); // invalid_generation_id
//! # }
//! ```

mod builder;
mod routes;

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use http_body::Body as _;
use tower_service::Service;
use tracing::Instrument;

pub use builder::{GatewayBuilder, JobLimits, DEFAULT_MODEL};
pub use routes::{COMPOSE_PATH, EDITS_PATH, GENERATIONS_PATH, MODELS_PATH};

use crate::admin::AdminApi;
use crate::auth::{ApiKey, Auth, UserId};
use crate::billing::ExpirySweep;
use crate::future::ResponseFuture;
use crate::health::{Health, Readiness};
use crate::id::RequestId;
use crate::jobs::JobBoard;
use crate::limit::BodyLimit;
use crate::metrics::{Answered, Metrics, ModelLabel, METRICS_PATH};
use crate::ratelimit::RateLimit;
use crate::{ClientAborted, ErrorCode, GatewayError, RequestBody, ResponseBody};
use routes::Routes;

/// The whole gateway as one cloneable service. Build it with [`Gateway::builder`].
#[derive(Clone, Debug)]
pub struct Gateway {
    health: Health,
    jobs: JobBoard,
    runner: crate::request::JobRunner,
    admin: Option<AdminApi>,
    sweep: ExpirySweep,
    metrics: Option<Metrics>,
    inner: Auth<RateLimit<BodyLimit<Routes>>>,
}

impl Gateway {
    /// A builder with every default; see [`GatewayBuilder`].
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// The sweep that releases holds left by a process that died, for the embedder to spawn
    /// once per ledger: `tokio::spawn(gateway.expiry_sweep().run())`. Without it such holds
    /// stay held (the money is neither spent nor available) until some process sweeps.
    pub fn expiry_sweep(&self) -> ExpirySweep {
        self.sweep.clone()
    }

    /// The gateway's jobs: for the embedder to sweep ended records past their retention
    /// ([`JobBoard::sweep`]).
    pub fn jobs(&self) -> JobBoard {
        self.jobs.clone()
    }

    /// What renews this process's async jobs' leases and runs again those of a process
    /// that died, for the embedder to spawn once: `tokio::spawn(runner.run())` (after
    /// [`JobRunner::take_all`](crate::request::JobRunner::take_all), when this process is
    /// the only one on its records).
    pub fn job_runner(&self) -> crate::request::JobRunner {
        self.runner.clone()
    }

    /// The sender of webhooks, when the gateway has them
    /// ([`GatewayBuilder::webhooks`]), for the embedder to spawn once:
    /// `tokio::spawn(deliverer.run())`.
    #[cfg(feature = "fetch")]
    pub fn webhook_deliverer(&self) -> Option<crate::jobs::WebhookDeliverer> {
        self.jobs.deliverer()
    }

    /// The handle that turns `/readyz` to `503 draining`, for the embedder's shutdown:
    /// drain, wait for the balancer to notice, then stop accepting.
    pub fn readiness(&self) -> Readiness {
        self.health.readiness.clone()
    }

    /// `GET /metrics` for the admin key's holder; 404 when there are no metrics or no
    /// admin key (a scrape is then served on a listener of its own).
    fn scrape<B>(&self, req: &Request<B>) -> ResponseFuture<Response<ResponseBody>, Infallible> {
        let (Some(metrics), Some(admin)) = (&self.metrics, &self.admin) else {
            return ResponseFuture::reject(GatewayError::RouteNotFound);
        };
        if !admin.authorised(ApiKey::from_headers(req.headers())) {
            return ResponseFuture::reject(GatewayError::InvalidApiKey);
        }
        if req.method() != http::Method::GET {
            return ResponseFuture::reject(GatewayError::MethodNotAllowed);
        }
        ResponseFuture::ready(metrics.response())
    }
}

impl<B> Service<Request<B>> for Gateway
where
    B: RequestBody,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture<Response<ResponseBody>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<Request<B>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = RequestId::from_headers(req.headers());
        let span = tracing::info_span!(
            "request",
            id = %id,
            method = %req.method(),
            path = ?req.uri().path(),
            user = tracing::field::Empty,
            model = tracing::field::Empty,
            n = tracing::field::Empty,
        );
        req.extensions_mut().insert(id.clone());
        // Health checks and the admin door are outside user auth: no key is needed for the
        // first, and user keys never reach the second.
        let path = req.uri().path();
        let metrics = self.metrics.clone();
        let route = route_of(path);
        let method = req.method().clone();
        let request_bytes = req.body().size_hint().exact();
        let answer = if Health::serves(path) {
            if req.method() == http::Method::GET {
                self.health.answer(path)
            } else {
                ResponseFuture::reject(GatewayError::MethodNotAllowed)
            }
        } else if path == METRICS_PATH {
            self.scrape(&req)
        } else if path.starts_with("/admin/") {
            match &mut self.admin {
                Some(admin) => admin.call(req),
                None => ResponseFuture::reject(GatewayError::RouteNotFound),
            }
        } else {
            self.inner.call(req)
        };
        let started = Instant::now();
        ResponseFuture::new(
            async move {
                let mut response = answer.await?;
                if let Ok(value) = HeaderValue::from_str(id.as_str()) {
                    response.headers_mut().insert("x-request-id", value);
                }
                let status = response.status().as_u16();
                let latency = started.elapsed();
                let latency_ms = latency.as_secs_f64() * 1000.0;
                let extensions = response.extensions();
                if let Some(metrics) = &metrics {
                    metrics.request(Answered {
                        route,
                        method: &method,
                        status,
                        model: extensions.get::<ModelLabel>().map(|m| m.0.as_str()),
                        user: extensions.get::<UserId>(),
                        error_code: extensions.get::<ErrorCode>().map(|c| c.0),
                        latency,
                        request_bytes,
                        response_bytes: response.body().size_hint().exact(),
                    });
                }
                if extensions.get::<ClientAborted>().is_some() {
                    // Counted per connection by the server instead: one line, not thousands.
                    tracing::debug!(status, latency_ms, "request cut off by the client");
                } else if let Some(ErrorCode(code)) = extensions.get::<ErrorCode>() {
                    tracing::info!(status, code, latency_ms, "request finished");
                } else {
                    tracing::info!(status, latency_ms, "request finished");
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// The route a path belongs to: one of the gateway's own, so a client probing paths cannot
/// add series.
fn route_of(path: &str) -> &'static str {
    match path {
        EDITS_PATH => EDITS_PATH,
        GENERATIONS_PATH => GENERATIONS_PATH,
        COMPOSE_PATH => COMPOSE_PATH,
        MODELS_PATH => MODELS_PATH,
        "/api/v1/upload" => "/api/v1/upload",
        "/api/v1/files" => "/api/v1/files",
        "/api/v1/balance" => "/api/v1/balance",
        "/api/v1/usage" => "/api/v1/usage",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        METRICS_PATH => METRICS_PATH,
        "/v1/images/jobs" => "/v1/images/jobs",
        _ if path.starts_with("/v1/images/jobs/") && path.ends_with("/events") => {
            "/v1/images/jobs/{id}/events"
        }
        _ if path.starts_with("/v1/images/jobs/") => "/v1/images/jobs/{id}",
        _ if path.starts_with("/api/v1/files/") => "/api/v1/files/{key}",
        _ if path.starts_with("/admin/") => "/admin",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_paths_share_one_route() {
        assert_eq!(route_of("/v1/images/edits"), "/v1/images/edits");
        assert_eq!(
            route_of("/api/v1/files/files/u/x.png"),
            "/api/v1/files/{key}"
        );
        assert_eq!(route_of("/wp-login.php"), "other");
        assert_eq!(route_of("/v1/images/edits/../x"), "other");
    }
}
