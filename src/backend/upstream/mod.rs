//! An [`ImageBackend`] that forwards edits to any OpenAI-compatible images API.

mod answer;
mod form;
// Public to the fuzz targets only, as `sse` is.
#[cfg(fuzzing)]
pub mod gemini;
#[cfg(not(fuzzing))]
pub(crate) mod gemini;
// Public to the fuzz targets only (`--cfg fuzzing`, as cargo-fuzz builds): an upstream's
// event stream is untrusted input, but its reader is no part of the crate's API.
#[cfg(fuzzing)]
pub mod sse;
#[cfg(not(fuzzing))]
pub(crate) mod sse;

pub use answer::StreamEvent;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Client, StatusCode, Url};
use tokio::sync::oneshot;

use super::{BackendError, Failure, ImageBackend};
use crate::job::{EditJob, EditParams, Image, Operation, SourceImage};
use form::Form;

/// The largest upstream answer read (a JSON body of base64 images, or one image by URL).
const MAX_ANSWER_BYTES: usize = 128 * 1024 * 1024;
/// The pause before the one retry of a request that never reached the upstream's model.
const RETRY_BACKOFF: Duration = Duration::from_millis(250);
/// How long the sources are kept for that retry once the request body has been sent. A
/// refusal by a proxy in front of the model (502, 503) comes within it; past it the model is
/// at work, the sources are dropped, and a late 502 or 503 is answered as it is.
const RETRY_WINDOW: Duration = Duration::from_secs(2);

/// Forwards each job as the official OpenAI SDK sends it. An edit or a compose is multipart
/// `POST {base}/v1/images/edits` with `image` (one source) or repeated `image[]` (several),
/// `mask` when the edit has one, `model` (mapped), `prompt`, `n`, `size`, `quality`,
/// `background`, `output_format`, and, when the client set them, `output_compression`,
/// `moderation`, `input_fidelity` and `user`. A generation is JSON
/// `POST {base}/v1/images/generations` with the same fields (no images, no
/// `input_fidelity`).
///
/// # Outcomes
/// | upstream | backend result |
/// |---|---|
/// | images as `b64_json` | those images (fewer than `n` is fine: billing charges what came) |
/// | images as `url` | each fetched (at most 128 MiB in all) and returned as bytes |
/// | 400 with a moderation code | [`BackendError::ContentPolicy`] |
/// | 400 blaming `size` | [`BackendError::UnsupportedSize`] (refunded) |
/// | any other status, a timeout, a connection error, a malformed body | [`BackendError::Upstream`] |
///
/// A request that fails to connect, or is answered 502 or 503 within two seconds of its body
/// having been sent, is sent once more after a short pause; nothing else is retried, so an
/// upstream never produces images twice for one edit. Past those two seconds the backend
/// holds no copy of the job's images: an edit waiting minutes on a model keeps none (through
/// [`ImageBackend::edit_owned`], which the gateway calls). A generation, which sends no
/// image, is retried on a 502 or 503 whenever it comes. Upstream messages, its URL and its
/// key never reach the client: an `Upstream` error's detail is for the operator's log only.
///
/// Dropping the edit future (the client went away) drops the HTTP request, which closes the
/// connection to the upstream.
///
/// Upstream models named `gpt-image-*` always answer `b64_json` and refuse
/// `response_format`, so it is only sent to other models.
#[derive(Clone)]
pub struct UpstreamBackend {
    client: Client,
    endpoint: Url,
    generations: Url,
    api_key: Option<String>,
    models: HashMap<String, String>,
    provider: Provider,
    /// Fields never sent to this upstream (its operator's `drop_fields`).
    dropped: Vec<&'static str>,
}

/// The fields an operator may keep from an upstream that rejects them
/// ([`UpstreamBuilder::drop_fields`]): the optional ones. The prompt, `n`, the images, the
/// model and the stream fields are the request itself and are always sent.
pub const DROPPABLE_FIELDS: [&str; 9] = [
    "size",
    "quality",
    "background",
    "output_format",
    "output_compression",
    "moderation",
    "user",
    "input_fidelity",
    "response_format",
];

/// The shape of the upstream's API.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Provider {
    /// OpenAI's: `{base}/v1/images/...`, `Authorization: Bearer`, `model` in the body.
    OpenAi,
    /// Azure OpenAI's deployment API: `{deployment URL}/images/...?api-version=`, an
    /// `api-key` header, the model named by the deployment. What differs for the GPT image
    /// models (Microsoft's "dall-e" how-to, api-version `2025-04-01-preview`): no
    /// `response_format`, no WebP, three sizes.
    Azure,
    /// Gemini's `generateContent` (API `v1beta`): `{base}/v1beta/models/{model}:generateContent`,
    /// an `x-goog-api-key` header, one image per call; see [`gemini`] for each field's fate.
    Gemini,
}

/// The API shape an [`UpstreamBuilder`] was told to speak.
#[derive(Debug)]
enum Shape {
    OpenAi,
    Azure { api_version: String },
    Gemini,
}

/// The sizes Azure OpenAI's GPT image models take (besides `auto`).
const AZURE_SIZES: [&str; 3] = ["1024x1024", "1024x1536", "1536x1024"];

/// The api-version used with Azure when none is set: the first with GPT image models.
pub const DEFAULT_AZURE_API_VERSION: &str = "2025-04-01-preview";

impl fmt::Debug for UpstreamBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Neither the URL (it may hold credentials) nor the key is printed.
        f.debug_struct("UpstreamBackend")
            .field("models", &self.models)
            .finish_non_exhaustive()
    }
}

/// Settings of an [`UpstreamBackend`].
#[derive(Debug)]
pub struct UpstreamBuilder {
    base: String,
    api_key: Option<String>,
    models: HashMap<String, String>,
    connect_timeout: Duration,
    timeout: Duration,
    shape: Shape,
    drop_fields: Vec<String>,
}

/// Why an [`UpstreamBackend`] could not be built.
#[derive(Debug)]
pub struct UpstreamConfigError(String);

impl fmt::Display for UpstreamConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UpstreamConfigError {}

impl UpstreamBuilder {
    /// The upstream's API key, sent as `Authorization: Bearer`. Default: none.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Forwards the gateway model `gateway` as `upstream`. Models without a mapping are
    /// forwarded under their own name.
    pub fn model(mut self, gateway: impl Into<String>, upstream: impl Into<String>) -> Self {
        self.models.insert(gateway.into(), upstream.into());
        self
    }

    /// How long connecting may take. Default: 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one upstream call may take, from connect to the last byte. Default: 300 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Speaks Azure OpenAI's deployment API: the base is the deployment's URL
    /// (`https://{resource}.openai.azure.com/openai/deployments/{deployment}`), calls go to
    /// `{base}/images/edits` and `/images/generations` with `?api-version={api_version}`,
    /// the key as the `api-key` header, and the deployment names the model.
    pub fn azure(mut self, api_version: impl Into<String>) -> Self {
        self.shape = Shape::Azure {
            api_version: api_version.into(),
        };
        self
    }

    /// Speaks the Gemini API's `generateContent` (`v1beta`): the base is the API's root
    /// (`https://generativelanguage.googleapis.com`, with or without `/v1beta`), each call
    /// goes to `{base}/v1beta/models/{model}:generateContent` with the key as the
    /// `x-goog-api-key` header, and a job of `n` images is `n` calls. What each OpenAI field
    /// becomes, or why it is refused, is in the `gemini` module's table.
    pub fn gemini(mut self) -> Self {
        self.shape = Shape::Gemini;
        self
    }

    /// Never sends `names` to this upstream, whatever the request asks: for an upstream
    /// that rejects a field the gateway accepts (OpenAI's newer models reject
    /// `input_fidelity`; GPT image models reject `response_format` on edits). Each name
    /// must be one of [`DROPPABLE_FIELDS`]; [`build`](Self::build) refuses any other.
    /// The request is then rendered without them: the operator chose that, so it is not
    /// refused.
    pub fn drop_fields<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.drop_fields.extend(names.into_iter().map(Into::into));
        self
    }

    /// Builds the backend: a pooled HTTP/1.1 + HTTP/2 client with rustls and the Mozilla
    /// root certificates.
    pub fn build(self) -> Result<UpstreamBackend, UpstreamConfigError> {
        let mut dropped = Vec::with_capacity(self.drop_fields.len());
        for name in &self.drop_fields {
            let Some(field) = DROPPABLE_FIELDS.iter().find(|f| **f == name.as_str()) else {
                return Err(UpstreamConfigError(format!(
                    "drop_fields: `{name}` cannot be dropped; these can: {}",
                    DROPPABLE_FIELDS.join(", ")
                )));
            };
            dropped.push(*field);
        }
        let (endpoint, generations, provider) = match &self.shape {
            Shape::OpenAi => {
                let endpoint = endpoint(&self.base, "edits")?;
                let generations = endpoint_of(&endpoint, "generations")?;
                (endpoint, generations, Provider::OpenAi)
            }
            Shape::Azure { api_version } => (
                azure_endpoint(&self.base, "edits", api_version)?,
                azure_endpoint(&self.base, "generations", api_version)?,
                Provider::Azure,
            ),
            Shape::Gemini => {
                let models = gemini_models(&self.base)?;
                (models.clone(), models, Provider::Gemini)
            }
        };
        let client = Client::builder()
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| UpstreamConfigError(format!("HTTP client: {e}")))?;
        Ok(UpstreamBackend {
            client,
            endpoint,
            generations,
            api_key: self.api_key,
            models: self.models,
            provider,
            dropped,
        })
    }
}

/// `{deployment}/images/{name}?api-version={version}`.
fn azure_endpoint(base: &str, name: &str, version: &str) -> Result<Url, UpstreamConfigError> {
    let mut url = Url::parse(&format!("{}/images/{name}", base.trim_end_matches('/')))
        .map_err(|e| UpstreamConfigError(format!("upstream URL is not a URL: {e}")))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(UpstreamConfigError(
            "upstream URL must be http or https".into(),
        ));
    }
    url.query_pairs_mut().append_pair("api-version", version);
    Ok(url)
}

/// `{base}/v1beta/models/`, under which each model's `{model}:generateContent` lives.
fn gemini_models(base: &str) -> Result<Url, UpstreamConfigError> {
    versioned_url(base, "v1beta", "models/")
        .map_err(|e| UpstreamConfigError(format!("upstream URL {e}")))
}

/// `{base}/v1/images/{name}`.
fn endpoint(base: &str, name: &str) -> Result<Url, UpstreamConfigError> {
    openai_url(base, &format!("images/{name}"))
        .map_err(|e| UpstreamConfigError(format!("upstream URL {e}")))
}

/// `{base}/v1/{path}` of an OpenAI-compatible API, for a base given with or without its
/// `/v1` (the OpenAI SDKs' `base_url` has it, `https://api.openai.com/v1`; many settings
/// pages leave it off); `http` or `https` only. The error completes "... URL ".
pub(crate) fn openai_url(base: &str, path: &str) -> Result<Url, String> {
    versioned_url(base, "v1", path)
}

/// `{base}/{version}/{path}` of an API whose base may be given with or without its
/// `/{version}`; `http` or `https` only. The error completes "... URL ".
fn versioned_url(base: &str, version: &str, path: &str) -> Result<Url, String> {
    let trimmed = base.trim_end_matches('/');
    let trimmed = trimmed
        .strip_suffix(version)
        .and_then(|t| t.strip_suffix('/'))
        .unwrap_or(trimmed);
    let parsed = Url::parse(trimmed).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
        return Err("must be http or https".into());
    }
    Url::parse(&format!(
        "{}/{version}/{path}",
        parsed.as_str().trim_end_matches('/')
    ))
    .map_err(|e| format!("is not a URL: {e}"))
}

/// The sibling endpoint `name` of `edits` (`.../v1/images/edits` -> `.../v1/images/{name}`).
fn endpoint_of(edits: &Url, name: &str) -> Result<Url, UpstreamConfigError> {
    edits
        .join(name)
        .map_err(|e| UpstreamConfigError(format!("upstream URL: {e}")))
}

impl UpstreamBackend {
    /// Settings for an upstream at `base` (e.g. `https://api.openai.com`, with or without a
    /// trailing `/v1`; the path `/v1/images/edits` is appended).
    pub fn builder(base: impl Into<String>) -> UpstreamBuilder {
        UpstreamBuilder {
            base: base.into(),
            api_key: None,
            models: HashMap::new(),
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(300),
            shape: Shape::OpenAi,
            drop_fields: Vec::new(),
        }
    }

    /// The request's values this upstream does not take, refused before anything is sent.
    fn refusal(&self, job: &EditJob) -> Option<BackendError> {
        match self.provider {
            Provider::OpenAi => return None,
            Provider::Gemini => return gemini::refusal(job, &self.dropped),
            Provider::Azure => {}
        }
        let p = &job.params;
        if p.output_format == crate::job::OutputFormat::Webp {
            return Some(BackendError::Unsupported {
                param: "output_format",
                message: "this model's upstream (Azure OpenAI) makes PNG or JPEG, not WebP".into(),
            });
        }
        let size = p.size.to_string();
        if size != "auto" && !AZURE_SIZES.contains(&size.as_str()) {
            return Some(BackendError::Unsupported {
                param: "size",
                message: format!(
                    "this model's upstream (Azure OpenAI) makes 1024x1024, 1024x1536 or 1536x1024, not {size}"
                ),
            });
        }
        None
    }

    /// The upstream's name of the job's model.
    fn model(&self, params: &EditParams) -> String {
        self.models
            .get(&params.model)
            .unwrap_or(&params.model)
            .clone()
    }

    /// The text fields every operation sends, as (name, value) pairs.
    fn fields(&self, job: &EditJob) -> Vec<(&'static str, String)> {
        let p = &job.params;
        let model = self.model(p);
        let mut fields = vec![
            ("prompt", p.prompt.clone()),
            ("n", p.n.to_string()),
            ("size", p.size.to_string()),
            ("quality", p.quality.as_str().to_owned()),
            ("background", p.background.as_str().to_owned()),
            ("output_format", p.output_format.as_str().to_owned()),
        ];
        // Azure's GPT image models answer base64 and take no `response_format`.
        if !model.starts_with("gpt-image") && self.provider == Provider::OpenAi {
            fields.push(("response_format", "b64_json".to_owned()));
        }
        let optional = [
            (
                "output_compression",
                p.output_compression.map(|c| c.to_string()),
            ),
            ("moderation", p.moderation.clone()),
            ("user", p.user.clone()),
        ];
        fields.extend(optional.into_iter().filter_map(|(k, v)| Some((k, v?))));
        if job.operation != Operation::Generate {
            if let Some(fidelity) = &p.input_fidelity {
                fields.push(("input_fidelity", fidelity.clone()));
            }
        }
        if streams(job) {
            fields.push(("stream", "true".to_owned()));
            fields.push(("partial_images", p.partial_images.to_string()));
        }
        // On Azure the deployment in the URL names the model.
        if self.provider == Provider::OpenAi {
            fields.push(("model", model));
        }
        fields.retain(|(name, _)| !self.dropped.contains(name));
        fields
    }

    /// An edit or a compose as the SDK's multipart form.
    fn form(&self, job: &EditJob, sources: &Sources) -> Form {
        let mut form = Form::new();
        for (name, value) in self.fields(job) {
            form.text(name, &value);
        }
        let field = if sources.images.len() == 1 {
            "image"
        } else {
            "image[]"
        };
        for (i, source) in sources.images.iter().enumerate() {
            form.image(field, &file_name(&format!("image-{i}"), source), source);
        }
        if let Some(mask) = &sources.mask {
            form.image("mask", &file_name("mask", mask), mask);
        }
        form
    }

    /// A generation as the SDK's JSON body. Numbers go as numbers, as the SDK sends them.
    fn generation_body(&self, job: &EditJob) -> serde_json::Value {
        let mut body = serde_json::Map::new();
        for (name, value) in self.fields(job) {
            let value = match name {
                "n" | "output_compression" | "partial_images" => value
                    .parse::<u64>()
                    .map_or(serde_json::Value::String(value), Into::into),
                "stream" => serde_json::Value::Bool(value == "true"),
                _ => serde_json::Value::String(value),
            };
            body.insert(name.to_owned(), value);
        }
        serde_json::Value::Object(body)
    }

    /// The request for `job` with `sources`; `sent` is told when the body has been read.
    fn request(
        &self,
        job: &EditJob,
        sources: &Sources,
        sent: oneshot::Sender<()>,
    ) -> reqwest::RequestBuilder {
        if self.provider == Provider::Gemini {
            let body = sources.body.clone().unwrap_or_default();
            let request = self
                .client
                .post(self.gemini_url(job))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(reqwest::Body::wrap(form::FormBody::whole(body, sent)));
            return match &self.api_key {
                Some(key) => request.header("x-goog-api-key", key),
                None => request,
            };
        }
        let request = match job.operation {
            Operation::Generate => {
                // Serialising strings and numbers into a Vec cannot fail.
                let body = serde_json::to_vec(&self.generation_body(job)).unwrap_or_default();
                self.client
                    .post(self.generations.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(reqwest::Body::wrap(form::FormBody::whole(
                        bytes::Bytes::from(body),
                        sent,
                    )))
            }
            Operation::Edit | Operation::Compose => {
                let form = self.form(job, sources);
                self.client
                    .post(self.endpoint.clone())
                    .header(reqwest::header::CONTENT_TYPE, form.content_type())
                    .body(reqwest::Body::wrap(form.finish(sent)))
            }
        };
        match (&self.api_key, &self.provider) {
            (Some(key), Provider::Azure) => request.header("api-key", key),
            (Some(key), _) => request.bearer_auth(key),
            (None, _) => request,
        }
    }

    /// `{base}/v1beta/models/{model}:generateContent` for the job's model.
    fn gemini_url(&self, job: &EditJob) -> Url {
        let mut url = self.endpoint.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty()
                .push(&format!("{}:generateContent", self.model(&job.params)));
        }
        url
    }

    /// A Gemini job: its body made once, then one call per image, all at once. The images
    /// that came are returned (a job is charged for what came); none is the first error.
    async fn gemini(&self, job: &EditJob, sources: Sources) -> Result<Vec<Image>, BackendError> {
        let body = gemini::body(job, &sources.images, &self.dropped);
        drop(sources);
        let n = job.params.n.max(1) as usize;
        // The calls' answers share the one bound on what an answer may hold.
        let cap = MAX_ANSWER_BYTES / n;
        let calls: Vec<_> = (0..n)
            .map(|_| {
                let sources = Sources {
                    images: Vec::new(),
                    mask: None,
                    body: Some(body.clone()),
                };
                async move {
                    let response = self.send(job, sources).await?;
                    answer::gemini(job, response, cap).await
                }
            })
            .collect();
        drop(body);
        let mut images = Vec::with_capacity(n);
        let mut errors = Vec::new();
        for outcome in futures_util::future::join_all(calls).await {
            match outcome {
                Ok(more) => images.extend(more),
                Err(e) => errors.push(e),
            }
        }
        if !images.is_empty() || errors.is_empty() {
            return Ok(images);
        }
        // The job's error is one that says the work may have been taken (a timeout, a
        // refusal) over one that says it was not: a router falls back only when no call
        // may still render and bill.
        let untaken = |e: &BackendError| {
            matches!(
                e,
                BackendError::Upstream {
                    failure: Failure::Busy | Failure::Connect,
                    ..
                }
            )
        };
        let pick = errors.iter().position(|e| !untaken(e)).unwrap_or(0);
        Err(errors.swap_remove(pick))
    }

    /// Sends `job` once, or twice when the first attempt never reached the model (see the
    /// type's docs).
    async fn send(
        &self,
        job: &EditJob,
        sources: Sources,
    ) -> Result<reqwest::Response, BackendError> {
        let (outcome, kept, sent) = self.attempt(job, sources).await?;
        let never_reached_the_model = match &outcome {
            Ok(r) => matches!(
                r.status(),
                StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
            ),
            // A failed connect, or a connection lost before the whole body was taken,
            // never reached the model: safe to send again.
            Err(e) => e.is_connect() || !sent,
        };
        let (outcome, sent) = match kept {
            Some(sources) if never_reached_the_model => {
                tokio::time::sleep(RETRY_BACKOFF).await;
                let (outcome, _, sent) = self.attempt(job, sources).await?;
                (outcome, sent)
            }
            _ => (outcome, sent),
        };
        let reached = if sent {
            Reached::Sent
        } else {
            Reached::Nothing
        };
        outcome.map_err(|e| transport(e, reached))
    }

    /// One request with `sources`, and the sources again while a retry may still use them:
    /// they are dropped [`RETRY_WINDOW`] after the body was sent. Also whether the whole
    /// body was taken for sending: a request whose body was not cannot have reached the
    /// model.
    async fn attempt(
        &self,
        job: &EditJob,
        sources: Sources,
    ) -> Result<(reqwest::Result<reqwest::Response>, Option<Sources>, bool), BackendError> {
        // Only images are worth dropping; a generation keeps its retry.
        let images = job.operation != Operation::Generate;
        let (taken, body_read) = oneshot::channel();
        let attempt = self.request(job, &sources, taken).send();
        tokio::pin!(attempt);
        let sent = AtomicBool::new(false);
        let window = async {
            // Also resolves when the body is dropped unsent; the attempt ends first then.
            if body_read.await.is_ok() {
                sent.store(true, Ordering::Relaxed);
            }
            tokio::time::sleep(RETRY_WINDOW).await;
        };
        tokio::pin!(window);
        let mut kept = Some(sources);
        let mut window_over = false;
        let outcome = loop {
            tokio::select! {
                biased;
                outcome = &mut attempt => break outcome,
                () = &mut window, if !window_over => {
                    window_over = true;
                    if images {
                        kept = None;
                    }
                }
            }
        };
        if !window_over {
            // The body may have been taken in the poll that ended the attempt: one more
            // poll of the window reads that.
            let _ = futures_util::poll!(window.as_mut());
        }
        let sent = sent.load(Ordering::Relaxed);
        Ok((outcome, kept, sent))
    }
}

/// The images a request sends, taken out of the job so the backend decides how long they
/// live.
struct Sources {
    images: Vec<SourceImage>,
    mask: Option<SourceImage>,
    /// The whole body, when one was made for several calls (Gemini's).
    body: Option<bytes::Bytes>,
}

/// Whether the job is sent as a stream: its client streams and wants partial images (a
/// stream without partials carries nothing the plain answer does not).
fn streams(job: &EditJob) -> bool {
    job.params.partial_images > 0 && job.progress.is_streamed()
}

/// `stem.{ext}`, the extension of the type the bytes show.
fn file_name(stem: &str, source: &SourceImage) -> String {
    format!("{stem}.{}", source.kind.extension())
}

#[async_trait]
impl ImageBackend for UpstreamBackend {
    // Not cancellable (the default): a provider bills a request it has started whether or
    // not its answer is read, so a job whose client left reads the answer (or the stream)
    // to its end, is charged and keeps its images.

    async fn edit(&self, job: &EditJob) -> Result<Vec<Image>, BackendError> {
        self.edit_owned(job.clone()).await
    }

    /// Takes the sources out of the job: after the body is sent and the retry window has
    /// passed, the request no longer holds them.
    async fn edit_owned(&self, mut job: EditJob) -> Result<Vec<Image>, BackendError> {
        if let Some(refusal) = self.refusal(&job) {
            return Err(refusal);
        }
        let sources = Sources {
            images: std::mem::take(&mut job.sources),
            mask: job.mask.take(),
            body: None,
        };
        if self.provider == Provider::Gemini {
            return self.gemini(&job, sources).await;
        }
        let response = self.send(&job, sources).await?;
        let event_stream = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if event_stream && response.status().is_success() {
            return answer::streamed(&job, response).await;
        }
        answer::images(self, &job, response).await
    }
}

/// How far a request had gone when its transport failed: what decides whether the model
/// can have taken the work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reached {
    /// Its body was not all taken for sending: the model cannot have the request.
    Nothing,
    /// Sent whole: the model may be at work.
    Sent,
    /// Answered (its answer was being read, or an image it answered by URL fetched): the
    /// work was done, whatever the socket says.
    Answered,
}

/// A transport error, in words without the URL (it may carry credentials), as
/// [`Failure::Connect`] (safe to send elsewhere) only while the request had not reached
/// the model.
pub(super) fn transport(error: reqwest::Error, reached: Reached) -> BackendError {
    let (failure, what) = if reached != Reached::Answered && error.is_connect() {
        (Failure::Connect, "could not connect")
    } else if reached == Reached::Nothing && error.is_request() {
        (
            Failure::Connect,
            "lost the connection before the request was sent",
        )
    } else if error.is_timeout() {
        (Failure::Timeout, "timed out")
    } else if error.is_body() || error.is_decode() {
        (Failure::Malformed, "broken body")
    } else {
        (Failure::Other, "request failed")
    };
    BackendError::failed(failure, format!("upstream {what}: {}", error.without_url()))
}

#[cfg(test)]
mod tests {
    use super::{endpoint, endpoint_of, gemini_models};

    #[test]
    fn the_base_url_may_end_in_v1_or_not() {
        for base in [
            "https://api.openai.com",
            "https://api.openai.com/",
            "https://api.openai.com/v1",
            "https://api.openai.com/v1/",
        ] {
            assert_eq!(
                endpoint(base, "edits").unwrap().as_str(),
                "https://api.openai.com/v1/images/edits",
                "{base}"
            );
        }
        assert_eq!(
            endpoint("http://127.0.0.1:9000/proxy/v1", "edits")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:9000/proxy/v1/images/edits"
        );
        let edits = endpoint("https://api.openai.com/v1", "edits").unwrap();
        assert_eq!(
            endpoint_of(&edits, "generations").unwrap().as_str(),
            "https://api.openai.com/v1/images/generations"
        );
        for base in [
            "https://generativelanguage.googleapis.com",
            "https://generativelanguage.googleapis.com/v1beta/",
        ] {
            assert_eq!(
                gemini_models(base).unwrap().as_str(),
                "https://generativelanguage.googleapis.com/v1beta/models/",
                "{base}"
            );
        }
        assert!(endpoint("ftp://example.com", "edits").is_err());
        assert!(endpoint("not a url", "edits").is_err());
    }
}
