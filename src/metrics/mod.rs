//! Prometheus metrics: what the gateway served, what it held and charged, and what its
//! backend cost, scraped as text at `GET /metrics`.
//!
//! # Guarantees
//! - No label carries a key, a prompt or image bytes. Every label value comes from a closed
//!   set (routes, methods, statuses, error codes, failure kinds) or from the operator's
//!   catalog (models), so a hostile client cannot grow the series count. User ids are labels
//!   only when the operator opts in ([`Metrics::with_user_labels`]), since their number grows
//!   with the user base.
//! - Money moves by whole units and adds up: for every hold this process took,
//!   `money_held = money_charged + money_released` once it ended, and `holds_open` counts the
//!   ones not ended yet. A hold a dead process left behind is released by the expiry sweep
//!   without passing through these counters (this process never counted it as held).
//!
//! # What is measured
//! | metric | labels | meaning |
//! |---|---|---|
//! | `image_gateway_requests_total` | route, method, status, model | requests answered |
//! | `image_gateway_request_duration_seconds` | route | from the request head to the answer's head |
//! | `image_gateway_backend_duration_seconds` | operation | the backend's share of that |
//! | `image_gateway_request_bytes_total`, `..._response_bytes_total` | route | bodies of known length |
//! | `image_gateway_images_requested_total`, `..._images_returned_total` | model | `n` asked for, images billed |
//! | `image_gateway_money_held_total`, `..._charged_total`, `..._released_total` | model | smallest currency unit |
//! | `image_gateway_holds_open` | | holds taken and not ended |
//! | `image_gateway_errors_total` | code | error answers by the error table's code (`rate_limit_exceeded`, `storage_quota_exceeded`, ...) |
//! | `image_gateway_backend_errors_total` | kind | backend failures (`upstream_timeout`, `upstream_status`, ...) |
//! | `image_gateway_connections_open` | | connections [`serve`](crate::server::serve) holds |
//! | `image_gateway_jobs` | state | async jobs of this process `queued` or `running` now |
//! | `image_gateway_jobs_ended_total` | state | async jobs ended: `succeeded`, `failed`, `cancelled` |
//! | `image_gateway_webhook_deliveries_total` | outcome | webhook attempts: `delivered`, `retried`, `given_up` |
//! | `image_gateway_upstream_requests_total` | deployment, outcome | calls to a routed deployment: `ok` or the failure's kind |
//! | `image_gateway_upstream_duration_seconds` | deployment | one call to a routed deployment |
//! | `image_gateway_upstream_in_flight` | deployment | calls to a routed deployment under way |
//! | `image_gateway_upstream_fallbacks_total` | deployment | jobs that fell back from it to another |
//! | `image_gateway_upstream_cooldowns_total` | deployment | rests it was sent to |
//! | `image_gateway_upstream_cost_total` | deployment | images it returned x its `cost_per_image` (what it bills the operator; beside `money_charged`) |
//! | `image_gateway_user_requests_total` | user | only with [`Metrics::with_user_labels`] |
//!
//! A streamed answer's duration ends when its head is sent, and its body's size is not known
//! in advance, so it adds no response bytes.
//!
//! # Example
//! ```
//! use image_gateway::metrics::Metrics;
//!
//! let metrics = Metrics::new();
//! let gateway = image_gateway::Gateway::builder().metrics(metrics.clone()).build();
//! assert!(metrics.encode().contains("image_gateway_holds_open 0"));
//! # drop(gateway);
//! ```

mod service;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

pub use service::MetricsService;

use crate::auth::UserId;
use crate::job::Operation;

/// The path the metrics are served at.
pub const METRICS_PATH: &str = "/metrics";

/// The model a request named, once the catalog accepted it: put into the answer's extensions
/// by normalization, read here for the `model` label.
#[derive(Clone, Debug)]
pub(crate) struct ModelLabel(pub(crate) String);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

/// A routed deployment, by the name its operator gave it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentLabels {
    deployment: SharedLabel,
}

/// A label value shared with what it names (a deployment's name): labelling a call costs no
/// allocation.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct SharedLabel(Arc<str>);

impl prometheus_client::encoding::EncodeLabelValue for SharedLabel {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        prometheus_client::encoding::EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentOutcomeLabels {
    deployment: SharedLabel,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UserLabels {
    user: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// 1 ms to about 2.5 minutes: a cached answer to a slow model's edit.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.5, 14))
}

/// The gateway's metrics. Cheap to clone (one shared registry); give the same value to
/// [`GatewayBuilder::metrics`](crate::gateway::GatewayBuilder::metrics) and to
/// [`ServeOptions::metrics`](crate::server::ServeOptions) and scrape it with
/// [`MetricsService`] or [`Metrics::encode`].
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Histograms<RouteLabels>,
    backend_duration: Histograms<OperationLabels>,
    request_bytes: Family<RouteLabels, Counter>,
    response_bytes: Family<RouteLabels, Counter>,
    images_requested: Family<ModelLabels, Counter>,
    images_returned: Family<ModelLabels, Counter>,
    money_held: Family<ModelLabels, Counter>,
    money_charged: Family<ModelLabels, Counter>,
    money_released: Family<ModelLabels, Counter>,
    holds_open: Gauge,
    errors: Family<CodeLabels, Counter>,
    backend_errors: Family<KindLabels, Counter>,
    // Registered always (a scrape shows it at 0), moved only by `server::serve`.
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    connections_open: Gauge,
    jobs: Family<StateLabels, Gauge>,
    jobs_ended: Family<StateLabels, Counter>,
    webhooks: Family<OutcomeLabels, Counter>,
    upstream: Upstreams,
    user_requests: Option<Family<UserLabels, Counter>>,
}

/// The routed deployments' metrics.
struct Upstreams {
    requests: Family<DeploymentOutcomeLabels, Counter>,
    duration: Histograms<DeploymentLabels>,
    in_flight: Family<DeploymentLabels, Gauge>,
    fallbacks: Family<DeploymentLabels, Counter>,
    cooldowns: Family<DeploymentLabels, Counter>,
    cost: Family<DeploymentLabels, Counter>,
}

impl Upstreams {
    fn register(registry: &mut Registry) -> Self {
        let upstreams = Upstreams {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
            fallbacks: Family::default(),
            cooldowns: Family::default(),
            cost: Family::default(),
        };
        let u = &upstreams;
        registry.register(
            "upstream_requests",
            "Calls to routed deployments by outcome",
            u.requests.clone(),
        );
        registry.register_with_unit(
            "upstream_duration",
            "One call to a routed deployment",
            Unit::Seconds,
            u.duration.clone(),
        );
        registry.register(
            "upstream_in_flight",
            "Calls to a routed deployment under way",
            u.in_flight.clone(),
        );
        registry.register(
            "upstream_fallbacks",
            "Jobs that fell back from a deployment to another",
            u.fallbacks.clone(),
        );
        registry.register(
            "upstream_cooldowns",
            "Rests a deployment was sent to",
            u.cooldowns.clone(),
        );
        registry.register(
            "upstream_cost",
            "What routed deployments bill the operator: images x cost_per_image",
            u.cost.clone(),
        );
        upstreams
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::build(false)
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("user_labels", &self.inner.user_requests.is_some())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Every metric, no user labels.
    pub fn new() -> Self {
        Metrics::default()
    }

    /// Every metric plus `image_gateway_user_requests_total{user}`: one series per user that
    /// sent a request, so only for a user base Prometheus can hold.
    pub fn with_user_labels() -> Self {
        Metrics::build(true)
    }

    fn build(user_labels: bool) -> Self {
        let mut registry = Registry::with_prefix("image_gateway");
        let requests = Family::default();
        registry.register("requests", "Requests answered", requests.clone());
        let request_duration: Histograms<RouteLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "request_duration",
            "From the request head to the answer's head",
            Unit::Seconds,
            request_duration.clone(),
        );
        let backend_duration: Histograms<OperationLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "backend_duration",
            "Time spent in the image backend",
            Unit::Seconds,
            backend_duration.clone(),
        );
        let request_bytes = Family::default();
        registry.register(
            "request_bytes",
            "Request body bytes (bodies of known length)",
            request_bytes.clone(),
        );
        let response_bytes = Family::default();
        registry.register(
            "response_bytes",
            "Response body bytes (bodies of known length; streams add none)",
            response_bytes.clone(),
        );
        let images_requested = Family::default();
        registry.register(
            "images_requested",
            "Images asked for (n) by billed jobs",
            images_requested.clone(),
        );
        let images_returned = Family::default();
        registry.register(
            "images_returned",
            "Images returned and charged",
            images_returned.clone(),
        );
        let money_held = Family::default();
        registry.register(
            "money_held",
            "Money held, in the smallest currency unit",
            money_held.clone(),
        );
        let money_charged = Family::default();
        registry.register(
            "money_charged",
            "Money charged when holds settled",
            money_charged.clone(),
        );
        let money_released = Family::default();
        registry.register(
            "money_released",
            "Money released back to balances",
            money_released.clone(),
        );
        let holds_open = Gauge::default();
        registry.register(
            "holds_open",
            "Holds taken by this process and not ended",
            holds_open.clone(),
        );
        let errors = Family::default();
        registry.register(
            "errors",
            "Error answers by their code in the error table",
            errors.clone(),
        );
        let backend_errors = Family::default();
        registry.register(
            "backend_errors",
            "Image backend failures by kind",
            backend_errors.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections being served",
            connections_open.clone(),
        );
        let jobs = Family::default();
        registry.register("jobs", "Async jobs queued or running here", jobs.clone());
        let jobs_ended = Family::default();
        registry.register(
            "jobs_ended",
            "Async jobs ended, by state",
            jobs_ended.clone(),
        );
        let webhooks = Family::default();
        registry.register(
            "webhook_deliveries",
            "Webhook attempts by outcome",
            webhooks.clone(),
        );
        let upstream = Upstreams::register(&mut registry);
        let user_requests = user_labels.then(|| {
            let family = Family::default();
            registry.register("user_requests", "Requests by user id", family.clone());
            family
        });
        Metrics {
            inner: Arc::new(Inner {
                registry,
                requests,
                request_duration,
                backend_duration,
                request_bytes,
                response_bytes,
                images_requested,
                images_returned,
                money_held,
                money_charged,
                money_released,
                holds_open,
                errors,
                backend_errors,
                connections_open,
                jobs,
                jobs_ended,
                webhooks,
                upstream,
                user_requests,
            }),
        }
    }

    /// The metrics in the Prometheus text format (OpenMetrics 1.0, ending in `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a `String` cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }

    /// Moves one async job from state `from` (none: it is new) to `to`: `queued` and
    /// `running` are counted as they are now, the ends as they happen.
    pub(crate) fn job_moved(&self, from: Option<&'static str>, to: &'static str) {
        let open = |state: &str| matches!(state, "queued" | "running");
        if let Some(from) = from.filter(|f| open(f)) {
            self.inner
                .jobs
                .get_or_create(&StateLabels { state: from })
                .dec();
        }
        if open(to) {
            self.inner
                .jobs
                .get_or_create(&StateLabels { state: to })
                .inc();
        } else {
            self.inner
                .jobs_ended
                .get_or_create(&StateLabels { state: to })
                .inc();
        }
    }

    /// A call to the routed deployment `deployment` began.
    pub(crate) fn upstream_began(&self, deployment: &Arc<str>) {
        let labels = DeploymentLabels {
            deployment: SharedLabel(deployment.clone()),
        };
        self.inner.upstream.in_flight.get_or_create(&labels).inc();
    }

    /// A call to `deployment` ended with `outcome` (`ok` or a failure's kind) after `took`,
    /// billing the operator `cost`.
    pub(crate) fn upstream_ended(
        &self,
        deployment: &Arc<str>,
        outcome: &'static str,
        took: Duration,
        cost: u64,
    ) {
        let u = &self.inner.upstream;
        let labels = DeploymentLabels {
            deployment: SharedLabel(deployment.clone()),
        };
        u.in_flight.get_or_create(&labels).dec();
        u.duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if cost > 0 {
            u.cost.get_or_create(&labels).inc_by(cost);
        }
        let deployment = labels.deployment;
        u.requests
            .get_or_create(&DeploymentOutcomeLabels {
                deployment,
                outcome,
            })
            .inc();
    }

    /// A job fell back from `deployment` to another.
    pub(crate) fn upstream_fell_back(&self, deployment: &Arc<str>) {
        let labels = DeploymentLabels {
            deployment: SharedLabel(deployment.clone()),
        };
        self.inner.upstream.fallbacks.get_or_create(&labels).inc();
    }

    /// `deployment` was sent to rest.
    pub(crate) fn upstream_rested(&self, deployment: &Arc<str>) {
        let labels = DeploymentLabels {
            deployment: SharedLabel(deployment.clone()),
        };
        self.inner.upstream.cooldowns.get_or_create(&labels).inc();
    }

    /// Counts one webhook attempt: `delivered`, `retried` or `given_up`.
    #[cfg_attr(not(feature = "fetch"), allow(dead_code))]
    pub(crate) fn webhook(&self, outcome: &'static str) {
        self.inner
            .webhooks
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts one answered request.
    pub(crate) fn request(&self, answered: Answered<'_>) {
        let route = answered.route;
        let inner = &*self.inner;
        inner
            .requests
            .get_or_create(&RequestLabels {
                route,
                method: method_label(answered.method),
                status: answered.status,
                model: answered.model.unwrap_or_default().to_owned(),
            })
            .inc();
        let by_route = RouteLabels { route };
        inner
            .request_duration
            .get_or_create(&by_route)
            .observe(answered.latency.as_secs_f64());
        if let Some(bytes) = answered.request_bytes {
            inner.request_bytes.get_or_create(&by_route).inc_by(bytes);
        }
        if let Some(bytes) = answered.response_bytes {
            inner.response_bytes.get_or_create(&by_route).inc_by(bytes);
        }
        if let Some(code) = answered.error_code {
            inner.errors.get_or_create(&CodeLabels { code }).inc();
        }
        if let (Some(family), Some(user)) = (&inner.user_requests, answered.user) {
            family
                .get_or_create(&UserLabels {
                    user: user.as_str().to_owned(),
                })
                .inc();
        }
    }

    /// Counts one backend call and how long it took.
    pub(crate) fn backend(
        &self,
        operation: Operation,
        took: Duration,
        error_kind: Option<&'static str>,
    ) {
        let operation = match operation {
            Operation::Edit => "edit",
            Operation::Generate => "generate",
            Operation::Compose => "compose",
        };
        self.inner
            .backend_duration
            .get_or_create(&OperationLabels { operation })
            .observe(took.as_secs_f64());
        if let Some(kind) = error_kind {
            self.inner
                .backend_errors
                .get_or_create(&KindLabels { kind })
                .inc();
        }
    }

    /// A hold of `amount` was taken for `n` images of `model`.
    pub(crate) fn held(&self, model: &str, n: u32, amount: u64) {
        let model = ModelLabels {
            model: model.to_owned(),
        };
        let inner = &*self.inner;
        inner
            .images_requested
            .get_or_create(&model)
            .inc_by(n.into());
        inner.money_held.get_or_create(&model).inc_by(amount);
        inner.holds_open.inc();
    }

    /// A hold of `held` ended: `charged` for `returned` images, the rest released.
    pub(crate) fn ended(&self, model: &str, held: u64, charged: u64, returned: u32) {
        let model = ModelLabels {
            model: model.to_owned(),
        };
        let inner = &*self.inner;
        inner
            .images_returned
            .get_or_create(&model)
            .inc_by(returned.into());
        inner.money_charged.get_or_create(&model).inc_by(charged);
        inner
            .money_released
            .get_or_create(&model)
            .inc_by(held.saturating_sub(charged));
        inner.holds_open.dec();
    }

    /// Counts a connection as open until the returned guard drops.
    #[cfg(feature = "server")]
    pub(crate) fn connection(&self) -> ConnectionOpen {
        self.inner.connections_open.inc();
        ConnectionOpen(self.inner.connections_open.clone())
    }
}

/// One open connection, counted until dropped.
#[cfg(feature = "server")]
pub(crate) struct ConnectionOpen(Gauge);

#[cfg(feature = "server")]
impl Drop for ConnectionOpen {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What [`Metrics::request`] counts of one answered request.
pub(crate) struct Answered<'a> {
    pub(crate) route: &'static str,
    pub(crate) method: &'a http::Method,
    pub(crate) status: u16,
    pub(crate) model: Option<&'a str>,
    pub(crate) user: Option<&'a UserId>,
    pub(crate) error_code: Option<&'static str>,
    pub(crate) latency: Duration,
    pub(crate) request_bytes: Option<u64>,
    pub(crate) response_bytes: Option<u64>,
}

fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_adds_up_in_the_scrape() {
        let metrics = Metrics::new();
        metrics.held("m", 3, 30);
        metrics.held("m", 1, 10);
        metrics.ended("m", 30, 20, 2);
        let text = metrics.encode();
        assert!(
            text.contains("image_gateway_money_held_total{model=\"m\"} 40"),
            "{text}"
        );
        assert!(text.contains("image_gateway_money_charged_total{model=\"m\"} 20"));
        assert!(text.contains("image_gateway_money_released_total{model=\"m\"} 10"));
        assert!(text.contains("image_gateway_holds_open 1"));
        assert!(text.contains("image_gateway_images_requested_total{model=\"m\"} 4"));
        assert!(text.contains("image_gateway_images_returned_total{model=\"m\"} 2"));
    }
}
