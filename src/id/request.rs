use std::fmt;
use std::sync::Arc;

use http::HeaderMap;

/// The id of one request: the client's `x-request-id` when it is 1 to 64 visible ASCII
/// characters, else a fresh UUID. Put into the request extensions by the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// A fresh id (a random UUID).
    pub fn new() -> Self {
        RequestId(Arc::from(uuid::Uuid::new_v4().to_string()))
    }

    /// The id the headers carry, or a new one.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let sent = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()));
        match sent {
            Some(id) => RequestId(Arc::from(id)),
            None => RequestId::new(),
        }
    }

    /// The id a record kept, as [`as_str`](Self::as_str) wrote it.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn kept(text: &str) -> Self {
        RequestId(Arc::from(text))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
