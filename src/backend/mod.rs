//! The seam to the image model: [`ImageBackend`] turns an [`EditJob`] into images.
//!
//! A backend sees typed values only: the caller, the source images (already fetched and
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
//! use image_gateway::backend::{BackendError, EditJob, Image, ImageBackend};
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
#[cfg(feature = "upstream")]
mod upstream;

use async_trait::async_trait;
use bytes::Bytes;

#[cfg(feature = "reference-backend")]
pub use reference::{ReferenceBackend, DEFAULT_DECODE_BUDGET, DEFAULT_MAX_OUTPUT_PIXELS};
#[cfg(feature = "upstream")]
pub use upstream::{UpstreamBackend, UpstreamBuilder, UpstreamConfigError};

use crate::auth::Principal;
use crate::lease::{ClientWatch, Leases};
use crate::request::{EditParams, OutputFormat, Size, SourceImage};
use crate::store::FileKey;
use crate::GatewayError;

/// Produces edited images. One required method; hold it as `Arc<dyn ImageBackend>`.
#[async_trait]
pub trait ImageBackend: Send + Sync + 'static {
    /// Runs one edit. Return at most `job.params.n` images (extra ones are dropped and not
    /// charged); return fewer when the model produced fewer.
    async fn edit(&self, job: &EditJob) -> Result<Vec<Image>, BackendError>;

    /// Whether dropping the future of [`edit`](Self::edit) stops the work (an HTTP call that
    /// is cut off, a timer). When `true`, a client that hangs up before the answer cancels
    /// the edit and is charged nothing. When `false` (the default, and the only safe answer
    /// for work on threads of its own), the edit runs to its end and is charged.
    fn cancellable(&self) -> bool {
        false
    }
}

/// One edit, ready for a backend.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EditJob {
    /// Who asked.
    pub principal: Principal,
    /// The source images, at least one, in the order the client gave them.
    pub sources: Vec<SourceImage>,
    /// The validated parameters.
    pub params: EditParams,
    /// The keys the sources are stored under (informational; empty when not stored).
    pub source_keys: Vec<FileKey>,
    /// The id of the HTTP request this job serves, for logs and usage records.
    pub request_id: String,
    /// What stays taken while the job runs (the caller's in-flight slot); dropped with it.
    pub leases: Leases,
    /// Whether the client still waits for the answer.
    pub client: ClientWatch,
    /// Whether the sources came in the request and are still to be stored under
    /// `source_keys` (by the edit, after its hold).
    pub(crate) store_sources: bool,
}

impl EditJob {
    /// A job for `principal` over `sources`.
    pub fn new(principal: Principal, sources: Vec<SourceImage>, params: EditParams) -> Self {
        EditJob {
            principal,
            sources,
            params,
            source_keys: Vec::new(),
            request_id: String::new(),
            leases: Leases::default(),
            client: ClientWatch::default(),
            store_sources: false,
        }
    }
}

/// One produced image, encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Image {
    /// The encoded file.
    pub bytes: Bytes,
    /// Its encoding.
    pub format: OutputFormat,
}

impl Image {
    /// An image of the given encoding.
    pub fn new(bytes: Bytes, format: OutputFormat) -> Self {
        Image { bytes, format }
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
    /// The source image could not be decoded (its magic number was right, its body not).
    InvalidImage {
        /// The reason, shown to the client.
        message: String,
    },
    /// Anything else: the model failed, timed out or answered nonsense.
    Upstream {
        /// Logged for the operator; never sent to the client.
        detail: String,
    },
}

impl BackendError {
    /// Shorthand for [`BackendError::Upstream`].
    pub fn upstream(detail: impl Into<String>) -> Self {
        BackendError::Upstream {
            detail: detail.into(),
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
            BackendError::InvalidImage { message } => GatewayError::invalid_request(
                format!("the source image could not be decoded: {message}"),
                Some("image"),
            ),
            BackendError::Upstream { detail } => {
                tracing::warn!(%detail, "image backend failed");
                GatewayError::Upstream
            }
        }
    }
}
