use tower_layer::Layer;

use super::{BodyLimit, DEFAULT_BODY_LIMIT};

/// Applies [`BodyLimit`] to a service.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimitLayer {
    limit: u64,
}

impl BodyLimitLayer {
    /// Limits every request body to `limit` bytes.
    pub fn new(limit: u64) -> Self {
        BodyLimitLayer { limit }
    }
}

impl Default for BodyLimitLayer {
    /// The spec's 26 MiB.
    fn default() -> Self {
        BodyLimitLayer::new(DEFAULT_BODY_LIMIT)
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyLimit::new(inner, self.limit)
    }
}
