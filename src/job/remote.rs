//! A URL a request names an image by: checked once, when the request is read.

use url::{Host, Url};

use crate::address;
use crate::GatewayError;

/// The longest URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// An `https://` URL whose literal host (if it is an address) is public, checked once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteUrl(Url);

impl RemoteUrl {
    /// Checks `text` as an image URL for the field `param`.
    pub fn parse(text: &str, param: &'static str) -> Result<RemoteUrl, GatewayError> {
        let refuse =
            |why: &str| GatewayError::invalid_request(format!("{param}: {why}"), Some(param));
        if text.len() > MAX_URL_LEN {
            return Err(refuse("a URL may be at most 2048 bytes"));
        }
        let url = Url::parse(text).map_err(|_| refuse("not a valid URL"))?;
        if url.scheme() != "https" {
            return Err(refuse(
                "only https:// URLs (or data:image/... URIs) are accepted",
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse("a URL may not carry credentials"));
        }
        match url.host() {
            None => return Err(refuse("the URL has no host")),
            Some(Host::Ipv4(ip)) if !address::is_public(ip.into()) => {
                return Err(refuse("the URL points at a private or reserved address"))
            }
            Some(Host::Ipv6(ip)) if !address::is_public(ip.into()) => {
                return Err(refuse("the URL points at a private or reserved address"))
            }
            Some(_) => {}
        }
        Ok(RemoteUrl(url))
    }

    /// The URL as text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The parsed URL.
    pub fn url(&self) -> &Url {
        &self.0
    }
}
