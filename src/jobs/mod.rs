//! Jobs that outlive their connections: a job accepted is either delivered or refunded,
//! whoever still waits for it.
//!
//! A request's work is a job from the moment its hold is taken. A synchronous answer, a
//! stream and an async submission (`Prefer: respond-async`) are three ways to wait for it.
//! An async job answers `202 Accepted` at once and is then read back:
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /v1/images/jobs/{id}` | the job: `queued`, `running`, `succeeded` (with `result`, the synchronous body), `failed` (with `error`), `cancelled` |
//! | `GET /v1/images/jobs?limit=&after=` | the caller's jobs, newest first, without image bytes |
//! | `DELETE /v1/images/jobs/{id}` | a queued job is cancelled (its hold released); a begun or ended one is `409 job_not_cancellable` |
//! | `GET /v1/images/jobs/{id}/events` | the job's stream events, each with an SSE `id:`; `Last-Event-ID` resumes after it |
//!
//! - [`JobRecords`]: where records are kept ([`MemoryJobs`], `SqliteJobs`, your own).
//! - [`JobBoard`]: the records and the jobs running in this process (cancel handles,
//!   event logs); the queue bound and the records' retention.
//! - [`JobApi`]: the endpoints above.
//! - [`WebhookConfig`], `WebhookDeliverer`: an async job's end announced to its
//!   `Webhook-Url`, signed as Standard Webhooks sign, from a durable outbox.

mod api;
mod board;
#[cfg(feature = "fetch")]
mod deliver;
mod events;
#[cfg(feature = "postgres")]
mod postgres;
mod record;
mod rerun;
#[cfg(feature = "sqlite")]
mod sqlite;
mod webhook;

pub(crate) use api::job_json;
pub use api::{JobApi, JOBS_PATH};
pub(crate) use board::Live;
pub use board::{JobBoard, DEFAULT_JOB_LEASE, DEFAULT_JOB_RETENTION, DEFAULT_MAX_QUEUED_JOBS};
#[cfg(feature = "fetch")]
pub use deliver::WebhookDeliverer;
pub(crate) use events::{error_frame, event_stream, EventId, Names};
#[cfg(feature = "postgres")]
pub use postgres::PgJobs;
pub use record::{Delivery, Echo, JobOutput, JobRecord, JobRecords, JobStatus, MemoryJobs};
pub use rerun::{Lease, Rerun};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteJobs;
pub use webhook::{WebhookConfig, WebhookSecretError};

/// How often a silent stream (an answer streamed as it renders, or a job's events) sends a
/// comment, by default: under the 30-60 s idle cut-off of common proxies.
pub const DEFAULT_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);
