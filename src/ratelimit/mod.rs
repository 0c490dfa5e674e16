//! Per-caller request rate and concurrency limits.
//!
//! [`RateLimitLayer`] sits inside auth (it keys by [`Principal`](crate::auth::Principal)) and
//! refuses, with `429 rate_limit_exceeded` and a `Retry-After` header in the spec's envelope:
//!
//! - a caller over its request rate: GCRA (the `governor` crate), a quota of requests per
//!   minute with a burst of the same size, per user, with optional per-user overrides;
//! - a caller with too many requests in flight (image edits are long): a counter per user,
//!   taken before the inner service runs and given back when its response future ends or is
//!   dropped.
//!
//! A request without a principal passes through untouched, so the auth layer outside answers
//! it. Limits are per process: replicas each enforce their own.
//!
//! # Example
//! ```
//! use std::num::NonZeroU32;
//! use image_gateway::ratelimit::RateLimitLayer;
//!
//! let layer = RateLimitLayer::new()
//!     .per_minute(NonZeroU32::new(60).unwrap())
//!     .max_in_flight(4);
//! # let _ = layer;
//! ```

mod layer;
#[cfg(feature = "redis")]
mod redis;
mod service;

pub use layer::RateLimitLayer;
#[cfg(feature = "redis")]
pub use redis::RedisLimits;
pub use service::RateLimit;
