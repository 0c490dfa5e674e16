use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower_service::Service;

use super::{ApiKey, KeyStore};
use crate::future::ResponseFuture;
use crate::GatewayError;

/// The address a request came from, put into its extensions by the server
/// ([`serve`](crate::server::serve) does; a server of your own inserts it for IP allow-lists
/// to work). It is the TCP peer: behind a proxy, that is the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub std::net::IpAddr);

/// Resolves the caller's key to a [`Principal`](super::Principal) or answers 401.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    keys: Arc<dyn KeyStore>,
}

impl<S> Auth<S> {
    pub(crate) fn new(inner: S, keys: Arc<dyn KeyStore>) -> Self {
        Auth { inner, keys }
    }
}

impl<S> std::fmt::Debug for Auth<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<Response<ResBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The ready service goes into the future; a fresh clone waits for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let keys = self.keys.clone();
        ResponseFuture::new(async move {
            let Some(key) = ApiKey::from_headers(req.headers()) else {
                return Ok(GatewayError::InvalidApiKey.into_response());
            };
            match keys.principal(&key).await {
                Ok(Some(principal)) => {
                    if let Some(grant) = &principal.key {
                        let from = req.extensions().get::<ClientIp>().map(|ip| ip.0);
                        // No address known (mounted without `serve`): an allow-list cannot
                        // be checked, so the key is refused rather than let through.
                        if grant.limits.ips.is_some()
                            && !from.is_some_and(|ip| grant.limits.allows_ip(ip))
                        {
                            return Ok(GatewayError::IpNotAllowed.into_response());
                        }
                    }
                    tracing::Span::current().record("user", principal.user_id().as_str());
                    let user = principal.user_id().clone();
                    req.extensions_mut().insert(principal);
                    let mut response = inner.call(req).await?;
                    // Who was served, for the layers outside (per-user metrics, when opted in).
                    response.extensions_mut().insert(user);
                    Ok(response)
                }
                Ok(None) => Ok(GatewayError::InvalidApiKey.into_response()),
                Err(error) => {
                    tracing::error!(%error, "key store failed");
                    Ok(GatewayError::Internal.into_response())
                }
            }
        })
    }
}
