//! One job, from the validated request to what its client is answered: the types every layer
//! passes down and up, kept below all of them.
//!
//! ```text
//! EditRequest (request) -> EditJob (backend) -> Rendered (not reachable) -> EditOutcome (answer)
//! ```
//!
//! - [`EditRequest`]: who asks, from which [`Source`], with which [`EditParams`]; what
//!   normalization hands inward.
//! - [`EditJob`]: the same edit with its sources fetched: what an
//!   [`ImageBackend`](crate::backend::ImageBackend) sees.
//! - [`Rendered`]: the images a backend returned, recorded but not reachable until billing
//!   has charged for them; [`Rendered::publish`] makes them an [`EditOutcome`].
//!
//! A job's [`Source`] says where its images come from; an edit has one source (or several
//! uploaded files), and that is the variant point for jobs with none (a generation) or a
//! few references (a compose).

mod outcome;
mod params;
mod rendered;

use std::future::Future;

use bytes::Bytes;
use tower_service::Service;

pub use outcome::{EditOutcome, GeneratedImage};
pub use params::{
    parse_n, parse_prompt, Background, OutputFormat, Quality, ResponseFormat, Size,
    MAX_PROMPT_CHARS,
};
pub(crate) use rendered::Outputs;
pub use rendered::Rendered;

/// A service of the edit pipeline: takes `Req` (an [`EditRequest`] or an [`EditJob`]),
/// answers `Res` or a [`GatewayError`], is cloned per call, and its futures move between
/// tasks. Every such `tower::Service` is one, so each layer states its inner service's bound
/// once, by name.
pub trait Stage<Req, Res>:
    Service<Req, Response = Res, Error = GatewayError, Future = Self::SendFuture>
    + Clone
    + Send
    + 'static
{
    /// The service's future, which is `Send`.
    type SendFuture: Future<Output = Result<Res, GatewayError>> + Send;
}

impl<S, Req, Res> Stage<Req, Res> for S
where
    S: Service<Req, Response = Res, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type SendFuture = S::Future;
}

use crate::auth::Principal;
use crate::id::{GenerationId, RequestId};
use crate::lease::{ClientWatch, Leases};
use crate::media::ImageKind;
use crate::store::FileKey;
use crate::GatewayError;

/// What is known of a request before its body is read: who asks, which request it is, and
/// what its work carries to its end. Built once, by normalization, and moved into the
/// [`EditRequest`] that the body's fields complete.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RequestContext {
    /// Who asked (and pays).
    pub principal: Principal,
    /// The request's id (`x-request-id`, honoured or generated).
    pub request_id: RequestId,
    /// The client's `Idempotency-Key`, if it sent one.
    pub idempotency_key: Option<String>,
    /// What must stay taken until the edit's work ends (the caller's in-flight slot).
    pub leases: Leases,
    /// Whether the client still waits for the answer.
    pub client: ClientWatch,
}

impl RequestContext {
    /// The context of a request of `principal` known by `request_id`, with no idempotency
    /// key, nothing leased and no client to watch.
    pub fn new(principal: Principal, request_id: RequestId) -> Self {
        RequestContext {
            principal,
            request_id,
            idempotency_key: None,
            leases: Leases::default(),
            client: ClientWatch::default(),
        }
    }
}

impl From<Principal> for RequestContext {
    /// A context with a fresh request id (tests, fuzzing, benchmarks).
    fn from(principal: Principal) -> Self {
        RequestContext::new(principal, RequestId::new())
    }
}

/// One image edit, as the client asked for it, validated.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EditRequest {
    /// Who asked (and pays).
    pub principal: Principal,
    /// Where the source image comes from.
    pub source: Source,
    /// Everything else the client chose.
    pub params: EditParams,
    /// The request's id (`x-request-id`, honoured or generated).
    pub request_id: RequestId,
    /// The client's `Idempotency-Key`, if it sent one.
    pub idempotency_key: Option<String>,
    /// What must stay taken until the edit's work ends (the caller's in-flight slot).
    pub leases: Leases,
    /// Whether the client still waits for the answer.
    pub client: ClientWatch,
}

impl EditRequest {
    /// The edit of `source` with `params`, asked in `context`.
    pub fn new(context: RequestContext, source: Source, params: EditParams) -> Self {
        let RequestContext {
            principal,
            request_id,
            idempotency_key,
            leases,
            client,
        } = context;
        EditRequest {
            principal,
            source,
            params,
            request_id,
            idempotency_key,
            leases,
            client,
        }
    }

    /// The job of this edit over its resolved `sources`; `uploads` are the keys the sources
    /// are to be stored under (multipart sources, stored by the edit once its hold is
    /// taken), empty when they are stored already.
    pub(crate) fn into_job(self, sources: Vec<SourceImage>, uploads: Vec<FileKey>) -> EditJob {
        EditJob {
            principal: self.principal,
            sources,
            params: self.params,
            request_id: self.request_id,
            leases: self.leases,
            client: self.client,
            uploads,
        }
    }

    /// A SHA-256 over everything the request asks for: parameters and the source (its key,
    /// its generation id, or the digest of each uploaded image). Two requests with the same
    /// fingerprint ask for the same edit.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let p = &self.params;
        let mut hash = Sha256::new();
        for field in [
            p.model.as_str(),
            p.prompt.as_str(),
            &p.n.to_string(),
            &p.size.to_string(),
            p.quality.as_str(),
            p.background.as_str(),
            p.output_format.as_str(),
        ] {
            // Length-prefixed so no two field lists hash alike by shifting a boundary.
            hash.update((field.len() as u64).to_le_bytes());
            hash.update(field.as_bytes());
        }
        match &self.source {
            Source::ImageKey(key) => hash.update(format!("key:{key}")),
            Source::Generation(id) => hash.update(format!("generation:{id}")),
            Source::Upload(images) => {
                for image in images {
                    hash.update(b"upload:");
                    hash.update(Sha256::digest(&image.bytes));
                }
            }
        }
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The parameters of an edit, shared by [`EditRequest`] and the backend's
/// [`EditJob`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EditParams {
    /// A model of the gateway's catalog.
    pub model: String,
    /// The edit instruction: not blank, at most 32,000 characters.
    pub prompt: String,
    /// How many images to return: `1..=` the model's maximum.
    pub n: u32,
    /// Output dimensions.
    pub size: Size,
    /// Rendering quality.
    pub quality: Quality,
    /// Background handling.
    pub background: Background,
    /// Encoding of the returned images.
    pub output_format: OutputFormat,
}

impl EditParams {
    /// Parameters for `model` and `prompt` with every optional field at its default.
    pub fn new(model: impl Into<String>, prompt: impl Into<String>) -> Self {
        EditParams {
            model: model.into(),
            prompt: prompt.into(),
            n: 1,
            size: Size::Auto,
            quality: Quality::Auto,
            background: Background::Auto,
            output_format: OutputFormat::Png,
        }
    }
}

/// The one source an edit starts from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A file the caller uploaded before (JSON method).
    ImageKey(FileKey),
    /// An image a previous call produced (chained edits).
    Generation(GenerationId),
    /// Image files sent in the request itself (multipart method), in the order received.
    Upload(Vec<SourceImage>),
}

/// Image bytes whose type was checked by their magic number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceImage {
    /// The whole file.
    pub bytes: Bytes,
    /// The type the bytes show.
    pub kind: ImageKind,
    /// The file name the client gave, if any (informational only).
    pub filename: Option<String>,
}

impl SourceImage {
    /// A fresh key for storing this image as an upload of `owner`:
    /// `files/{owner}/{uuid}_{sanitised file name}` (`upload.{ext}` when it has no name).
    pub fn upload_key(&self, owner: &crate::auth::UserId) -> FileKey {
        FileKey::new(owner, uuid::Uuid::new_v4(), &self.name())
    }

    /// The file name the client gave, or `upload.{ext}`.
    pub fn name(&self) -> String {
        self.filename
            .clone()
            .unwrap_or_else(|| format!("upload.{}", self.kind.extension()))
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
    /// The id of the HTTP request this job serves, for logs and usage records.
    pub request_id: RequestId,
    /// What stays taken while the job runs (the caller's in-flight slot); dropped with it.
    pub leases: Leases,
    /// Whether the client still waits for the answer.
    pub client: ClientWatch,
    /// Keys to store the sources under before the backend runs (multipart sources, which
    /// the edit stores once its hold is taken); empty when they are stored already.
    pub(crate) uploads: Vec<FileKey>,
}

impl EditJob {
    /// A job for `principal` over `sources`, outside any HTTP request (a backend's own
    /// tests, a batch run): a fresh request id, nothing leased, nothing to store.
    pub fn new(principal: Principal, sources: Vec<SourceImage>, params: EditParams) -> Self {
        EditRequest::new(principal.into(), Source::Upload(Vec::new()), params)
            .into_job(sources, Vec::new())
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
