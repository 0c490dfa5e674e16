//! The ids the gateway hands out and takes back, each checked once where it enters.
//!
//! - [`RequestId`]: one request, echoed in `x-request-id`.
//! - [`GenerationId`]: one produced image, listed in `picklyone_generation_ids` and accepted
//!   back as `generation_id` (chained edits).
//! - [`JobId`]: one job, sent as `x-job-id` and named by the job API.

mod generation;
mod job;
mod request;

pub use generation::GenerationId;
pub use job::JobId;
pub use request::RequestId;
