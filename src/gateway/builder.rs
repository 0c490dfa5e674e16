use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::{Gateway, Routes};
use crate::auth::{Auth, KeyStore, StaticKeys};
use crate::backend::{EditService, ImageBackend};
use crate::billing::{spawn_expiry_sweep, AccountApi, AdminApi, BillingLayer};
use crate::catalog::{Catalog, ModelSpec};
use crate::files::FileApi;
use crate::idempotency::{IdempotencyLayer, IdempotencyRecords, MemoryIdempotency};
use crate::ledger::{Ledger, MemoryLedger};
use crate::limit::{BodyLimit, DEFAULT_BODY_LIMIT};
use crate::ratelimit::RateLimitLayer;
use crate::request::{MultipartLimits, Normalize};
use crate::source::ResolveSourceLayer;
use crate::store::{FileStore, Generations, MemoryFileStore, MemoryGenerations, Quota, QuotaStore};

/// The model served when the builder is given none.
pub const DEFAULT_MODEL: &str = "gpt-image-2";

/// Assembles a [`Gateway`]. Every setter states its default.
pub struct GatewayBuilder {
    keys: Option<Arc<dyn KeyStore>>,
    backend: Option<Arc<dyn ImageBackend>>,
    store: Option<Arc<dyn FileStore>>,
    generations: Option<Arc<dyn Generations>>,
    ledger: Option<Arc<dyn Ledger>>,
    idempotency: Option<Arc<dyn IdempotencyRecords>>,
    hold_ttl: Duration,
    admin_key: Option<String>,
    rate_limit: RateLimitLayer,
    models: Vec<(String, ModelSpec)>,
    body_limit: u64,
    multipart: MultipartLimits,
    quota: Quota,
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        GatewayBuilder {
            keys: None,
            backend: None,
            store: None,
            generations: None,
            ledger: None,
            idempotency: None,
            hold_ttl: Duration::from_secs(600),
            admin_key: None,
            rate_limit: RateLimitLayer::new(),
            models: Vec::new(),
            body_limit: DEFAULT_BODY_LIMIT,
            multipart: MultipartLimits::default(),
            quota: Quota::default(),
        }
    }
}

impl std::fmt::Debug for GatewayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayBuilder")
            .field("models", &self.models)
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

impl GatewayBuilder {
    /// The store that resolves API keys. Default: an empty [`StaticKeys`], which refuses
    /// every request with 401, so a gateway is never open by accident.
    pub fn keys(mut self, keys: impl KeyStore) -> Self {
        self.keys = Some(Arc::new(keys));
        self
    }

    /// The image backend. Default: [`ReferenceBackend`](crate::backend::ReferenceBackend)
    /// when the `reference-backend` feature is on (it is by default).
    pub fn backend(mut self, backend: impl ImageBackend) -> Self {
        self.backend = Some(Arc::new(backend));
        self
    }

    /// Where uploads, multipart sources and outputs are stored. Default: a
    /// [`MemoryFileStore`] (lost on exit; use [`LocalFileStore`](crate::store::LocalFileStore)
    /// or your own store to keep files).
    pub fn store(mut self, store: impl FileStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Where generation records are kept. Default: [`MemoryGenerations`] (lost on exit; use
    /// `SqliteGenerations` or your own to keep chains across restarts).
    pub fn generations(mut self, generations: impl Generations) -> Self {
        self.generations = Some(Arc::new(generations));
        self
    }

    /// The ledger that holds and charges. Default: a [`MemoryLedger`] (empty balances: only
    /// free models work until accounts are credited; lost on exit).
    pub fn ledger(mut self, ledger: impl Ledger) -> Self {
        self.ledger = Some(Arc::new(ledger));
        self
    }

    /// Same as [`Self::ledger`] for a ledger the caller keeps a handle to (to credit accounts).
    pub fn shared_ledger(mut self, ledger: Arc<dyn Ledger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Where `Idempotency-Key`s are remembered. Default: [`MemoryIdempotency`] (lost on exit;
    /// use `SqliteIdempotency` or your own to answer retries across restarts).
    pub fn idempotency(mut self, records: impl IdempotencyRecords) -> Self {
        self.idempotency = Some(Arc::new(records));
        self
    }

    /// How long a hold lives when nothing ends it (the process died). Default: 10 minutes.
    pub fn hold_ttl(mut self, ttl: Duration) -> Self {
        // At least `billing::MIN_HOLD_TTL`: `BillingLayer::hold_ttl` raises a shorter one.
        self.hold_ttl = ttl;
        self
    }

    /// Enables `POST /admin/v1/accounts/{user_id}/deposits` for holders of `key`.
    /// Default: disabled (`/admin/` paths answer 404).
    pub fn admin_key(mut self, key: impl Into<String>) -> Self {
        self.admin_key = Some(key.into());
        self
    }

    /// Same as [`Self::backend`] for a backend that is already shared.
    pub fn shared_backend(mut self, backend: Arc<dyn ImageBackend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// How much each caller may keep stored (uploads, multipart sources, outputs); a write
    /// past it is `413 storage_quota_exceeded`. Default: [`Quota::default`], 200 MB in at
    /// most 10,000 files; [`Quota::UNLIMITED`] turns it off.
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quota = quota;
        self
    }

    /// Per-caller request rate and in-flight limits. Default: none.
    pub fn rate_limit(mut self, limits: RateLimitLayer) -> Self {
        self.rate_limit = limits;
        self
    }

    /// Serves `name` with `spec`; call once per model. Default when no model is added:
    /// `gpt-image-2` with [`ModelSpec::default`].
    pub fn model(mut self, name: impl Into<String>, spec: ModelSpec) -> Self {
        self.models.push((name.into(), spec));
        self
    }

    /// The limit on a whole request body, in bytes. Default: 26 MiB.
    pub fn body_limit(mut self, bytes: u64) -> Self {
        self.body_limit = bytes;
        self.multipart.whole_body = bytes;
        self
    }

    /// Limits on multipart bodies (per image, per text field, part count). Default:
    /// [`MultipartLimits::default`]; its whole-body limit follows [`Self::body_limit`].
    pub fn multipart_limits(mut self, limits: MultipartLimits) -> Self {
        self.multipart = MultipartLimits {
            whole_body: self.body_limit,
            ..limits
        };
        self
    }

    /// Builds the gateway. Inside a Tokio runtime it also starts the ledger's expiry sweep
    /// (at once, then every `min(hold_ttl / 2, 30 s)`), which releases holds left by a
    /// process that died.
    ///
    /// # Panics
    /// When no backend was set and the `reference-backend` feature is off.
    pub fn build(self) -> Gateway {
        let backend = self.backend.unwrap_or_else(default_backend);
        let keys = self
            .keys
            .unwrap_or_else(|| Arc::new(StaticKeys::new()) as Arc<dyn KeyStore>);
        let models = if self.models.is_empty() {
            vec![(DEFAULT_MODEL.to_owned(), ModelSpec::default())]
        } else {
            self.models
        };
        let catalog = Catalog::new(models);
        let mut store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryFileStore::new()) as Arc<dyn FileStore>);
        if self.quota != Quota::UNLIMITED {
            store = Arc::new(QuotaStore::new(store, self.quota));
        }
        let generations = self
            .generations
            .unwrap_or_else(|| Arc::new(MemoryGenerations::new()) as Arc<dyn Generations>);
        let ledger = self
            .ledger
            .unwrap_or_else(|| Arc::new(MemoryLedger::new()) as Arc<dyn Ledger>);
        if tokio::runtime::Handle::try_current().is_ok() {
            let every = (self.hold_ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
            spawn_expiry_sweep(ledger.clone(), every);
        }

        let cancellable = backend.cancellable();
        let edit = EditService::new(backend, store.clone(), generations.clone());
        let billed = BillingLayer::new(ledger.clone(), catalog.clone())
            .hold_ttl(self.hold_ttl)
            .cancel_abandoned(cancellable)
            .layer(edit);
        let resolve = ResolveSourceLayer::new(store.clone(), generations.clone()).layer(billed);
        let records = self
            .idempotency
            .unwrap_or_else(|| Arc::new(MemoryIdempotency::new()) as Arc<dyn IdempotencyRecords>);
        let once = IdempotencyLayer::new(records, store.clone(), generations).layer(resolve);
        let edits = Normalize::new(once, catalog, self.multipart);
        let files = FileApi::new(store).limits(self.multipart);
        let account = AccountApi::new(ledger.clone());
        let routes = Routes {
            edits,
            files,
            account,
        };
        Gateway {
            admin: self
                .admin_key
                .map(|key| AdminApi::new(&key, ledger, keys.clone())),
            inner: Auth::new(
                self.rate_limit
                    .layer(BodyLimit::new(routes, self.body_limit)),
                keys,
            ),
        }
    }
}

#[cfg(feature = "reference-backend")]
fn default_backend() -> Arc<dyn ImageBackend> {
    Arc::new(crate::backend::ReferenceBackend::new())
}

#[cfg(not(feature = "reference-backend"))]
fn default_backend() -> Arc<dyn ImageBackend> {
    panic!("GatewayBuilder::build: set a backend, or enable the `reference-backend` feature")
}
