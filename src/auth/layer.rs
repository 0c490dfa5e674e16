use std::sync::Arc;

use tower_layer::Layer;

use super::{Auth, KeyStore};

/// Applies [`Auth`] to a service: the public door of the auth module.
#[derive(Clone)]
pub struct AuthLayer {
    keys: Arc<dyn KeyStore>,
}

impl AuthLayer {
    /// Authenticates every request against `keys`.
    pub fn new(keys: impl KeyStore) -> Self {
        AuthLayer {
            keys: Arc::new(keys),
        }
    }

    /// Same as [`AuthLayer::new`] for a store that is already shared.
    pub fn from_shared(keys: Arc<dyn KeyStore>) -> Self {
        AuthLayer { keys }
    }
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth::new(inner, self.keys.clone())
    }
}
