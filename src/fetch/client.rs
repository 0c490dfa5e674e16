//! The fetcher of `https://` image URLs: one pooled client whose every name resolution and
//! redirect goes through the address rules.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect::{Attempt, Policy};

use super::capped::{read_capped, CappedError};
use super::{address, RemoteUrl};
use crate::job::SourceImage;
use crate::media::ImageKind;
use crate::GatewayError;

/// The most redirects followed; each one is checked like the first URL.
const MAX_REDIRECTS: usize = 3;

/// Settings of a [`UrlFetcher`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FetchConfig {
    /// The whole fetch, connect to last byte. Default: 20 s.
    pub timeout: Duration,
    /// The most bytes read from one URL. Default: 25 MiB (a source image's limit).
    pub max_bytes: u64,
    /// A PEM root certificate trusted beside the Mozilla roots. Default: none.
    pub extra_root: Option<Vec<u8>>,
    /// Lets URLs reach loopback addresses (127.0.0.0/8, ::1) by name. Off by default and
    /// meant for tests, which serve images from a loopback TLS server; every other refused
    /// range stays refused.
    pub allow_loopback: bool,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            timeout: Duration::from_secs(20),
            max_bytes: 25 * 1024 * 1024,
            extra_root: None,
            allow_loopback: false,
        }
    }
}

/// Fetches image URLs under the rules of [`crate::fetch`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct UrlFetcher {
    client: reqwest::Client,
    max_bytes: u64,
}

/// Why a [`UrlFetcher`] could not be built.
#[derive(Debug)]
pub struct FetchConfigError(String);

impl std::fmt::Display for FetchConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FetchConfigError {}

impl UrlFetcher {
    /// A fetcher with `config`.
    pub fn new(config: FetchConfig) -> Result<UrlFetcher, FetchConfigError> {
        let allow_loopback = config.allow_loopback;
        let mut builder = reqwest::Client::builder()
            .https_only(true)
            .no_proxy()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .dns_resolver(Arc::new(CheckedResolver::new(allow_loopback)))
            .redirect(Policy::custom(move |attempt| {
                redirect(attempt, allow_loopback)
            }));
        if let Some(pem) = &config.extra_root {
            let root = reqwest::Certificate::from_pem(pem)
                .map_err(|e| FetchConfigError(format!("root certificate: {e}")))?;
            builder = builder.add_root_certificate(root);
        }
        let client = builder
            .build()
            .map_err(|e| FetchConfigError(format!("HTTP client: {e}")))?;
        Ok(UrlFetcher {
            client,
            max_bytes: config.max_bytes,
        })
    }

    /// Fetches `url` (for the field `param`) as an image: a `200` answer of at most the size
    /// cap, whose bytes are a JPEG, PNG, GIF or WebP.
    pub async fn fetch(
        &self,
        url: &RemoteUrl,
        param: &'static str,
    ) -> Result<SourceImage, GatewayError> {
        let failed = |why: String| {
            GatewayError::invalid_request(
                format!("{param}: the URL could not be fetched: {why}"),
                Some(param),
            )
        };
        let response = self
            .client
            .get(url.url().clone())
            .send()
            .await
            .map_err(|e| failed(describe(&e)))?;
        if !response.status().is_success() {
            return Err(failed(format!(
                "it answered {}",
                response.status().as_u16()
            )));
        }
        let bytes = read_capped(response, self.max_bytes)
            .await
            .map_err(|error| match error {
                CappedError::TooLarge => GatewayError::ImageTooLarge {
                    limit: self.max_bytes,
                    param,
                },
                CappedError::Transport(e) => failed(describe(&e)),
            })?;
        let kind = ImageKind::sniff(&bytes).ok_or(GatewayError::ImageTypeUnsupported { param })?;
        Ok(SourceImage::new(bytes, kind))
    }
}

/// A transport failure in words, without the URL's query (it may carry a token).
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "it timed out".into()
    } else if error.is_redirect() {
        "a redirect was refused".into()
    } else if error.is_connect() {
        // Covers names that resolve to a refused address: the resolver's error is the cause.
        "no public address answered".into()
    } else {
        "the transfer failed".into()
    }
}

/// Follows a redirect only to an `https://` URL that passes [`RemoteUrl::parse`] (so a
/// literal private address is refused before any connection; a name goes through
/// [`CheckedResolver`] when connected).
fn redirect(attempt: Attempt<'_>, allow_loopback: bool) -> reqwest::redirect::Action {
    if attempt.previous().len() > MAX_REDIRECTS {
        return attempt.error("too many redirects");
    }
    let loopback_name =
        allow_loopback && attempt.url().host_str().is_some_and(|h| h == "localhost");
    match RemoteUrl::parse(attempt.url().as_str(), "image_urls") {
        Ok(_) => attempt.follow(),
        Err(_) if loopback_name => attempt.follow(),
        Err(_) => attempt.error("a redirect to a refused URL"),
    }
}

/// Resolves a name once and hands the connector only addresses that passed the rules; a
/// name with any refused address is refused whole, so a rebinding answer cannot slip one in.
pub(crate) struct CheckedResolver {
    allow_loopback: bool,
}

impl CheckedResolver {
    /// Public addresses only; with `allow_loopback`, loopback ones too.
    pub(crate) fn new(allow_loopback: bool) -> Self {
        CheckedResolver { allow_loopback }
    }
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_loopback = self.allow_loopback;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed =
                |ip: IpAddr| address::is_public(ip) || (allow_loopback && ip.is_loopback());
            if found.is_empty() || !found.iter().all(|a| allowed(a.ip())) {
                return Err(format!("{host} resolves to a refused address").into());
            }
            let addrs: Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}
