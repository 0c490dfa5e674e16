use std::sync::Arc;
use std::time::Duration;

use tower::ServiceBuilder;

use super::{Gateway, Routes};
use tower_layer::Layer;

use crate::admin::AdminApi;
use crate::auth::{AuthLayer, KeyRegistry, KeyStore, StaticKeys};
use crate::backend::{EditService, ImageBackend};
use crate::billing::{AccountApi, BillingLayer, ExpirySweep, DEFAULT_HOLD_TTL};
use crate::catalog::{Catalog, ModelSpec};
use crate::files::FileApi;
use crate::generations::{Generations, MemoryGenerations};
use crate::health::{Health, Readiness};
use crate::idempotency::{IdempotencyLayer, IdempotencyRecords, MemoryIdempotency};
use crate::job::Operation;
use crate::jobs::{JobApi, JobBoard, JobRecords, MemoryJobs, WebhookConfig};
use crate::ledger::{Ledger, MemoryLedger};
use crate::limit::{BodyLimitLayer, DEFAULT_BODY_LIMIT};
use crate::metrics::Metrics;
use crate::multipart::MultipartLimits;
use crate::ratelimit::RateLimitLayer;
use crate::request::NormalizeLayer;
use crate::source::ResolveSourceLayer;
use crate::store::{FileStore, MemoryFileStore, Quota, QuotaStore};

/// The model served when the builder is given none.
pub const DEFAULT_MODEL: &str = "gpt-image-2";

/// Assembles a [`Gateway`]. Every setter states its default.
pub struct GatewayBuilder {
    keys: Option<Arc<dyn KeyStore>>,
    registry: Option<Arc<dyn KeyRegistry>>,
    backend: Option<Arc<dyn ImageBackend>>,
    store: Option<Arc<dyn FileStore>>,
    generations: Option<Arc<dyn Generations>>,
    ledger: Option<Arc<dyn Ledger>>,
    idempotency: Option<Arc<dyn IdempotencyRecords>>,
    hold_ttl: Duration,
    admin_key: Option<String>,
    upstreams: crate::admin::Upstreams,
    rate_limit: RateLimitLayer,
    models: Vec<(String, ModelSpec)>,
    body_limit: u64,
    multipart: MultipartLimits,
    quota: Quota,
    stream_keepalive: Duration,
    upload_max_file: u64,
    metrics: Option<Metrics>,
    jobs: Option<Arc<dyn JobRecords>>,
    job_limits: JobLimits,
    webhooks: Option<WebhookConfig>,
    moderation: crate::moderation::ModerationLayer,
    #[cfg(feature = "fetch")]
    fetcher: Option<crate::fetch::UrlFetcher>,
}

/// The bounds of a gateway's jobs; see [`GatewayBuilder::job_limits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobLimits {
    /// Unfinished async jobs per caller; past it `429 too_many_queued_jobs`. Default 100.
    pub max_queued: u64,
    /// Jobs whose backend runs at once, process-wide; more wait `queued` (their hold
    /// taken, cancellable). `None`, the default: no bound beyond the backend's own.
    pub max_running: Option<usize>,
    /// How long a backend may take on one job before it fails `502 upstream_error` and is
    /// refunded. `None`, the default: no bound.
    pub timeout: Option<Duration>,
    /// How long an ended job's record stays readable. Default one day.
    pub retention: Duration,
    /// How long an async job stays its process's without the process renewing the claim
    /// ([`Gateway::job_runner`] renews it); past it another process runs the job again.
    /// Default 30 s.
    pub lease: Duration,
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            max_queued: crate::jobs::DEFAULT_MAX_QUEUED_JOBS,
            max_running: None,
            timeout: None,
            retention: crate::jobs::DEFAULT_JOB_RETENTION,
            lease: crate::jobs::DEFAULT_JOB_LEASE,
        }
    }
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        GatewayBuilder {
            keys: None,
            registry: None,
            backend: None,
            store: None,
            generations: None,
            ledger: None,
            idempotency: None,
            hold_ttl: DEFAULT_HOLD_TTL,
            admin_key: None,
            upstreams: Default::default(),
            rate_limit: RateLimitLayer::new(),
            models: Vec::new(),
            body_limit: DEFAULT_BODY_LIMIT,
            multipart: MultipartLimits::default(),
            quota: Quota::default(),
            stream_keepalive: crate::jobs::DEFAULT_KEEPALIVE,
            moderation: crate::moderation::ModerationLayer::none(),
            upload_max_file: crate::files::DEFAULT_MAX_FILE_BYTES,
            metrics: None,
            jobs: None,
            job_limits: JobLimits::default(),
            webhooks: None,
            #[cfg(feature = "fetch")]
            fetcher: None,
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

    /// Keys managed while the gateway runs: the key store, and with an
    /// [admin key](Self::admin_key) the admin API's key routes (create, list, limit, rotate,
    /// revoke); each key's model and IP allow-lists and daily spend limit are enforced.
    /// Replaces [`Self::keys`].
    pub fn managed_keys(mut self, registry: impl KeyRegistry) -> Self {
        let registry: Arc<dyn KeyRegistry> = Arc::new(registry);
        self.keys = Some(Arc::new(registry.clone()));
        self.registry = Some(registry);
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
    /// free models work until accounts are credited; lost on exit). Pass an `Arc` of it to
    /// keep a handle (to credit accounts); every seam takes an `Arc` of itself the same way.
    pub fn ledger(mut self, ledger: impl Ledger) -> Self {
        self.ledger = Some(Arc::new(ledger));
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

    /// Shows `upstreams` (each routed model's deployments) at `GET /admin/v1/upstreams`,
    /// behind the [admin key](Self::admin_key). Default: none listed.
    pub fn upstreams(mut self, upstreams: crate::admin::Upstreams) -> Self {
        self.upstreams = upstreams;
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

    /// The most bytes one file of `POST /api/v1/upload` may have. Default: 10 MB. Edit
    /// sources sent inline keep the multipart image limit (25 MiB).
    pub fn upload_max_file(mut self, bytes: u64) -> Self {
        self.upload_max_file = bytes;
        self
    }

    /// How long a streamed answer (`stream: true`) may stay silent before a keep-alive
    /// comment is sent. Default: 15 s.
    pub fn stream_keepalive(mut self, period: Duration) -> Self {
        self.stream_keepalive = period;
        self
    }

    /// Records requests, backend calls, holds and refusals in `metrics` (see
    /// [`crate::metrics`]), and serves them at `GET /metrics` to holders of the
    /// [admin key](Self::admin_key) (without one, `/metrics` answers 404 here: serve
    /// [`MetricsService`](crate::metrics::MetricsService) on a listener of its own). Default:
    /// nothing recorded.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Where job records are kept. Default: [`MemoryJobs`] (lost on exit; use `SqliteJobs`
    /// or your own so async jobs can be read back after a restart).
    pub fn jobs(mut self, records: impl JobRecords) -> Self {
        self.jobs = Some(Arc::new(records));
        self
    }

    /// The bounds of jobs: queued per caller, running at once, a backend's time per job,
    /// the records' retention. Default: [`JobLimits::default`].
    pub fn job_limits(mut self, limits: JobLimits) -> Self {
        self.job_limits = limits;
        self
    }

    /// Checks every prompt with `moderation` before the hold (and before any image the
    /// request names is read), and the source images once read, still before the hold
    /// ([`Moderation::check_images`](crate::moderation::Moderation::check_images)): flagged,
    /// `400 content_policy_violation`; the check failing, `503 moderation_unavailable`
    /// unless `fail_open`. Default: no check.
    pub fn moderation(
        mut self,
        moderation: impl crate::moderation::Moderation,
        fail_open: bool,
    ) -> Self {
        self.moderation =
            crate::moderation::ModerationLayer::new(Arc::new(moderation)).fail_open(fail_open);
        self
    }

    /// Announces async jobs' ends to the `Webhook-Url` they were submitted with, signed
    /// with `webhooks`' secret; spawn [`Gateway::webhook_deliverer`] to send them. Default:
    /// none, and a `Webhook-Url` is refused (`400`, `param: webhook_url`).
    pub fn webhooks(mut self, webhooks: WebhookConfig) -> Self {
        self.webhooks = Some(webhooks);
        self
    }

    /// Fetches `https://` image references (compose's `image_urls`, OpenAI's `image_url`)
    /// with `fetcher`. Default: none, and such references are refused with a 400 that says
    /// to upload the image or send it as a `data:` URI.
    #[cfg(feature = "fetch")]
    pub fn fetcher(mut self, fetcher: crate::fetch::UrlFetcher) -> Self {
        self.fetcher = Some(fetcher);
        self
    }

    /// Builds the gateway, in the stack's order, outermost first (see [`Gateway`]). It starts
    /// nothing: spawn [`Gateway::expiry_sweep`] to release the holds of a process that died.
    ///
    /// # Panics
    /// When no backend was set and the `reference-backend` feature is off.
    pub fn build(self) -> Gateway {
        #[cfg(feature = "fetch")]
        let fetcher = self.fetcher.clone();
        let keys = self.keys.unwrap_or_else(|| Arc::new(StaticKeys::new()));
        let backend = self.backend.unwrap_or_else(default_backend);
        let ledger = self.ledger.unwrap_or_else(|| Arc::new(MemoryLedger::new()));
        let generations = self
            .generations
            .unwrap_or_else(|| Arc::new(MemoryGenerations::new()));
        let records = self
            .idempotency
            .unwrap_or_else(|| Arc::new(MemoryIdempotency::new()));
        let mut store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryFileStore::new()));
        // Outputs of work that ran are kept past the quota (checked before the work).
        let mut owed = store.clone();
        if self.quota != Quota::UNLIMITED {
            let quoted = QuotaStore::new(store, self.quota);
            owed = quoted.owed();
            store = Arc::new(quoted);
        }
        let models = if self.models.is_empty() {
            vec![(DEFAULT_MODEL.to_owned(), ModelSpec::default())]
        } else {
            self.models
        };
        let catalog = Catalog::new(models);

        let health_store = store.clone();
        let sources = ResolveSourceLayer::new(store.clone(), generations.clone())
            .admission(ledger.clone(), catalog.clone());
        #[cfg(feature = "fetch")]
        let sources = match fetcher {
            Some(fetcher) => sources.fetcher(fetcher),
            None => sources,
        };
        let mut billing = BillingLayer::new(ledger.clone(), catalog.clone())
            .hold_ttl(self.hold_ttl)
            .cancel_abandoned(backend.cancellable());
        if let Some(registry) = &self.registry {
            billing = billing.daily_limits(registry.clone());
        }
        let limits = self.job_limits;
        let mut edits = EditService::new(backend, store.clone(), generations.clone())
            .outputs_past_quota(owed)
            .limits(limits.max_running, limits.timeout);
        if let Some(metrics) = &self.metrics {
            billing = billing.metrics(metrics.clone());
            edits = edits.metrics(metrics.clone());
        }
        let edits_outputs = edits.outputs();
        let jobs = ServiceBuilder::new()
            .layer(IdempotencyLayer::new(
                records,
                store.clone(),
                generations.clone(),
            ))
            .layer(self.moderation.clone())
            .layer(sources)
            .layer(self.moderation)
            .layer(billing)
            .service(edits);
        let records = self.jobs.unwrap_or_else(|| Arc::new(MemoryJobs::new()));
        let board = JobBoard::new(records, store.clone(), generations.clone())
            .bounds(limits.max_queued, limits.retention, self.stream_keepalive)
            .metrics(self.metrics.clone())
            .webhooks(self.webhooks)
            .job_timeout(limits.timeout)
            .lease(limits.lease);
        let runner = crate::request::JobRunner::new(
            board.clone(),
            crate::request::JobStack::new(jobs.clone()),
            ledger.clone(),
            edits_outputs,
        );
        let normalize = NormalizeLayer::new(catalog.clone())
            .limits(self.multipart)
            .stream_keepalive(self.stream_keepalive)
            .jobs(board.clone());
        let endpoint = |operation| normalize.clone().operation(operation).layer(jobs.clone());
        let routes = Routes {
            edits: endpoint(Operation::Edit),
            generations: endpoint(Operation::Generate),
            compose: endpoint(Operation::Compose),
            catalog: catalog.clone(),
            files: FileApi::new(store)
                .limits(self.multipart)
                .max_file(self.upload_max_file)
                .quota(self.quota),
            account: AccountApi::new(ledger.clone()),
            jobs: JobApi::new(board.clone()),
        };
        let inner = ServiceBuilder::new()
            .layer(AuthLayer::new(keys.clone()))
            .layer(self.rate_limit)
            .layer(BodyLimitLayer::new(self.body_limit))
            .service(routes);
        Gateway {
            jobs: board,
            runner,
            health: Health {
                ledger: ledger.clone(),
                store: health_store,
                readiness: Readiness::default(),
            },
            admin: self.admin_key.map(|key| {
                let admin = AdminApi::new(&key, ledger.clone(), keys).upstreams(self.upstreams);
                match self.registry {
                    Some(registry) => admin.registry(registry),
                    None => admin,
                }
            }),
            sweep: ExpirySweep::new(ledger, self.hold_ttl),
            metrics: self.metrics,
            inner,
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
