//! The wall clock, in the unit every record of the gateway keeps: Unix seconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// The current time in Unix seconds, as the ledger, the stores and generation records count
/// it. A clock set before 1970 reads 0 rather than failing.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where a store reads the time its records keep: the system clock (the default), or a
/// clock its owner sets, for whoever needs records ordered in time without waiting for the
/// wall clock's next second (a test of newest-first listing). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Clock(Option<std::sync::Arc<std::sync::atomic::AtomicU64>>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock(None)
    }

    /// A clock that reads `time` (Unix seconds), moved only by whoever holds it.
    pub fn manual(time: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        Clock(Some(time))
    }

    /// The time, in Unix seconds.
    pub fn now(&self) -> u64 {
        match &self.0 {
            Some(time) => time.load(std::sync::atomic::Ordering::Acquire),
            None => unix_now(),
        }
    }
}
