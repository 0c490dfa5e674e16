use std::sync::Arc;

use tower_layer::Layer;

use super::{Idempotency, IdempotencyRecords};
use crate::generations::Generations;
use crate::store::FileStore;

/// Applies [`Idempotency`] to a service of [`EditRequest`](crate::job::EditRequest)s.
#[derive(Clone)]
pub struct IdempotencyLayer {
    records: Arc<dyn IdempotencyRecords>,
    store: Arc<dyn FileStore>,
    generations: Arc<dyn Generations>,
}

impl IdempotencyLayer {
    /// Remembers keys in `records`; rebuilds first results from `generations` and `store`.
    pub fn new(
        records: Arc<dyn IdempotencyRecords>,
        store: Arc<dyn FileStore>,
        generations: Arc<dyn Generations>,
    ) -> Self {
        IdempotencyLayer {
            records,
            store,
            generations,
        }
    }
}

impl std::fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency {
            inner,
            records: self.records.clone(),
            store: self.store.clone(),
            generations: self.generations.clone(),
        }
    }
}
