//! Several deployments behind one model: a [`RoutedBackend`] picks one per job, falls back
//! to another when the one it picked did not take the work, and rests a deployment that
//! keeps failing.
//!
//! # Guarantees
//! - Choice: the highest-priority group that has a deployment available, then weighted
//!   random within it. A deployment at its `max_in_flight`, or resting, is skipped.
//! - Fallback only when the deployment did not take the work, so an upstream is never paid
//!   twice for one image: it could not be reached ([`Failure::Connect`]), or it answered
//!   that it took nothing (`429`, `500`, `502`, `503`, `504`: [`Failure::Busy`]). A timeout
//!   ([`Failure::Timeout`]) may mean the first deployment still renders and will bill: no
//!   fallback unless [`RoutedBackend::retry_after_timeout`] allows it. Never after a partial
//!   image was shown, never on a refusal of the request itself (moderation, a size, an
//!   image, any other status), and at most [`RoutedBackend::attempts`] deployments per job.
//! - Cooldown: a deployment that fails `failures` times within `window` rests for `rest`;
//!   then one job probes it, and a success ends the rest. A refusal of the request itself is
//!   not a failure of the deployment.
//! - Per process: replicas keep their own counts.
//!
//! With one deployment (or one attempt) the job is given to it as its own
//! ([`ImageBackend::edit_owned`]: an upstream drops its copy of the sources once they are
//! sent); with several, every attempt borrows it, so the sources stay in memory for a
//! fallback until the job ends.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::{BackendError, Failure, ImageBackend};
use crate::job::{EditJob, Image, ServedBy};
use crate::metrics::Metrics;

/// One upstream deployment of a model: a backend with its weight, priority and bound.
pub struct Deployment {
    name: Arc<str>,
    backend: Arc<dyn ImageBackend>,
    weight: u32,
    priority: i32,
    max_in_flight: Option<Arc<Semaphore>>,
    /// That bound, as given.
    bound: Option<usize>,
    /// What one image it returns costs the operator (for metrics only).
    cost_per_image: u64,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("name", &self.name)
            .field("weight", &self.weight)
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

impl Deployment {
    /// `backend`, known as `name` in logs; weight 1, priority 0, no bound.
    pub fn new(name: impl Into<String>, backend: impl ImageBackend) -> Self {
        Deployment {
            name: Arc::from(name.into()),
            backend: Arc::new(backend),
            weight: 1,
            priority: 0,
            max_in_flight: None,
            bound: None,
            cost_per_image: 0,
        }
    }

    /// What one image it returns costs the operator, counted in
    /// `image_gateway_upstream_cost_total` (metrics only: the caller pays the model's price).
    pub fn cost_per_image(mut self, cost: u64) -> Self {
        self.cost_per_image = cost;
        self
    }

    /// Its share within its priority group, against the others' weights (0: used only
    /// when no other of its group is available).
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Its group: higher groups are used first.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// At most `jobs` at once; past it the deployment is skipped.
    pub fn max_in_flight(mut self, jobs: usize) -> Self {
        self.max_in_flight = Some(Arc::new(Semaphore::new(jobs)));
        self.bound = Some(jobs);
        self
    }
}

/// When a deployment rests; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Cooldown {
    /// Failures within `window` that start a rest. Default 3.
    pub failures: u32,
    /// Default 60 s.
    pub window: Duration,
    /// Default 30 s.
    pub rest: Duration,
}

impl Default for Cooldown {
    fn default() -> Self {
        Cooldown {
            failures: 3,
            window: Duration::from_secs(60),
            rest: Duration::from_secs(30),
        }
    }
}

/// A model's deployments, as one [`ImageBackend`]; see the module docs.
pub struct RoutedBackend {
    slots: Vec<Slot>,
    attempts: usize,
    retry_after_timeout: bool,
    cooldown: Cooldown,
    rests: Option<Arc<dyn Rests>>,
    metrics: Option<Metrics>,
}

/// Where rests are shared between the processes that route over the same deployments (by
/// their names): a deployment resting on one rests on all.
///
/// # Contract
/// - `rest` records that `name` rests until `until_ms` (Unix milliseconds); a later call
///   may move it.
/// - `resting` answers, for each of `names` in order, until when it rests, or `None`.
/// - An error leaves routing to this process's own counts (logged).
#[async_trait]
pub trait Rests: Send + Sync + 'static {
    /// Until when each of `names` rests.
    async fn resting(&self, names: &[&str]) -> Result<Vec<Option<u64>>, crate::BoxError>;
    /// `name` rests until `until_ms`.
    async fn rest(&self, name: &str, until_ms: u64) -> Result<(), crate::BoxError>;
}

impl std::fmt::Debug for RoutedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.slots.iter().map(|s| &*s.deployment.name).collect();
        f.debug_struct("RoutedBackend")
            .field("deployments", &names)
            .finish_non_exhaustive()
    }
}

struct Slot {
    deployment: Deployment,
    health: Mutex<Health>,
    /// Calls to it under way.
    in_flight: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct Health {
    /// When its recent failures happened, oldest first.
    failures: VecDeque<Instant>,
    /// Resting until then.
    resting_until: Option<Instant>,
    /// A job probes it after its rest.
    probing: bool,
}

/// A deployment taken for one job.
struct Taken<'a> {
    index: usize,
    slot: &'a Slot,
    _permit: Option<OwnedSemaphorePermit>,
    probe: bool,
}

impl RoutedBackend {
    /// Routes over `deployments`: 3 attempts, no fallback after a timeout, the default
    /// [`Cooldown`].
    pub fn new(deployments: impl IntoIterator<Item = Deployment>) -> Self {
        RoutedBackend {
            slots: deployments
                .into_iter()
                .map(|deployment| Slot {
                    deployment,
                    health: Mutex::default(),
                    in_flight: Default::default(),
                })
                .collect(),
            attempts: 3,
            retry_after_timeout: false,
            cooldown: Cooldown::default(),
            rests: None,
            metrics: None,
        }
    }

    /// Counts each deployment's calls, time, fallbacks, rests and cost in `metrics`.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Runs `call` on `taken`'s deployment, counted; then counts how it ended (and shares
    /// a rest it opened).
    async fn call(
        &self,
        taken: &Taken<'_>,
        served_by: &ServedBy,
        call: impl std::future::Future<Output = Result<Vec<Image>, BackendError>>,
    ) -> Result<Vec<Image>, BackendError> {
        let deployment = &taken.slot.deployment;
        served_by.set(deployment.name.clone());
        if let Some(metrics) = &self.metrics {
            metrics.upstream_began(&deployment.name);
        }
        let in_flight = &taken.slot.in_flight;
        in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        let outcome = call.await;
        in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(metrics) = &self.metrics {
            let (kind, images) = match &outcome {
                Ok(images) => ("ok", images.len() as u64),
                Err(error) => (error.kind(), 0),
            };
            let cost = deployment.cost_per_image.saturating_mul(images);
            metrics.upstream_ended(&deployment.name, kind, started.elapsed(), cost);
        }
        self.ended(taken, &outcome).await;
        outcome
    }

    /// Shares rests through `rests` (Redis, for replicas): a deployment resting on one
    /// process rests on all. Default: each process keeps its own.
    pub fn shared_rests(mut self, rests: Arc<dyn Rests>) -> Self {
        self.rests = Some(rests);
        self
    }

    /// Takes in the rests other processes shared.
    async fn learn_rests(&self) {
        let Some(rests) = &self.rests else {
            return;
        };
        let names: Vec<&str> = self.slots.iter().map(|s| &*s.deployment.name).collect();
        let until = match rests.resting(&names).await {
            Ok(until) => until,
            Err(error) => {
                tracing::warn!(%error, "reading shared rests failed; this process's own counts decide");
                return;
            }
        };
        let now_ms = unix_ms();
        let now = Instant::now();
        for (slot, until) in self.slots.iter().zip(until) {
            let Some(until) = until.filter(|until| *until > now_ms) else {
                continue;
            };
            let at = now + Duration::from_millis(until - now_ms);
            let mut health = lock(&slot.health);
            if health.resting_until.is_none_or(|mine| mine < at) {
                health.resting_until = Some(at);
            }
        }
    }

    /// Counts how a job on `taken` ended, and shares a rest it opened.
    async fn ended(&self, taken: &Taken<'_>, outcome: &Result<Vec<Image>, BackendError>) {
        if self.record(taken, outcome) {
            if let Some(metrics) = &self.metrics {
                metrics.upstream_rested(&taken.slot.deployment.name);
            }
            self.share_rest(taken.slot).await;
        }
    }

    /// Shares that `slot` rests for the cooldown's rest from now.
    async fn share_rest(&self, slot: &Slot) {
        if let Some(rests) = &self.rests {
            let until = unix_ms().saturating_add(self.cooldown.rest.as_millis() as u64);
            if let Err(error) = rests.rest(&slot.deployment.name, until).await {
                tracing::warn!(%error, "sharing a deployment's rest failed");
            }
        }
    }

    /// Each deployment's state now, in the order given: its name, priority, weight, calls
    /// under way (and its bound), until when it rests (Unix milliseconds), and its failures
    /// within the cooldown's window.
    pub fn states(&self) -> serde_json::Value {
        let now = Instant::now();
        let now_ms = unix_ms();
        let deployments: Vec<serde_json::Value> = self
            .slots
            .iter()
            .map(|slot| {
                let d = &slot.deployment;
                let health = lock(&slot.health);
                let resting_until = health
                    .resting_until
                    .filter(|until| *until > now)
                    .map(|until| now_ms.saturating_add((until - now).as_millis() as u64));
                let recent = health
                    .failures
                    .iter()
                    .filter(|at| now.duration_since(**at) <= self.cooldown.window)
                    .count();
                let in_flight = slot.in_flight.load(std::sync::atomic::Ordering::Relaxed);
                serde_json::json!({
                    "name": &*d.name,
                    "priority": d.priority,
                    "weight": d.weight,
                    "in_flight": in_flight,
                    "max_in_flight": d.bound,
                    "available": resting_until.is_none()
                        && d.bound.is_none_or(|bound| in_flight < bound),
                    "resting_until_ms": resting_until,
                    "probing": health.probing,
                    "recent_failures": recent,
                })
            })
            .collect();
        serde_json::Value::Array(deployments)
    }

    /// At most `attempts` deployments per job (at least 1).
    pub fn attempts(mut self, attempts: usize) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Falls back after a timeout too: the first deployment may still render and bill, so
    /// an image may be paid for twice upstream (never charged twice to the caller).
    pub fn retry_after_timeout(mut self, allowed: bool) -> Self {
        self.retry_after_timeout = allowed;
        self
    }

    /// When a failing deployment rests.
    pub fn cooldown(mut self, cooldown: Cooldown) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// The deployment for the next attempt, among those not `tried`: see the module docs.
    fn take(&self, tried: &[usize]) -> Option<Taken<'_>> {
        let now = Instant::now();
        let mut open: Vec<(usize, bool)> = Vec::new();
        for (index, slot) in self.slots.iter().enumerate() {
            if tried.contains(&index) {
                continue;
            }
            let health = lock(&slot.health);
            match health.resting_until {
                Some(until) if until > now || health.probing => continue,
                Some(_) => open.push((index, true)),
                None => open.push((index, false)),
            }
        }
        let mut priorities: Vec<i32> = open
            .iter()
            .map(|(i, _)| self.slots[*i].deployment.priority)
            .collect();
        priorities.sort_unstable_by(|a, b| b.cmp(a));
        priorities.dedup();
        for priority in priorities {
            let mut group: Vec<(usize, bool)> = open
                .iter()
                .copied()
                .filter(|(i, _)| self.slots[*i].deployment.priority == priority)
                .collect();
            while !group.is_empty() {
                let pick = weighted(&group, |i| self.slots[i].deployment.weight);
                let (index, probe) = group.swap_remove(pick);
                let slot = &self.slots[index];
                let permit = match &slot.deployment.max_in_flight {
                    Some(bound) => match bound.clone().try_acquire_owned() {
                        Ok(permit) => Some(permit),
                        Err(_) => continue,
                    },
                    None => None,
                };
                if probe {
                    let mut health = lock(&slot.health);
                    if health.probing {
                        continue;
                    }
                    health.probing = true;
                }
                return Some(Taken {
                    index,
                    slot,
                    _permit: permit,
                    probe,
                });
            }
        }
        None
    }

    /// Counts how a job on `taken` ended; whether the deployment now rests.
    fn record(&self, taken: &Taken<'_>, outcome: &Result<Vec<Image>, BackendError>) -> bool {
        let mut health = lock(&taken.slot.health);
        if taken.probe {
            health.probing = false;
        }
        let asked = match outcome {
            Err(BackendError::Upstream { retry_after, .. }) => *retry_after,
            _ => {
                health.failures.clear();
                health.resting_until = None;
                return false;
            }
        };
        // The upstream's own Retry-After wins when it is longer.
        let rest = asked.map_or(self.cooldown.rest, |asked| asked.max(self.cooldown.rest));
        let now = Instant::now();
        if taken.probe {
            // The probe failed: rest again.
            health.resting_until = Some(now + rest);
            return true;
        }
        health.failures.push_back(now);
        while health
            .failures
            .front()
            .is_some_and(|at| now.duration_since(*at) > self.cooldown.window)
        {
            health.failures.pop_front();
        }
        if health.failures.len() as u32 >= self.cooldown.failures {
            health.failures.clear();
            health.resting_until = Some(now + rest);
            tracing::warn!(deployment = %taken.slot.deployment.name, "deployment resting after repeated failures");
            return true;
        }
        false
    }

    /// Whether a failure leaves the work untaken, so another deployment may be asked.
    fn may_fall_back(&self, job: &EditJob, error: &BackendError) -> bool {
        if job.progress.partials_shown() > 0 {
            return false;
        }
        match error {
            BackendError::Upstream { failure, .. } => match failure {
                Failure::Busy | Failure::Connect => true,
                Failure::Timeout => self.retry_after_timeout,
                _ => false,
            },
            _ => false,
        }
    }
}

/// Unix milliseconds now.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// No deployment could take the job: each at its bound or resting.
fn unavailable() -> BackendError {
    BackendError::failed(
        Failure::Unavailable,
        "no deployment of this model is available",
    )
}

/// An index into `group` drawn by weight (uniform when every weight is 0).
fn weighted(group: &[(usize, bool)], weight: impl Fn(usize) -> u32) -> usize {
    let total: u64 = group.iter().map(|(i, _)| u64::from(weight(*i))).sum();
    if total == 0 {
        return rand::thread_rng().gen_range(0..group.len());
    }
    let mut draw = rand::thread_rng().gen_range(0..total);
    for (k, (i, _)) in group.iter().enumerate() {
        let w = u64::from(weight(*i));
        if draw < w {
            return k;
        }
        draw -= w;
    }
    group.len() - 1
}

fn lock(health: &Mutex<Health>) -> std::sync::MutexGuard<'_, Health> {
    health.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl ImageBackend for RoutedBackend {
    async fn edit(&self, job: &EditJob) -> Result<Vec<Image>, BackendError> {
        self.learn_rests().await;
        let mut tried = Vec::new();
        let mut last = None;
        while tried.len() < self.attempts {
            let Some(taken) = self.take(&tried) else {
                break;
            };
            tried.push(taken.index);
            let backend = &taken.slot.deployment.backend;
            let outcome = self.call(&taken, &job.served_by, backend.edit(job)).await;
            match outcome {
                Err(error) if self.may_fall_back(job, &error) => {
                    tracing::warn!(deployment = %taken.slot.deployment.name, kind = error.kind(), "falling back to another deployment");
                    if let Some(metrics) = &self.metrics {
                        metrics.upstream_fell_back(&taken.slot.deployment.name);
                    }
                    last = Some(error);
                }
                done => return done,
            }
        }
        Err(last.unwrap_or_else(unavailable))
    }

    async fn edit_owned(&self, job: EditJob) -> Result<Vec<Image>, BackendError> {
        // A single deployment takes the job as its own (and may drop its sources early).
        if self.slots.len() == 1 || self.attempts == 1 {
            self.learn_rests().await;
            let Some(taken) = self.take(&[]) else {
                return Err(unavailable());
            };
            let backend = taken.slot.deployment.backend.clone();
            let served_by = job.served_by.clone();
            return self.call(&taken, &served_by, backend.edit_owned(job)).await;
        }
        self.edit(&job).await
    }
}

/// Rests shared through Redis: `{prefix}rest:{name}` holds until when `name` rests, and
/// expires then.
#[cfg(feature = "redis")]
#[derive(Clone)]
pub struct RedisRests {
    connection: redis::aio::ConnectionManager,
    prefix: String,
}

#[cfg(feature = "redis")]
impl std::fmt::Debug for RedisRests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRests")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "redis")]
impl RedisRests {
    /// Connects to `url`; keys start with `prefix`. Reconnects by itself after a failure.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, crate::BoxError> {
        let client = redis::Client::open(url)?;
        let connection = redis::aio::ConnectionManager::new(client).await?;
        Ok(RedisRests {
            connection,
            prefix: prefix.to_owned(),
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}rest:{name}", self.prefix)
    }
}

#[cfg(feature = "redis")]
#[async_trait]
impl Rests for RedisRests {
    async fn resting(&self, names: &[&str]) -> Result<Vec<Option<u64>>, crate::BoxError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = names.iter().map(|n| self.key(n)).collect();
        let mut connection = self.connection.clone();
        let values: Vec<Option<u64>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut connection)
            .await?;
        Ok(values)
    }

    async fn rest(&self, name: &str, until_ms: u64) -> Result<(), crate::BoxError> {
        let ttl = until_ms.saturating_sub(unix_ms()).max(1);
        let mut connection = self.connection.clone();
        redis::cmd("SET")
            .arg(self.key(name))
            .arg(until_ms)
            .arg("PX")
            .arg(ttl)
            .query_async::<()>(&mut connection)
            .await?;
        Ok(())
    }
}

/// A backend per model, and one for the models without their own: a gateway whose models
/// are served by different deployments (a [`RoutedBackend`] each) or none.
pub struct PerModel {
    models: std::collections::HashMap<String, Arc<dyn ImageBackend>>,
    otherwise: Arc<dyn ImageBackend>,
}

impl std::fmt::Debug for PerModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&String> = self.models.keys().collect();
        f.debug_struct("PerModel")
            .field("models", &names)
            .finish_non_exhaustive()
    }
}

impl PerModel {
    /// Every model served by `otherwise` until [`model`](Self::model) names its own.
    pub fn new(otherwise: Arc<dyn ImageBackend>) -> Self {
        PerModel {
            models: std::collections::HashMap::new(),
            otherwise,
        }
    }

    /// Jobs of `model` go to `backend`.
    pub fn model(mut self, model: impl Into<String>, backend: Arc<dyn ImageBackend>) -> Self {
        self.models.insert(model.into(), backend);
        self
    }

    fn of(&self, job: &EditJob) -> &Arc<dyn ImageBackend> {
        self.models
            .get(&job.params.model)
            .unwrap_or(&self.otherwise)
    }
}

#[async_trait]
impl ImageBackend for PerModel {
    async fn edit(&self, job: &EditJob) -> Result<Vec<Image>, BackendError> {
        self.of(job).edit(job).await
    }

    async fn edit_owned(&self, job: EditJob) -> Result<Vec<Image>, BackendError> {
        self.of(&job).clone().edit_owned(job).await
    }

    /// Cancellable only when every backend is.
    fn cancellable(&self) -> bool {
        self.otherwise.cancellable() && self.models.values().all(|b| b.cancellable())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;

    use super::*;
    use crate::auth::{Principal, UserId};
    use crate::job::{EditParams, OutputFormat, Progress};

    /// A deployment that answers with `script` in turn (then with its last line), counting
    /// its calls; `Ok` is one image.
    struct Scripted {
        script: Mutex<VecDeque<Result<(), BackendError>>>,
        calls: Arc<AtomicUsize>,
        /// Shows one partial image before answering.
        partial: bool,
    }

    fn scripted(
        script: impl IntoIterator<Item = Result<(), BackendError>>,
    ) -> (Scripted, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let backend = Scripted {
            script: Mutex::new(script.into_iter().collect()),
            calls: calls.clone(),
            partial: false,
        };
        (backend, calls)
    }

    fn image() -> Image {
        Image::new(Bytes::from_static(b"img"), OutputFormat::Png)
    }

    #[async_trait]
    impl ImageBackend for Scripted {
        async fn edit(&self, job: &EditJob) -> Result<Vec<Image>, BackendError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.partial {
                job.progress.partial(0, image());
            }
            let mut script = self.script.lock().unwrap();
            let next = if script.len() > 1 {
                script.pop_front()
            } else {
                script.front().cloned()
            };
            next.unwrap_or(Ok(())).map(|()| vec![image()])
        }
    }

    fn busy() -> BackendError {
        BackendError::failed(Failure::Busy, "503")
    }

    fn job() -> EditJob {
        let principal = Principal::new(UserId::new("alice").unwrap());
        EditJob::new(principal, Vec::new(), EditParams::new("m", "p"))
    }

    #[tokio::test]
    async fn weights_share_the_jobs_within_five_points() {
        let (a, a_calls) = scripted([Ok(())]);
        let (b, b_calls) = scripted([Ok(())]);
        let routed = RoutedBackend::new([
            Deployment::new("a", a).weight(3),
            Deployment::new("b", b).weight(1),
        ]);
        for _ in 0..1000 {
            routed.edit(&job()).await.unwrap();
        }
        let a = a_calls.load(Ordering::SeqCst);
        assert_eq!(a + b_calls.load(Ordering::SeqCst), 1000);
        assert!(
            (700..=800).contains(&a),
            "{a} of 1000 went to the weight-3 deployment"
        );
    }

    #[tokio::test]
    async fn a_lower_priority_is_used_only_while_the_higher_is_unavailable() {
        let (high, high_calls) = scripted([Ok(())]);
        let (low, low_calls) = scripted([Ok(())]);
        let routed = Arc::new(RoutedBackend::new([
            Deployment::new("high", high).priority(1).max_in_flight(1),
            Deployment::new("low", low),
        ]));
        for _ in 0..20 {
            routed.edit(&job()).await.unwrap();
        }
        assert_eq!(
            (
                high_calls.load(Ordering::SeqCst),
                low_calls.load(Ordering::SeqCst)
            ),
            (20, 0)
        );
        // The high one at its bound: the next job goes low.
        let permit = routed.slots[0]
            .deployment
            .max_in_flight
            .clone()
            .unwrap()
            .try_acquire_owned()
            .unwrap();
        routed.edit(&job()).await.unwrap();
        assert_eq!(low_calls.load(Ordering::SeqCst), 1);
        drop(permit);
        routed.edit(&job()).await.unwrap();
        assert_eq!(high_calls.load(Ordering::SeqCst), 21);
    }

    #[tokio::test]
    async fn work_not_taken_falls_back_and_work_taken_does_not() {
        // Busy and unreachable: the next deployment serves the job, once.
        for failure in [Failure::Busy, Failure::Connect] {
            let (a, a_calls) = scripted([Err(BackendError::failed(failure, "x"))]);
            let (b, b_calls) = scripted([Ok(())]);
            let routed =
                RoutedBackend::new([Deployment::new("a", a).priority(1), Deployment::new("b", b)]);
            assert_eq!(routed.edit(&job()).await.unwrap().len(), 1);
            let calls = (
                a_calls.load(Ordering::SeqCst),
                b_calls.load(Ordering::SeqCst),
            );
            assert_eq!(calls, (1, 1), "{failure:?}");
        }
        // A timeout, a refusal of the request, another status: the first answer stands.
        let refusals = [
            BackendError::failed(Failure::Timeout, "slow"),
            BackendError::failed(Failure::Status, "400"),
            BackendError::ContentPolicy {
                message: "no".into(),
            },
        ];
        for refusal in refusals {
            let (a, _) = scripted([Err(refusal.clone())]);
            let (b, b_calls) = scripted([Ok(())]);
            let routed =
                RoutedBackend::new([Deployment::new("a", a).priority(1), Deployment::new("b", b)]);
            assert_eq!(routed.edit(&job()).await.err(), Some(refusal.clone()));
            assert_eq!(b_calls.load(Ordering::SeqCst), 0, "{refusal:?}");
        }
        // A timeout falls back when the operator allows it.
        let (a, _) = scripted([Err(BackendError::failed(Failure::Timeout, "slow"))]);
        let (b, b_calls) = scripted([Ok(())]);
        let routed =
            RoutedBackend::new([Deployment::new("a", a).priority(1), Deployment::new("b", b)])
                .retry_after_timeout(true);
        assert!(routed.edit(&job()).await.is_ok());
        assert_eq!(b_calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn no_fallback_after_a_partial_image_and_at_most_the_attempts() {
        let (mut a, _) = scripted([Err(busy())]);
        a.partial = true;
        let (b, b_calls) = scripted([Ok(())]);
        let routed =
            RoutedBackend::new([Deployment::new("a", a).priority(1), Deployment::new("b", b)]);
        let (progress, _steps) = Progress::channel(1);
        let mut streamed = job();
        streamed.progress = progress;
        assert_eq!(routed.edit(&streamed).await.err(), Some(busy()));
        assert_eq!(b_calls.load(Ordering::SeqCst), 0);

        let all: Vec<(Scripted, Arc<AtomicUsize>)> =
            (0..4).map(|_| scripted([Err(busy())])).collect();
        let calls: Vec<Arc<AtomicUsize>> = all.iter().map(|(_, c)| c.clone()).collect();
        let routed = RoutedBackend::new(
            all.into_iter()
                .enumerate()
                .map(|(i, (backend, _))| Deployment::new(format!("d{i}"), backend)),
        )
        .attempts(2);
        assert_eq!(routed.edit(&job()).await.err(), Some(busy()));
        let total: usize = calls.iter().map(|c| c.load(Ordering::SeqCst)).sum();
        assert_eq!(total, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_deployment_rests_then_one_job_probes_it() {
        let (a, a_calls) = scripted([Err(busy()), Err(busy()), Err(busy()), Ok(())]);
        let (b, b_calls) = scripted([Ok(())]);
        let routed =
            RoutedBackend::new([Deployment::new("a", a).priority(1), Deployment::new("b", b)])
                .cooldown(Cooldown {
                    failures: 3,
                    window: Duration::from_secs(60),
                    rest: Duration::from_secs(30),
                });
        for _ in 0..3 {
            routed.edit(&job()).await.unwrap();
        }
        assert_eq!(a_calls.load(Ordering::SeqCst), 3);
        // Resting: skipped.
        for _ in 0..5 {
            routed.edit(&job()).await.unwrap();
        }
        assert_eq!(a_calls.load(Ordering::SeqCst), 3);
        assert_eq!(b_calls.load(Ordering::SeqCst), 8);
        // After the rest one job probes it; its success ends the rest.
        tokio::time::advance(Duration::from_secs(31)).await;
        routed.edit(&job()).await.unwrap();
        assert_eq!(a_calls.load(Ordering::SeqCst), 4);
        routed.edit(&job()).await.unwrap();
        assert_eq!(a_calls.load(Ordering::SeqCst), 5);
        assert_eq!(b_calls.load(Ordering::SeqCst), 8);
    }

    #[tokio::test]
    async fn no_deployment_available_is_503_with_retry_after() {
        let (a, _) = scripted([Ok(())]);
        let routed = RoutedBackend::new([Deployment::new("a", a).max_in_flight(1)]);
        let _held = routed.slots[0]
            .deployment
            .max_in_flight
            .clone()
            .unwrap()
            .try_acquire_owned()
            .unwrap();
        let error = routed.edit_owned(job()).await.unwrap_err();
        assert_eq!(error.kind(), "upstream_unavailable");
        let answer = crate::GatewayError::from(error);
        assert_eq!(
            (answer.status().as_u16(), answer.code()),
            (503, "upstream_unavailable")
        );
    }
}
