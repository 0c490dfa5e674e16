//! One job, from the validated request to what its client is answered: the types every layer
//! passes down and up, kept below all of them.
//!
//! ```text
//! EditRequest (request) -> EditJob (backend) -> Rendered (not reachable) -> EditOutcome (answer)
//! ```
//!
//! - [`EditRequest`]: who asks, for which [`Operation`], over which [`Reference`]s, with
//!   which [`EditParams`]; what normalization hands inward.
//! - [`EditJob`]: the same edit with its sources fetched: what an
//!   [`ImageBackend`](crate::backend::ImageBackend) sees.
//! - [`Rendered`](crate::backend::Rendered): the images a backend returned, recorded but not
//!   reachable until billing has charged for them; its `publish` (beside the
//!   [`EditService`](crate::backend::EditService) that records them) makes them an
//!   [`EditOutcome`].
//!
//! A job's [`Operation`] says which endpoint asked for it, and its [`Reference`]s where its
//! images come from: an edit has one or more (and perhaps a mask), a generation none, a
//! compose one to three.

mod outcome;
mod params;
mod progress;
mod remote;
mod source;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use tower_service::Service;

pub use outcome::{EditOutcome, GeneratedImage};
pub(crate) use params::{parse_flag, parse_integer, parse_token};
pub use params::{
    parse_n, parse_prompt, AspectRatio, Background, OutputFormat, Quality, ResponseFormat, Size,
    MAX_PARTIAL_IMAGES, MAX_PROMPT_CHARS,
};
pub use progress::{Progress, Step, Ticket};
pub use remote::{RemoteUrl, MAX_URL_LEN};
pub use source::{Operation, Reference, SourceImage};

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
use crate::id::RequestId;
use crate::lease::{ClientWatch, Leases};
use crate::ledger::HoldId;
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
    /// Where a streamed request's steps go.
    pub progress: Progress,
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
            progress: Progress::default(),
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
    /// Which endpoint asked.
    pub operation: Operation,
    /// Where the source images come from, in the client's order (none for a generation).
    pub sources: Vec<Reference>,
    /// The mask of an edit: its transparent pixels mark where to edit.
    pub mask: Option<Reference>,
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
    /// Where a streamed request's steps go.
    pub progress: Progress,
    /// The hold of an earlier run of this job, which a run again (its process died) takes
    /// over instead of holding anew.
    pub(crate) resume: Option<HoldId>,
    /// Whether its images reach their owner only through the store (an async job, read
    /// back through the job API), not in an answer: they are then stored before the job
    /// ends, and refunded if they never are.
    pub(crate) by_store: bool,
}

impl EditRequest {
    /// The `operation` over `sources` with `params`, asked in `context`, without a mask.
    pub fn new(
        context: RequestContext,
        operation: Operation,
        sources: Vec<Reference>,
        params: EditParams,
    ) -> Self {
        let RequestContext {
            principal,
            request_id,
            idempotency_key,
            leases,
            client,
            progress,
        } = context;
        EditRequest {
            principal,
            operation,
            sources,
            mask: None,
            params,
            request_id,
            idempotency_key,
            leases,
            client,
            progress,
            resume: None,
            by_store: false,
        }
    }

    /// The same request run again under `hold`, taken by an earlier run of it (an async
    /// job's).
    pub(crate) fn resuming(mut self, hold: HoldId) -> Self {
        self.resume = Some(hold);
        self.by_store = true;
        self
    }

    /// The job of this request over its resolved `sources` and `mask`, stored under `keys`;
    /// `uploads` are the inline images to store as the caller's files once the hold is
    /// taken.
    pub(crate) fn into_job(
        self,
        (sources, mask): (Vec<SourceImage>, Option<SourceImage>),
        keys: (Vec<FileKey>, Option<FileKey>),
        uploads: Vec<(FileKey, Bytes)>,
    ) -> EditJob {
        EditJob {
            principal: self.principal,
            operation: self.operation,
            sources,
            mask,
            params: self.params,
            request_id: self.request_id,
            leases: self.leases,
            client: self.client,
            progress: self.progress,
            uploads,
            keys,
            resume: self.resume,
            hold: None,
            by_store: self.by_store,
            served_by: ServedBy::default(),
        }
    }

    /// A SHA-256 over everything the request asks for: the operation, the parameters, each
    /// source and the mask (a key, a generation id, a URL, or the digest of inline bytes).
    /// Two requests with the same fingerprint ask for the same work.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let p = &self.params;
        let mut hash = Sha256::new();
        let optional = |v: &Option<String>| v.clone().unwrap_or_default();
        for field in [
            self.operation.as_str(),
            p.model.as_str(),
            p.prompt.as_str(),
            &p.n.to_string(),
            &p.size.to_string(),
            p.quality.as_str(),
            p.background.as_str(),
            p.output_format.as_str(),
            &p.output_compression
                .map(|c| c.to_string())
                .unwrap_or_default(),
            &optional(&p.moderation),
            &optional(&p.input_fidelity),
            &optional(&p.user),
            &p.partial_images.to_string(),
            if p.stream { "stream" } else { "" },
        ] {
            // Length-prefixed so no two field lists hash alike by shifting a boundary.
            hash.update((field.len() as u64).to_le_bytes());
            hash.update(field.as_bytes());
        }
        for source in &self.sources {
            source.fingerprint(&mut hash);
        }
        if let Some(mask) = &self.mask {
            hash.update(b"mask:");
            mask.fingerprint(&mut hash);
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
    /// JPEG or WebP compression, 0-100, when the client set it.
    pub output_compression: Option<u8>,
    /// The moderation level the client asked the model for (`auto`, `low`, ...).
    pub moderation: Option<String>,
    /// How closely an edit keeps the input's features (`high`, `low`).
    pub input_fidelity: Option<String>,
    /// The end user the client named, passed on for the model's abuse monitoring.
    pub user: Option<String>,
    /// How many partial images a streamed job shows before each final one (0-3).
    pub partial_images: u8,
    /// Whether the answer is a stream of server-sent events.
    pub stream: bool,
}

impl EditParams {
    /// Parameters for `model` and `prompt` with every optional field at its default.
    pub fn new(model: impl Into<String>, prompt: impl Into<String>) -> Self {
        EditParams {
            model: model.into(),
            prompt: prompt.into(),
            n: 1,
            size: Size::Auto,
            quality: Quality::auto(),
            background: Background::Auto,
            output_format: OutputFormat::Png,
            output_compression: None,
            moderation: None,
            input_fidelity: None,
            user: None,
            partial_images: 0,
            stream: false,
        }
    }
}

/// One edit, ready for a backend.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EditJob {
    /// Who asked.
    pub principal: Principal,
    /// Which endpoint asked.
    pub operation: Operation,
    /// The source images, in the order the client gave them: at least one for an edit or a
    /// compose, none for a generation.
    pub sources: Vec<SourceImage>,
    /// An edit's mask: where its alpha is zero is the area to edit.
    pub mask: Option<SourceImage>,
    /// The validated parameters.
    pub params: EditParams,
    /// The id of the HTTP request this job serves, for logs and usage records.
    pub request_id: RequestId,
    /// What stays taken while the job runs (the caller's in-flight slot); dropped with it.
    pub leases: Leases,
    /// Whether the client still waits for the answer.
    pub client: ClientWatch,
    /// Where the job shows its partial images, when its client streams them.
    pub progress: Progress,
    /// Inline images (multipart files, data URIs) to store as the caller's uploads before
    /// the backend runs, once the hold is taken; empty when every source is stored already.
    pub(crate) uploads: Vec<(FileKey, Bytes)>,
    /// The keys its sources and mask are (or, for uploads, will be) stored under.
    pub(crate) keys: (Vec<FileKey>, Option<FileKey>),
    /// The hold of an earlier run, taken over by this one.
    pub(crate) resume: Option<HoldId>,
    /// The hold this job runs under, once billing took it.
    pub(crate) hold: Option<HoldId>,
    /// See [`EditRequest`]'s field of the name.
    pub(crate) by_store: bool,
    /// Which upstream deployment rendered the job, when a routing backend named it.
    pub served_by: ServedBy,
}

/// The name of the upstream deployment that rendered a job: set by a backend that routes
/// over several ([`RoutedBackend`](crate::backend::RoutedBackend) sets it on each attempt,
/// so it names the last), read by billing into the settle's journal entry (the usage log's
/// `upstream`). Clones share it, as clones of a job are the same job.
#[derive(Clone, Debug, Default)]
pub struct ServedBy(Arc<std::sync::Mutex<Option<Arc<str>>>>);

impl ServedBy {
    /// Names `deployment` as the one rendering.
    pub fn set(&self, deployment: Arc<str>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(deployment);
    }

    /// The deployment named last, if any.
    pub fn get(&self) -> Option<Arc<str>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl EditJob {
    /// An edit for `principal` over `sources`, outside any HTTP request (a backend's own
    /// tests, a batch run): a fresh request id, nothing leased, nothing to store.
    pub fn new(principal: Principal, sources: Vec<SourceImage>, params: EditParams) -> Self {
        EditRequest::new(principal.into(), Operation::Edit, Vec::new(), params).into_job(
            (sources, None),
            (Vec::new(), None),
            Vec::new(),
        )
    }

    /// The same job as another operation (a generation has no sources).
    pub fn with_operation(mut self, operation: Operation) -> Self {
        self.operation = operation;
        self
    }

    /// The same job with `mask`.
    pub fn with_mask(mut self, mask: SourceImage) -> Self {
        self.mask = Some(mask);
        self
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

    /// A stored output read back, its encoding told by its bytes (PNG when they tell none).
    pub fn stored(bytes: Bytes) -> Self {
        let format = match crate::media::ImageKind::sniff(&bytes) {
            Some(crate::media::ImageKind::Jpeg) => OutputFormat::Jpeg,
            Some(crate::media::ImageKind::Webp) => OutputFormat::Webp,
            _ => OutputFormat::Png,
        };
        Image::new(bytes, format)
    }
}
