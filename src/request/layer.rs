use tower_layer::Layer;

use super::Normalize;
use crate::catalog::Catalog;
use crate::multipart::MultipartLimits;

/// Applies [`Normalize`] to a typed edit service: the door from HTTP to [`EditRequest`].
///
/// [`EditRequest`]: crate::job::EditRequest
#[derive(Clone, Debug)]
pub struct NormalizeLayer {
    catalog: Catalog,
    limits: MultipartLimits,
}

impl NormalizeLayer {
    /// Normalizes requests for the models of `catalog`, with the default limits.
    pub fn new(catalog: Catalog) -> Self {
        NormalizeLayer {
            catalog,
            limits: MultipartLimits::default(),
        }
    }

    /// Replaces the multipart limits.
    pub fn limits(mut self, limits: MultipartLimits) -> Self {
        self.limits = limits;
        self
    }
}

impl<S> Layer<S> for NormalizeLayer {
    type Service = Normalize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Normalize::new(inner, self.catalog.clone(), self.limits)
    }
}
