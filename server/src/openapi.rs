//! `GET /openapi.json`, answered before the gateway (and its key check) sees the request.

use std::convert::Infallible;
use std::error::Error;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response};
use image_gateway::{Gateway, ResponseBody, ResponseFuture};

/// `openapi.yaml`, as JSON: converted once at start, so a broken document stops the start.
pub fn document() -> Result<Bytes, Box<dyn Error>> {
    let document: serde_json::Value = serde_yaml::from_str(include_str!("../../openapi.yaml"))?;
    Ok(Bytes::from(serde_json::to_vec(&document)?))
}

/// The gateway, plus `GET /openapi.json` for anyone.
#[derive(Clone)]
pub struct WithOpenApi {
    pub gateway: Gateway,
    pub document: Bytes,
}

impl<B> tower::Service<Request<B>> for WithOpenApi
where
    Gateway: tower::Service<
        Request<B>,
        Response = Response<ResponseBody>,
        Error = Infallible,
        Future = ResponseFuture<Response<ResponseBody>, Infallible>,
    >,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture<Response<ResponseBody>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower::Service::<Request<B>>::poll_ready(&mut self.gateway, cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if req.method() == Method::GET && req.uri().path() == "/openapi.json" {
            let mut answer = Response::new(ResponseBody::from(self.document.clone()));
            answer
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return ResponseFuture::ready(answer);
        }
        self.gateway.call(req)
    }
}
