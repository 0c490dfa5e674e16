//! A browser console at `/console/`: make, chain, download and clean up images, see the
//! balance and usage, and (with the admin key) manage keys.
//!
//! # Guarantees
//! - The console is three static files built into the binary (`index.html`, `app.js`,
//!   `app.css`); nothing is fetched from anywhere else, so it works with no internet.
//! - Every answer carries a strict Content-Security-Policy: scripts and styles only from
//!   this gateway (no inline script or style), images from it or from `blob:`/`data:` (the
//!   results themselves), connections only to it, no frames, no form posts elsewhere.
//! - It holds no secret of its own: it calls the gateway's public API with the key the user
//!   types, kept in the tab's `sessionStorage` (gone when the tab closes), so it is also a
//!   living example of the API. Serving it needs no key.
//!
//! [`ConsoleLayer`] answers `/console` and `/console/*` and passes every other request to
//! the service it wraps:
//!
//! ```
//! use image_gateway::console::ConsoleLayer;
//! use image_gateway::Gateway;
//! use tower::Layer;
//!
//! let app = ConsoleLayer.layer(Gateway::builder().build());
//! # drop(app);
//! ```

use std::convert::Infallible;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::{GatewayError, ResponseBody};

/// Where the console is served.
pub const CONSOLE_PATH: &str = "/console/";

/// The policy of every console answer.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' blob: data:; connect-src 'self'; form-action 'none'; \
    frame-ancestors 'none'; base-uri 'none'";

/// The console's files: path under `/console/`, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    ),
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("assets/app.css"),
    ),
];

/// Adds the console in front of a service; see the [module docs](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct ConsoleLayer;

impl<S> Layer<S> for ConsoleLayer {
    type Service = Console<S>;

    fn layer(&self, inner: S) -> Console<S> {
        Console { inner }
    }
}

/// Answers `/console` and `/console/*`; everything else goes to `inner`.
#[derive(Clone, Debug)]
pub struct Console<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Console<S>
where
    S: Service<
        Request<B>,
        Response = Response<ResponseBody>,
        Error = Infallible,
        Future = ResponseFuture<Response<ResponseBody>, Infallible>,
    >,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture<Response<ResponseBody>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let path = req.uri().path();
        if path == "/console" {
            return ResponseFuture::ready(redirect());
        }
        let Some(file) = path.strip_prefix(CONSOLE_PATH) else {
            return self.inner.call(req);
        };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return ResponseFuture::reject(GatewayError::MethodNotAllowed);
        }
        match ASSETS.iter().find(|(name, _, _)| *name == file) {
            Some((_, content_type, body)) => ResponseFuture::ready(asset(content_type, body)),
            None => ResponseFuture::reject(GatewayError::RouteNotFound),
        }
    }
}

fn secure(response: &mut Response<ResponseBody>) {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Small files: always asked again, so an upgraded gateway never runs yesterday's page.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

fn asset(content_type: &'static str, body: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::from(bytes::Bytes::from_static(
        body.as_bytes(),
    )));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure(&mut response);
    response
}

fn redirect() -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::default());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(CONSOLE_PATH));
    secure(&mut response);
    response
}
