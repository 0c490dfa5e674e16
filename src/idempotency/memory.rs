use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{decide, Begin, IdempotencyRecords};
use crate::auth::UserId;
use crate::id::GenerationId;
use crate::store::StoreError;

#[derive(Debug)]
struct Record {
    fingerprint: String,
    started: u64,
    done: Option<(u64, Vec<GenerationId>)>,
}

/// Idempotency records in memory, for tests and embedding.
#[derive(Debug, Default)]
pub struct MemoryIdempotency {
    records: Mutex<HashMap<(UserId, String), Record>>,
}

impl MemoryIdempotency {
    /// No records.
    pub fn new() -> Self {
        Self::default()
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<(UserId, String), Record>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl IdempotencyRecords for MemoryIdempotency {
    async fn begin(
        &self,
        user: &UserId,
        key: &str,
        fingerprint: &str,
        now: u64,
    ) -> Result<Begin, StoreError> {
        let mut records = self.records();
        let slot = (user.clone(), key.to_owned());
        if let Some(record) = records.get(&slot) {
            if let Some(found) = decide(
                &record.fingerprint,
                record.started,
                record.done.clone(),
                fingerprint,
                now,
            ) {
                return Ok(found);
            }
        }
        records.insert(
            slot,
            Record {
                fingerprint: fingerprint.to_owned(),
                started: now,
                done: None,
            },
        );
        Ok(Begin::New)
    }

    async fn complete(
        &self,
        user: &UserId,
        key: &str,
        created: u64,
        generations: &[GenerationId],
    ) -> Result<(), StoreError> {
        if let Some(record) = self.records().get_mut(&(user.clone(), key.to_owned())) {
            record.done = Some((created, generations.to_vec()));
        }
        Ok(())
    }

    async fn abandon(&self, user: &UserId, key: &str) -> Result<(), StoreError> {
        self.records().remove(&(user.clone(), key.to_owned()));
        Ok(())
    }
}
