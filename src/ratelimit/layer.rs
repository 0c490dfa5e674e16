use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tower_layer::Layer;

use super::RateLimit;
use crate::auth::UserId;

/// Applies [`RateLimit`]. Default: no rate limit and no in-flight limit.
///
/// Clones share their counters, so one layer applied to several services limits them
/// together.
#[derive(Clone, Default)]
pub struct RateLimitLayer {
    settings: Settings,
    pub(super) limits: Arc<Limits>,
}

#[derive(Clone, Default, Debug)]
struct Settings {
    per_minute: Option<NonZeroU32>,
    overrides: Vec<(UserId, NonZeroU32)>,
    max_in_flight: Option<usize>,
    #[cfg(feature = "redis")]
    redis: Option<super::RedisLimits>,
}

#[derive(Default)]
pub(super) struct Limits {
    pub(super) global: Option<DefaultKeyedRateLimiter<UserId>>,
    pub(super) overrides: HashMap<UserId, DefaultKeyedRateLimiter<UserId>>,
    pub(super) max_in_flight: Option<usize>,
    pub(super) in_flight: Mutex<HashMap<UserId, usize>>,
    /// The rates by number, for a shared store that counts them itself.
    #[cfg(feature = "redis")]
    pub(super) per_minute: Option<NonZeroU32>,
    #[cfg(feature = "redis")]
    pub(super) overridden: HashMap<UserId, NonZeroU32>,
    /// Where the counters live when they are shared by replicas.
    #[cfg(feature = "redis")]
    pub(super) redis: Option<super::RedisLimits>,
}

impl Limits {
    fn from_settings(settings: &Settings) -> Self {
        Limits {
            global: settings.per_minute.map(limiter),
            overrides: settings
                .overrides
                .iter()
                .map(|(user, rate)| (user.clone(), limiter(*rate)))
                .collect(),
            max_in_flight: settings.max_in_flight,
            in_flight: Mutex::new(HashMap::new()),
            #[cfg(feature = "redis")]
            per_minute: settings.per_minute,
            #[cfg(feature = "redis")]
            overridden: settings.overrides.iter().cloned().collect(),
            #[cfg(feature = "redis")]
            redis: settings.redis.clone(),
        }
    }

    /// The rate `user` is held to, if any.
    #[cfg(feature = "redis")]
    pub(super) fn rate_of(&self, user: &UserId) -> Option<NonZeroU32> {
        self.overridden.get(user).copied().or(self.per_minute)
    }
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("settings", &self.settings)
            .finish()
    }
}

fn limiter(per_minute: NonZeroU32) -> DefaultKeyedRateLimiter<UserId> {
    RateLimiter::keyed(Quota::per_minute(per_minute))
}

impl RateLimitLayer {
    /// No limits until set.
    pub fn new() -> Self {
        Self::default()
    }

    fn with(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        change(&mut self.settings);
        self.limits = Arc::new(Limits::from_settings(&self.settings));
        self
    }

    /// Every caller may make `per_minute` requests a minute (bursts of as many).
    pub fn per_minute(self, per_minute: NonZeroU32) -> Self {
        self.with(|s| s.per_minute = Some(per_minute))
    }

    /// `user` gets its own rate instead of the global one.
    pub fn user_per_minute(self, user: UserId, per_minute: NonZeroU32) -> Self {
        self.with(|s| s.overrides.push((user, per_minute)))
    }

    /// Every caller may have at most `max` requests in flight.
    pub fn max_in_flight(self, max: usize) -> Self {
        self.with(|s| s.max_in_flight = Some(max.max(1)))
    }

    /// Keeps the counters in Redis instead of in this process, so every replica that uses
    /// the same Redis (and prefix) counts against the same limits. When Redis cannot be
    /// reached, requests are refused with `503 limits_unavailable` (failing closed: letting
    /// them through would lift every caller's limits at once).
    #[cfg(feature = "redis")]
    pub fn redis(self, limits: super::RedisLimits) -> Self {
        self.with(|s| s.redis = Some(limits))
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limits: self.limits.clone(),
        }
    }
}
