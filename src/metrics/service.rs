use std::convert::Infallible;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Method, Request, Response};
use tower_service::Service;

use super::{Metrics, METRICS_PATH};
use crate::future::ResponseFuture;
use crate::{GatewayError, ResponseBody};

/// The content type of the OpenMetrics text format, which Prometheus reads.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Answers `GET /metrics` with no key, for a listen address of its own that only the
/// scraper reaches. Any other path is `404`, any other method `405`.
///
/// On the public listener the [`Gateway`](crate::Gateway) serves the same text behind its
/// admin key instead.
#[derive(Clone, Debug)]
pub struct MetricsService {
    metrics: Metrics,
}

impl MetricsService {
    /// Serves `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        MetricsService { metrics }
    }
}

impl Metrics {
    /// The scrape answer: the text with its content type.
    pub(crate) fn response(&self) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::from(self.encode()));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        response
    }
}

impl<B> Service<Request<B>> for MetricsService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture<Response<ResponseBody>, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match (req.uri().path(), req.method()) {
            (METRICS_PATH, &Method::GET) => ResponseFuture::ready(self.metrics.response()),
            (METRICS_PATH, _) => ResponseFuture::reject(GatewayError::MethodNotAllowed),
            _ => ResponseFuture::reject(GatewayError::RouteNotFound),
        }
    }
}
