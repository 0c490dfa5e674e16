//! A limit on the whole request body, enforced while it streams.
//!
//! [`BodyLimitLayer`] answers `413 request_too_large` before reading a byte when
//! `Content-Length` announces more than the limit. Otherwise it wraps the body in
//! [`http_body_util::Limited`], so a chunked or lying body fails with
//! [`LengthLimitError`] the moment the limit is crossed:
//! no more than `limit` bytes are ever read, whatever the client sends. The gateway's parsers
//! turn that error into the same 413 answer.
//!
//! The default limit is 26 MiB, the spec's whole-body limit (one 25 MiB image plus fields).
//!
//! # Example
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use image_gateway::limit::BodyLimitLayer;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(BodyLimitLayer::new(8))
//!     .service(service_fn(|req: Request<_>| async move {
//!         let body: http_body_util::Limited<Full<Bytes>> = req.into_body();
//!         let status = match body.collect().await {
//!             Ok(_) => StatusCode::OK,
//!             Err(_) => StatusCode::PAYLOAD_TOO_LARGE,
//!         };
//!         let mut res = Response::new(Full::<Bytes>::default());
//!         *res.status_mut() = status;
//!         Ok::<_, std::convert::Infallible>(res)
//!     }));
//!
//! let big = Request::new(Full::from("more than eight bytes"));
//! let res = svc.oneshot(big).await.unwrap();
//! assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
//! # }
//! ```

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::BodyLimitLayer;
pub use service::BodyLimit;

use http_body_util::LengthLimitError;

use crate::{BoxError, GatewayError};

/// 26 MiB: the spec's limit on a whole request body.
pub const DEFAULT_BODY_LIMIT: u64 = 26 * 1024 * 1024;

/// A failed body read: over a limit is 413, anything else (a client gone, a broken
/// transfer) is a 400 nobody will likely read.
pub(crate) fn body_error(error: impl Into<BoxError>) -> GatewayError {
    let error = error.into();
    if error.is::<LengthLimitError>() {
        GatewayError::PayloadTooLarge
    } else if is_timeout(&*error) {
        GatewayError::RequestTimeout
    } else {
        GatewayError::BodyCutOff
    }
}

/// Whether a body error is the server's read deadline (or minimum rate) passing.
pub(crate) fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    error.is::<crate::body::BodyTimeout>()
}
