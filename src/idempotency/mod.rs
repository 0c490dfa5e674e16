//! Idempotent edits: a retried request is answered with its first result and charged once.
//!
//! A request that carries `Idempotency-Key: <key>` (1 to 255 visible ASCII characters) is
//! remembered per caller for 24 hours with a fingerprint of what it asked for (model, prompt,
//! every parameter, and the source: key, generation id, or a SHA-256 of each uploaded image).
//!
//! | a later request with the same key | answer |
//! |---|---|
//! | same fingerprint, first one succeeded | the first result, rebuilt from its stored generations; nothing charged |
//! | same fingerprint, first one still running | `409 idempotency_key_in_use`, `Retry-After: 1` |
//! | same fingerprint, first one failed | runs again (a failure charged nothing) |
//! | same fingerprint, first one's client left while it ran | its work goes on (`409` until it ends), then the first result; charged once. For a [cancellable](crate::backend::ImageBackend::cancellable) backend the work was cancelled, so it runs again |
//! | different fingerprint | `409 idempotency_key_reused` |
//!
//! The record ends with the request's work, not with its connection. A request left running
//! by a process that died is forgotten after 10 minutes, so its key can be used again. [`IdempotencyLayer`] sits between normalization and source resolution.

mod layer;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
mod service;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

pub use layer::IdempotencyLayer;
pub use memory::MemoryIdempotency;
#[cfg(feature = "postgres")]
pub use postgres::PgIdempotency;
pub use service::Idempotency;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteIdempotency;

use crate::auth::UserId;
use crate::id::GenerationId;
use crate::store::StoreError;

/// How long a key is remembered.
pub const KEY_LIFETIME_SECS: u64 = 24 * 60 * 60;
/// How long a request may run before its key is considered abandoned.
pub const IN_PROGRESS_SECS: u64 = 10 * 60;

/// What a key already stands for, as [`IdempotencyRecords::begin`] finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begin {
    /// Unknown (or expired) key: it is now recorded as in progress; run the request.
    New,
    /// The same request is running.
    InProgress,
    /// The same request succeeded with these generations.
    Done {
        /// Unix seconds of the first answer.
        created: u64,
        /// Its generation ids, in order.
        generations: Vec<GenerationId>,
    },
    /// The key was used for a different request.
    Mismatch,
}

/// Caller + key -> what the key stands for. Each method is one atomic step.
#[async_trait]
pub trait IdempotencyRecords: Send + Sync + 'static {
    /// Looks the key up and, when it is new, expired or abandoned, records it as in progress
    /// with `fingerprint` (atomically, so two concurrent first requests cannot both run).
    async fn begin(
        &self,
        user: &UserId,
        key: &str,
        fingerprint: &str,
        now: u64,
    ) -> Result<Begin, StoreError>;

    /// Records the successful result of the request holding the key.
    async fn complete(
        &self,
        user: &UserId,
        key: &str,
        created: u64,
        generations: &[GenerationId],
    ) -> Result<(), StoreError>;

    /// Forgets a key whose request failed, so a retry runs again.
    async fn abandon(&self, user: &UserId, key: &str) -> Result<(), StoreError>;
}

#[async_trait]
impl<R: IdempotencyRecords + ?Sized> IdempotencyRecords for Arc<R> {
    async fn begin(
        &self,
        user: &UserId,
        key: &str,
        fingerprint: &str,
        now: u64,
    ) -> Result<Begin, StoreError> {
        (**self).begin(user, key, fingerprint, now).await
    }

    async fn complete(
        &self,
        user: &UserId,
        key: &str,
        created: u64,
        generations: &[GenerationId],
    ) -> Result<(), StoreError> {
        (**self).complete(user, key, created, generations).await
    }

    async fn abandon(&self, user: &UserId, key: &str) -> Result<(), StoreError> {
        (**self).abandon(user, key).await
    }
}

/// Generation ids as a record keeps them: comma-separated, in order.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn join_ids(ids: &[GenerationId]) -> String {
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    ids.join(",")
}

/// The ids [`join_ids`] wrote; a record that does not parse is corrupt.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn parse_ids(text: &str) -> Result<Vec<GenerationId>, StoreError> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| GenerationId::parse(s).map_err(|_| StoreError::new("corrupt generation id")))
        .collect()
}

/// The decision shared by every implementation, from a stored record.
pub(crate) fn decide(
    stored_fingerprint: &str,
    started: u64,
    done: Option<(u64, Vec<GenerationId>)>,
    fingerprint: &str,
    now: u64,
) -> Option<Begin> {
    let expired = now.saturating_sub(started) >= KEY_LIFETIME_SECS;
    let abandoned = done.is_none() && now.saturating_sub(started) >= IN_PROGRESS_SECS;
    if expired || abandoned {
        return None;
    }
    Some(if stored_fingerprint != fingerprint {
        Begin::Mismatch
    } else {
        match done {
            Some((created, generations)) => Begin::Done {
                created,
                generations,
            },
            None => Begin::InProgress,
        }
    })
}
