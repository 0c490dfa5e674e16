//! The records of generations: each produced image's id, owner, file key, whether its bytes
//! are durable yet ([`GenerationStatus::Pending`] until the store has them) and the hold it
//! was charged under when it reaches its owner only through the store.
//!
//! Shipped: [`MemoryGenerations`], and with features [`SqliteGenerations`] (`sqlite`) and
//! [`PgGenerations`] (`postgres`). Your own: implement [`Generations`].

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

#[cfg(feature = "postgres")]
pub use postgres::PgGenerations;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteGenerations;

use crate::auth::UserId;
use crate::id::GenerationId;
use crate::ledger::HoldId;
use crate::store::{FileKey, StoreError};

/// Whether a generation's bytes are durable yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenerationStatus {
    /// Recorded; its bytes are still being stored. Asked for now: `409 generation_not_ready`.
    Pending,
    /// Its bytes are in the file store.
    Ready,
    /// Storing its bytes failed; it will never be ready.
    Failed,
}

impl GenerationStatus {
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GenerationStatus::Pending => "pending",
            GenerationStatus::Ready => "ready",
            GenerationStatus::Failed => "failed",
        }
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(GenerationStatus::Pending),
            "ready" => Some(GenerationStatus::Ready),
            "failed" => Some(GenerationStatus::Failed),
            _ => None,
        }
    }
}

/// The record of one produced image.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Generation {
    /// Its id, as listed in `picklyone_generation_ids`.
    pub id: GenerationId,
    /// The user who produced (and paid for) it.
    pub owner: UserId,
    /// Where its bytes are (or will be) stored.
    pub file_key: FileKey,
    /// Whether they are there yet.
    pub status: GenerationStatus,
    /// Unix seconds at which it was recorded.
    pub created: u64,
    /// The hold it was charged under: a pending generation whose bytes never reached the
    /// store is refunded its share of that hold's charge.
    pub hold: Option<HoldId>,
}

impl Generation {
    /// A record of a generation owned by its file key's owner.
    pub fn new(
        id: GenerationId,
        file_key: FileKey,
        status: GenerationStatus,
        created: u64,
    ) -> Self {
        Generation {
            id,
            owner: file_key.owner().clone(),
            file_key,
            status,
            created,
            hold: None,
        }
    }

    /// The same record, charged under `hold`.
    pub fn charged_under(mut self, hold: Option<HoldId>) -> Self {
        self.hold = hold;
        self
    }
}

/// Generation id -> record. Implementations must make `insert` and `set_status` durable
/// before they return, so a chain survives a restart.
#[async_trait]
pub trait Generations: Send + Sync + 'static {
    /// Records a new generation.
    async fn insert(&self, generation: &Generation) -> Result<(), StoreError>;

    /// Moves a generation to `status`.
    async fn set_status(
        &self,
        id: GenerationId,
        status: GenerationStatus,
    ) -> Result<(), StoreError>;

    /// The record, or `None` if there is none.
    async fn get(&self, id: GenerationId) -> Result<Option<Generation>, StoreError>;

    /// Up to `limit` pending generations recorded at or before `before` (Unix seconds),
    /// oldest first: those whose storage a process that died cut short (or, the newest,
    /// still under way). The gateway's sweep ends them. The default finds none: such
    /// records then stay pending, and their charges stand.
    async fn pending(&self, before: u64, limit: usize) -> Result<Vec<Generation>, StoreError> {
        let _ = (before, limit);
        Ok(Vec::new())
    }

    /// The generations charged under `hold` (those of a job delivered only through the
    /// store), whatever their status. The gateway asks it of an async job whose process
    /// died after its settle, to finish the job with the images that were stored. The
    /// default finds none: such a job then ends failed, its images listed and charged.
    async fn under_hold(&self, hold: HoldId) -> Result<Vec<Generation>, StoreError> {
        let _ = hold;
        Ok(Vec::new())
    }
}

#[async_trait]
impl<G: Generations + ?Sized> Generations for Arc<G> {
    async fn insert(&self, generation: &Generation) -> Result<(), StoreError> {
        (**self).insert(generation).await
    }

    async fn set_status(
        &self,
        id: GenerationId,
        status: GenerationStatus,
    ) -> Result<(), StoreError> {
        (**self).set_status(id, status).await
    }

    async fn get(&self, id: GenerationId) -> Result<Option<Generation>, StoreError> {
        (**self).get(id).await
    }

    async fn pending(&self, before: u64, limit: usize) -> Result<Vec<Generation>, StoreError> {
        (**self).pending(before, limit).await
    }

    async fn under_hold(&self, hold: HoldId) -> Result<Vec<Generation>, StoreError> {
        (**self).under_hold(hold).await
    }
}

/// Generations in memory, for tests and embedding.
#[derive(Debug, Default)]
pub struct MemoryGenerations {
    records: Mutex<HashMap<GenerationId, Generation>>,
}

impl MemoryGenerations {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<GenerationId, Generation>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Generations for MemoryGenerations {
    async fn insert(&self, generation: &Generation) -> Result<(), StoreError> {
        self.records().insert(generation.id, generation.clone());
        Ok(())
    }

    async fn set_status(
        &self,
        id: GenerationId,
        status: GenerationStatus,
    ) -> Result<(), StoreError> {
        if let Some(record) = self.records().get_mut(&id) {
            record.status = status;
        }
        Ok(())
    }

    async fn get(&self, id: GenerationId) -> Result<Option<Generation>, StoreError> {
        Ok(self.records().get(&id).cloned())
    }

    async fn pending(&self, before: u64, limit: usize) -> Result<Vec<Generation>, StoreError> {
        let mut pending: Vec<Generation> = self
            .records()
            .values()
            .filter(|g| g.status == GenerationStatus::Pending && g.created <= before)
            .cloned()
            .collect();
        pending.sort_by_key(|g| g.created);
        pending.truncate(limit);
        Ok(pending)
    }

    async fn under_hold(&self, hold: HoldId) -> Result<Vec<Generation>, StoreError> {
        let records = self.records();
        let under = records.values().filter(|g| g.hold == Some(hold));
        Ok(under.cloned().collect())
    }
}
