use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower_service::Service;

use std::net::IpAddr;

use super::{ApiKey, Cidr, KeyStore};
use crate::future::ResponseFuture;
use crate::GatewayError;

/// The address a request came from, put into its extensions by the server
/// ([`serve`](crate::server::serve) does; a server of your own inserts it for IP allow-lists
/// to work). It is the TCP peer, or, when the peer is a trusted proxy, the client the proxy
/// names ([`ClientIp::resolve`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub std::net::IpAddr);

impl ClientIp {
    /// Whether `ip` is one of the trusted proxies.
    pub fn is_trusted(proxies: &[Cidr], ip: IpAddr) -> bool {
        proxies.iter().any(|net| net.contains(ip))
    }

    /// The client of a request from `peer`: `peer` itself, or, when `peer` is one of
    /// `proxies`, the last address its forwarding headers name that is not itself a trusted
    /// proxy (each proxy appends the address it was reached from, so the last untrusted one
    /// is the first that no proxy of ours vouches for; earlier ones are the client's to
    /// write). `X-Forwarded-For` is read first, then `Forwarded` (RFC 7239 `for=`); a header
    /// that cannot be read leaves the proxy's own address.
    pub fn resolve(peer: IpAddr, headers: &http::HeaderMap, proxies: &[Cidr]) -> ClientIp {
        if !ClientIp::is_trusted(proxies, peer) {
            return ClientIp(peer);
        }
        let from_xff: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|a| a.trim().parse())
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        let named = if from_xff.is_empty() {
            headers
                .get_all(http::header::FORWARDED)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(forwarded_for)
                .collect()
        } else {
            from_xff
        };
        let client = named
            .into_iter()
            .rev()
            .find(|ip| !ClientIp::is_trusted(proxies, *ip));
        ClientIp(client.unwrap_or(peer))
    }
}

/// The address of one `Forwarded` element's `for=` (RFC 7239): `for=192.0.2.1`,
/// `for="[2001:db8::1]:4711"`; `None` for obfuscated or unknown identifiers.
fn forwarded_for(element: &str) -> Option<std::net::IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    let value = value.trim_matches('"');
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    value
        .parse()
        .ok()
        .or_else(|| value.rsplit_once(':')?.0.parse().ok())
}

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
                    Ok(GatewayError::internal(format!("key store: {error}")).into_response())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_are_believed_from_trusted_proxies_only() {
        let proxy: std::net::IpAddr = "10.0.0.5".parse().unwrap();
        let proxies = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        let mut headers = http::HeaderMap::new();
        headers.insert("x-forwarded-for", "198.51.100.7, 10.0.0.9".parse().unwrap());
        assert_eq!(
            ClientIp::resolve(proxy, &headers, &proxies).0,
            "198.51.100.7".parse::<std::net::IpAddr>().unwrap()
        );
        // Any client can send the header: from an untrusted peer it means nothing.
        let stranger: std::net::IpAddr = "203.0.113.1".parse().unwrap();
        assert_eq!(ClientIp::resolve(stranger, &headers, &proxies).0, stranger);
        // A spoofed first entry is not the client: the last untrusted one is.
        headers.insert("x-forwarded-for", "1.2.3.4, 198.51.100.7".parse().unwrap());
        assert_eq!(
            ClientIp::resolve(proxy, &headers, &proxies).0,
            "198.51.100.7".parse::<std::net::IpAddr>().unwrap()
        );
        // Garbage leaves the proxy's own address.
        headers.insert("x-forwarded-for", "not-an-ip".parse().unwrap());
        assert_eq!(ClientIp::resolve(proxy, &headers, &proxies).0, proxy);
        let mut forwarded = http::HeaderMap::new();
        forwarded.insert(
            http::header::FORWARDED,
            "for=192.0.2.60;proto=https, for=\"[2001:db8::1]:4711\""
                .parse()
                .unwrap(),
        );
        assert_eq!(
            ClientIp::resolve(proxy, &forwarded, &proxies).0,
            "2001:db8::1".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(forwarded_for("for=_hidden"), None);
        assert_eq!(
            forwarded_for("by=1.1.1.1;for=192.0.2.60:80"),
            Some("192.0.2.60".parse().unwrap())
        );
    }
}
