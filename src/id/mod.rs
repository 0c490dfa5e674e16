//! The ids the gateway hands out and takes back, each checked once where it enters.
//!
//! - [`RequestId`]: one request, echoed in `x-request-id`.
//! - [`GenerationId`]: one produced image, listed in `picklyone_generation_ids` and accepted
//!   back as `generation_id` (chained edits).
//! - [`JobId`]: one job, sent as `x-job-id` and named by the job API.
//! - [`UserId`]: one account: it owns files, generations and jobs, and pays (checked once,
//!   where a key store or the admin API names it).

mod generation;
mod job;
mod request;
mod user;

pub use generation::GenerationId;
pub use job::JobId;
pub use request::RequestId;
pub use user::{InvalidUserId, UserId};
