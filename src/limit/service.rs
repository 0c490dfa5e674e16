use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::Limited;
use tower_service::Service;

use super::ResponseFuture;
use crate::GatewayError;

/// Rejects announced oversize bodies at once and caps the rest while they stream.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit<S> {
    inner: S,
    limit: u64,
}

impl<S> BodyLimit<S> {
    pub(crate) fn new(inner: S, limit: u64) -> Self {
        BodyLimit { inner, limit }
    }
}

impl<S, B, ResBody> Service<Request<B>> for BodyLimit<S>
where
    S: Service<Request<Limited<B>>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let announced = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|len| len > self.limit) {
            let error = GatewayError::PayloadTooLarge;
            return ResponseFuture::reject(error.into_response());
        }
        let limit = usize::try_from(self.limit).unwrap_or(usize::MAX);
        let req = req.map(|body| Limited::new(body, limit));
        ResponseFuture::inner(self.inner.call(req))
    }
}
