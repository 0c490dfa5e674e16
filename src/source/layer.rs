use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::service::Sources;
use super::ResolveSource;
use crate::billing::Admission;
use crate::catalog::Catalog;
use crate::generations::Generations;
use crate::ledger::Ledger;
use crate::store::FileStore;

/// Applies [`ResolveSource`] to a service of [`EditJob`](crate::job::EditJob)s.
#[derive(Clone)]
pub struct ResolveSourceLayer {
    sources: Sources,
}

impl ResolveSourceLayer {
    /// Resolves keys against `store` and generation ids against `generations`.
    pub fn new(store: Arc<dyn FileStore>, generations: Arc<dyn Generations>) -> Self {
        ResolveSourceLayer {
            sources: Sources {
                store,
                generations,
                pending_timeout: crate::backend::PENDING_TIMEOUT,
                #[cfg(feature = "fetch")]
                fetcher: None,
                admission: None,
            },
        }
    }

    /// Checks each caller's balance against the least a request could cost before any
    /// source it names is read or fetched (`402` without reading). Default: no check, and
    /// the hold alone refuses a caller who cannot pay, after the reads.
    pub fn admission(mut self, ledger: Arc<dyn Ledger>, catalog: Catalog) -> Self {
        self.sources.admission = Some(Admission::new(ledger, catalog));
        self
    }

    /// How long a generation may stay pending before it is checked against the store
    /// (its writer presumably died). Default: 5 minutes.
    pub fn pending_timeout(mut self, timeout: Duration) -> Self {
        self.sources.pending_timeout = timeout;
        self
    }
}

#[cfg(feature = "fetch")]
impl ResolveSourceLayer {
    /// Fetches `https://` references with `fetcher` (default: none, and they are refused).
    pub fn fetcher(mut self, fetcher: crate::fetch::UrlFetcher) -> Self {
        self.sources.fetcher = Some(fetcher);
        self
    }
}

impl std::fmt::Debug for ResolveSourceLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolveSourceLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ResolveSourceLayer {
    type Service = ResolveSource<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResolveSource::new(inner, self.sources.clone())
    }
}
