use tower_layer::Layer;

use super::ResolveSource;

/// Applies [`ResolveSource`] to a service of [`EditJob`](crate::backend::EditJob)s.
#[derive(Clone, Debug, Default)]
pub struct ResolveSourceLayer {
    _priv: (),
}

impl ResolveSourceLayer {
    /// Resolves sources for the inner service.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for ResolveSourceLayer {
    type Service = ResolveSource<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResolveSource::new(inner)
    }
}
