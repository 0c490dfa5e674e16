//! The seam to the image model: [`ImageBackend`] turns an [`EditJob`] into images, and
//! [`EditService`], the innermost service, runs it and records what it returned.
//!
//! A backend sees typed values only: the caller, the job's
//! [`operation`](crate::job::EditJob::operation) (an edit, a generation with no sources, or
//! a compose of one to three), the source images and the mask (already fetched and
//! type-checked), and the validated parameters. It never sees HTTP, keys or money. It may
//! return fewer images than `n` (billing charges for what came back), and it reports
//! failures as a [`BackendError`], which the gateway answers per the spec's table:
//!
//! | `BackendError` | answer |
//! |---|---|
//! | `ContentPolicy` | `400 content_policy_violation` |
//! | `UnsupportedSize` | `400 invalid_request` (`param: "size"`), nothing charged |
//! | `InvalidImage` | `400 invalid_request` (`param: "image"`), nothing charged |
//! | `Upstream` | `502 upstream_error`, nothing charged; the detail is logged, not sent |
//!
//! # Example: a backend of your own
//! ```
//! use async_trait::async_trait;
//! use image_gateway::backend::{BackendError, ImageBackend};
//! use image_gateway::job::{EditJob, Image};
//!
//! /// Returns the first source image unchanged, `n` times.
//! struct Echo;
//!
//! #[async_trait]
//! impl ImageBackend for Echo {
//!     async fn edit(&self, job: &EditJob) -> Result<Vec<Image>, BackendError> {
//!         let source = job.sources.first().ok_or_else(|| BackendError::upstream("no source"))?;
//!         let image = Image::new(source.bytes.clone(), job.params.output_format);
//!         Ok(vec![image; job.params.n as usize])
//!     }
//! }
//! ```

#[cfg(feature = "reference-backend")]
mod png;
#[cfg(feature = "reference-backend")]
mod reference;
mod rendered;
mod route;
mod service;
#[cfg(feature = "upstream")]
pub(crate) mod upstream;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

#[cfg(feature = "reference-backend")]
pub use reference::{ReferenceBackend, DEFAULT_DECODE_BUDGET, DEFAULT_MAX_OUTPUT_PIXELS};
#[cfg(all(feature = "upstream", fuzzing))]
pub use upstream::{gemini, sse};
#[cfg(feature = "upstream")]
pub use upstream::{
    StreamEvent, UpstreamBackend, UpstreamBuilder, UpstreamConfigError, DEFAULT_AZURE_API_VERSION,
    DROPPABLE_FIELDS,
};

pub use rendered::Rendered;
pub(crate) use rendered::{Outputs, PENDING_TIMEOUT};
#[cfg(feature = "redis")]
pub use route::RedisRests;
pub use route::{Cooldown, Deployment, PerModel, Rests, RoutedBackend};
pub use service::EditService;

use crate::job::{EditJob, Image, Size};
use crate::GatewayError;

/// Produces images. One required method; hold it as `Arc<dyn ImageBackend>`.
#[async_trait]
pub trait ImageBackend: Send + Sync + 'static {
    /// Runs one job (an edit, a generation or a compose, by `job.operation`). Return at
    /// most `job.params.n` images (extra ones are dropped and not charged); return fewer
    /// when the model produced fewer. A job whose client streams it may show up to
    /// `job.params.partial_images` previews on the way with
    /// [`job.progress.partial`](crate::job::Progress::partial); they are never charged.
    async fn edit(&self, job: &EditJob) -> Result<Vec<Image>, BackendError>;

    /// Runs `job` as [`edit`](Self::edit) does, owning it. The gateway calls this one. A
    /// backend that hands the sources to someone else (an upstream API) overrides it to drop
    /// them once they are sent, instead of keeping megabytes per edit for the minutes a model
    /// takes. The default borrows the job for [`edit`](Self::edit).
    async fn edit_owned(&self, job: EditJob) -> Result<Vec<Image>, BackendError> {
        self.edit(&job).await
    }

    /// Whether work this backend has begun may be abandoned at nobody's cost. When `true`,
    /// a client that leaves before the answer drops the edit's future and is charged
    /// nothing. When `false` (the default), begun work runs to its end, is charged and its
    /// images are kept for the caller.
    ///
    /// Answer `true` only when dropping the future really stops the work **and** nothing
    /// already spent on it is billed to anyone: a model API bills a request it has started
    /// whether or not its answer is read, and work on threads of its own runs on after the
    /// drop, so neither may answer `true`. A job whose client leaves before the backend
    /// was given it is cancelled whatever this answers.
    fn cancellable(&self) -> bool {
        false
    }
}

#[async_trait]
impl<B: ImageBackend + ?Sized> ImageBackend for Arc<B> {
    async fn edit(&self, job: &EditJob) -> Result<Vec<Image>, BackendError> {
        (**self).edit(job).await
    }

    async fn edit_owned(&self, job: EditJob) -> Result<Vec<Image>, BackendError> {
        (**self).edit_owned(job).await
    }

    fn cancellable(&self) -> bool {
        (**self).cancellable()
    }
}

/// Why a backend produced nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendError {
    /// The prompt or image hit moderation.
    ContentPolicy {
        /// The reason, shown to the client.
        message: String,
    },
    /// The model does not produce this size.
    UnsupportedSize {
        /// The size asked for.
        size: Size,
    },
    /// A value of the request this backend (or its provider) does not take: answered
    /// `400 invalid_request` naming `param`, nothing charged, never dropped silently.
    Unsupported {
        /// The request field.
        param: &'static str,
        /// Why, shown to the client.
        message: String,
    },
    /// The source image could not be decoded (its magic number was right, its body not).
    InvalidImage {
        /// The reason, shown to the client.
        message: String,
    },
    /// Anything else: the model failed, timed out or answered nonsense.
    Upstream {
        /// Logged for the operator; never sent to the client.
        detail: String,
        /// What went wrong, for the operator's metrics.
        failure: Failure,
        /// How long the upstream asked not to be called again (its `Retry-After`), when it
        /// said: a deployment's rest lasts at least that long.
        retry_after: Option<Duration>,
    },
}

/// The kind of a [`BackendError::Upstream`]: counted by
/// `image_gateway_backend_errors_total{kind}` so an operator sees a timing-out model apart
/// from one answering errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The model's API answered an error status.
    Status,
    /// The model's API answered that it did not take the work (`429`, `500`, `502`, `503`,
    /// `504`), or could not be reached: another deployment may be asked instead.
    Busy,
    /// No answer in time.
    Timeout,
    /// No connection to the model's API.
    Connect,
    /// No deployment of the model could take the job now (each at its bound or resting):
    /// answered `503 upstream_unavailable` with `Retry-After`.
    Unavailable,
    /// An answer that is not what the API promises (bad JSON, bad base64, no image).
    Malformed,
    /// An answer over the size the gateway reads.
    TooLarge,
    /// Anything else.
    Other,
}

impl BackendError {
    /// Shorthand for [`BackendError::Upstream`] of kind [`Failure::Other`].
    pub fn upstream(detail: impl Into<String>) -> Self {
        BackendError::failed(Failure::Other, detail)
    }

    /// Shorthand for [`BackendError::Upstream`] of the given kind.
    pub fn failed(failure: Failure, detail: impl Into<String>) -> Self {
        BackendError::Upstream {
            detail: detail.into(),
            failure,
            retry_after: None,
        }
    }

    /// The same error with the upstream's `Retry-After`, when it sent one, for an
    /// [`Upstream`](Self::Upstream) one (any other is returned as it is).
    pub fn retry_after(mut self, after: Option<Duration>) -> Self {
        if let BackendError::Upstream { retry_after, .. } = &mut self {
            *retry_after = after.or(*retry_after);
        }
        self
    }

    /// The `kind` label of this error in `image_gateway_backend_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::ContentPolicy { .. } => "content_policy",
            BackendError::UnsupportedSize { .. } => "unsupported_size",
            BackendError::InvalidImage { .. } => "invalid_image",
            BackendError::Unsupported { .. } => "unsupported",
            BackendError::Upstream { failure, .. } => match failure {
                Failure::Status => "upstream_status",
                Failure::Timeout => "upstream_timeout",
                Failure::Connect => "upstream_connect",
                Failure::Busy => "upstream_busy",
                Failure::Unavailable => "upstream_unavailable",
                Failure::Malformed => "upstream_malformed",
                Failure::TooLarge => "upstream_too_large",
                Failure::Other => "other",
            },
        }
    }
}

impl From<BackendError> for GatewayError {
    fn from(error: BackendError) -> Self {
        match error {
            BackendError::ContentPolicy { message } => {
                GatewayError::ContentPolicyViolation { message }
            }
            BackendError::UnsupportedSize { size } => GatewayError::invalid_request(
                format!("size {size} is not supported by this model; nothing was charged"),
                Some("size"),
            ),
            BackendError::Unsupported { param, message } => GatewayError::invalid_request(
                format!("{message}; nothing was charged"),
                Some(param),
            ),
            BackendError::InvalidImage { message } => GatewayError::invalid_request(
                format!("the source image could not be decoded: {message}"),
                Some("image"),
            ),
            BackendError::Upstream {
                failure: Failure::Unavailable,
                ..
            } => GatewayError::UpstreamUnavailable {
                retry_after: std::time::Duration::from_secs(1),
            },
            BackendError::Upstream { .. } => GatewayError::Upstream,
        }
    }
}
