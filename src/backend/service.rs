use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use tower_service::Service;

use super::{BackendError, Failure, ImageBackend, Outputs, Rendered};
use crate::auth::Principal;
use crate::clock::unix_now;
use crate::future::ResponseFuture;
use crate::generations::{Generation, GenerationStatus, Generations};
use crate::id::GenerationId;
use crate::job::{Background, EditJob, Image};
use crate::ledger::HoldId;
use crate::metrics::Metrics;
use crate::store::{write_all, FileKey, FileStore, Usage};
use crate::GatewayError;

/// The innermost service: runs the backend and records each returned image as a pending
/// generation. What it returns, a [`Rendered`], is not reachable yet: billing settles the
/// charge first and then [publishes](Rendered::publish) it.
///
/// More images than `n` are cut to `n`; none at all is `502 upstream_error`. A pending
/// generation is not usable (`409 generation_not_ready`) and has no file, so until
/// [`Rendered::publish`] stores the bytes, nothing of the edit can be fetched or listed.
#[derive(Clone)]
pub struct EditService {
    backend: Arc<dyn ImageBackend>,
    /// Where a job's uploads go and whose room is checked before its work begins (the
    /// caller's quota, when the store keeps one).
    room: Arc<dyn FileStore>,
    outputs: Outputs,
    metrics: Option<Metrics>,
    /// Jobs whose backend may run at once; the others wait, queued.
    running: Option<Arc<Semaphore>>,
    /// How long the backend may take on one job.
    timeout: Option<Duration>,
}

impl EditService {
    /// Runs edits on `backend`, keeping outputs in `store` and `generations`.
    pub fn new(
        backend: Arc<dyn ImageBackend>,
        store: Arc<dyn FileStore>,
        generations: Arc<dyn Generations>,
    ) -> Self {
        EditService {
            backend,
            room: store.clone(),
            outputs: Outputs { store, generations },
            metrics: None,
            running: None,
            timeout: None,
        }
    }

    /// At most `running` jobs given to the backend at once (the others wait their turn,
    /// queued and still cancellable), each failing `502 upstream_error` when the backend
    /// has not answered within `timeout`. Default: neither bound.
    pub fn limits(mut self, running: Option<usize>, timeout: Option<Duration>) -> Self {
        self.running = running.map(|n| Arc::new(Semaphore::new(n.max(1))));
        self.timeout = timeout;
        self
    }

    /// Stores the outputs of work that has run in `owed` (the
    /// [`QuotaStore::owed`](crate::store::QuotaStore::owed) view of the store given to
    /// [`new`](Self::new)): a caller's quota is checked for room for the job's `n` outputs
    /// (a byte each) before the work begins, and work that ran is then kept and charged,
    /// never refused for the quota afterwards (so never free). A job may take its caller
    /// past the quota by its own outputs. Default: outputs go through the quota like uploads.
    pub fn outputs_past_quota(mut self, owed: Arc<dyn FileStore>) -> Self {
        self.outputs.store = owed;
        self
    }

    /// Where its outputs go.
    pub(crate) fn outputs(&self) -> Outputs {
        self.outputs.clone()
    }

    /// Records each backend call's time and failure in `metrics`.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

impl std::fmt::Debug for EditService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EditService").finish_non_exhaustive()
    }
}

impl Service<EditJob> for EditService {
    type Response = Rendered;
    type Error = GatewayError;
    type Future = ResponseFuture<Rendered, GatewayError>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut job: EditJob) -> Self::Future {
        let this = self.clone();
        ResponseFuture::new(async move {
            let (principal, operation, n) = (job.principal.clone(), job.operation, job.params.n);
            // Whether, once the images are back, they reach their owner only through the
            // store (then their records name the hold, so a loss is refunded).
            let (hold, by_store, client) = (job.hold, job.by_store, job.client.clone());
            let asked = (job.params.quality.clone(), job.params.background);
            let owner = principal.user_id();
            // Uploads are refused before the backend runs (no model time for an edit whose
            // sources cannot be kept), then written while it works and while its images are
            // recorded; the answer waits for both.
            let uploads = std::mem::take(&mut job.uploads);
            // Room for the uploads and the smallest output the job asks for (`n` files of
            // at least a byte) is checked before the work, not after it: a caller at her
            // quota is refused while it costs nothing.
            let upload_bytes: u64 = uploads.iter().map(|(_, b)| b.len() as u64).sum();
            let outputs = u64::from(n);
            let needed = Usage::new(upload_bytes + outputs, uploads.len() as u64 + outputs);
            this.room.admits(owner, needed).await?;
            // Queued until a turn is free; then the work is owed: a client that leaves no
            // longer cancels it. The turn is kept until the job's images are recorded.
            let _turn = match &this.running {
                Some(running) => Some(
                    running
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|_| GatewayError::internal("the render bound was closed"))?,
                ),
                None => None,
            };
            job.progress.start();
            let stored = async {
                let stored = write_all(&*this.room, &uploads).await;
                drop(uploads);
                stored
            };
            let ran = async {
                let started = Instant::now();
                let answer = match this.timeout {
                    None => this.backend.edit_owned(job).await,
                    Some(limit) => tokio::time::timeout(limit, this.backend.edit_owned(job))
                        .await
                        .unwrap_or_else(|_| {
                            Err(BackendError::failed(
                                Failure::Timeout,
                                format!("the job took longer than {} s", limit.as_secs()),
                            ))
                        }),
                };
                if let Some(metrics) = &this.metrics {
                    let kind = answer.as_ref().err().map(BackendError::kind);
                    metrics.backend(operation, started.elapsed(), kind);
                }
                let images = answer.map_err(|error| {
                    // The one place a backend's failure becomes the job's: its detail (an
                    // upstream's words, never shown to the client) goes to the log here.
                    if let BackendError::Upstream { detail, .. } = &error {
                        tracing::warn!(%detail, kind = error.kind(), "image backend failed");
                    }
                    GatewayError::from(error)
                })?;
                let refundable = hold.filter(|_| by_store || client.is_gone());
                let asked = (asked.0.as_str(), asked.1);
                let mut rendered = this
                    .record(&principal, refundable, n, asked, images)
                    .await?;
                rendered.hold = hold;
                Ok(rendered)
            };
            let (stored, rendered) = tokio::join!(stored, ran);
            // Sources that could not be kept fail the edit, as before the backend ran.
            if let Err(error) = stored {
                if let Ok(rendered) = rendered {
                    rendered.discard().await;
                }
                return Err(error.into());
            }
            rendered
        })
    }
}

impl EditService {
    /// The backend's `images` (cut to `n`), each recorded as a pending generation; `hold`
    /// is named on the records of images delivered only through the store.
    async fn record(
        &self,
        principal: &Principal,
        hold: Option<HoldId>,
        n: u32,
        asked: (&str, Background),
        mut images: Vec<Image>,
    ) -> Result<Rendered, GatewayError> {
        images.truncate(n as usize);
        if images.is_empty() {
            tracing::warn!("image backend returned no images");
            return Err(GatewayError::Upstream);
        }
        // Refused now, before anything is charged, rather than after the settle. Past
        // `outputs_past_quota` only the volume itself can refuse (its free-space floor):
        // the caller's room was checked before the work.
        let bytes = images.iter().map(|i| i.bytes.len() as u64).sum();
        let adding = Usage::new(bytes, images.len() as u64);
        self.outputs
            .store
            .admits(principal.user_id(), adding)
            .await?;
        let created = unix_now();
        let mut rendered = Rendered::new(created, asked, self.outputs.clone());
        for image in images {
            let id = GenerationId::new();
            let key = output_key(principal, id, &image);
            let record = Generation::new(id, key.clone(), GenerationStatus::Pending, created)
                .charged_under(hold);
            if let Err(error) = self.outputs.generations.insert(&record).await {
                rendered.discard().await;
                return Err(error.into());
            }
            rendered.push(id, image, key);
        }
        Ok(rendered)
    }
}

/// `files/{user}/{generation id}_generation.{ext}`: the id is in the key, so an operator can
/// find a generation's file by its id alone.
fn output_key(principal: &Principal, id: GenerationId, image: &Image) -> FileKey {
    let name = format!("generation.{}", image.format.extension());
    FileKey::new(principal.user_id(), id.as_uuid(), &name)
}
