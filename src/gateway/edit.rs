use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use tower_service::Service;

use super::{EditOutcome, GeneratedImage};
use crate::backend::{EditJob, Image, ImageBackend};
use crate::future::ResponseFuture;
use crate::source::GenerationId;
use crate::store::{FileKey, FileStore, Generation, GenerationStatus, Generations};
use crate::GatewayError;

/// The innermost service: runs the backend, records each returned image as a generation
/// and stores its bytes.
///
/// More images than `n` are cut to `n`; none at all is `502 upstream_error`. Each image is
/// recorded [`Pending`](GenerationStatus::Pending) before the answer is sent; its bytes are
/// written by a store call that, unless it completes at once, goes on after the answer on a
/// task of its own and marks the generation ready (or failed). So the client never waits for
/// storage, and a chained edit that comes too early is answered `409 generation_not_ready`,
/// as the spec describes.
#[derive(Clone)]
pub struct EditService {
    backend: Arc<dyn ImageBackend>,
    store: Arc<dyn FileStore>,
    generations: Arc<dyn Generations>,
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
            store,
            generations,
        }
    }
}

impl std::fmt::Debug for EditService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EditService").finish_non_exhaustive()
    }
}

impl Service<EditJob> for EditService {
    type Response = EditOutcome;
    type Error = GatewayError;
    type Future = ResponseFuture<EditOutcome, GatewayError>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, job: EditJob) -> Self::Future {
        let this = self.clone();
        ResponseFuture::new(async move {
            let mut images = this.backend.edit(&job).await?;
            images.truncate(job.params.n as usize);
            if images.is_empty() {
                tracing::warn!("image backend returned no images");
                return Err(GatewayError::Upstream);
            }
            let created = unix_now();
            let mut generated = Vec::with_capacity(images.len());
            for image in images {
                let id = GenerationId::new();
                let key = output_key(&job, id, &image);
                let record = Generation::new(id, key.clone(), GenerationStatus::Pending, created);
                this.generations.insert(&record).await?;
                this.store_output(id, key, image.clone()).await;
                generated.push(GeneratedImage::new(id, image));
            }
            let mut outcome = EditOutcome::new(created, generated);
            outcome.source_keys = job.source_keys;
            Ok(outcome)
        })
    }
}

impl EditService {
    /// Stores one output and marks its generation. A store that finishes at once (in memory)
    /// finishes here; one that waits (a disk, a network) goes on on a task of its own, so the
    /// answer never waits for it.
    async fn store_output(&self, id: GenerationId, key: FileKey, image: Image) {
        let (store, generations) = (self.store.clone(), self.generations.clone());
        let mut storing = Box::pin(async move {
            let status = match store.put(&key, image.bytes).await {
                Ok(()) => GenerationStatus::Ready,
                Err(error) => {
                    tracing::error!(%error, generation = %id, "storing a generation failed");
                    GenerationStatus::Failed
                }
            };
            if let Err(error) = generations.set_status(id, status).await {
                // Left pending; the next use after the pending timeout settles it by the store.
                tracing::error!(%error, generation = %id, "recording a generation's status failed");
            }
        });
        if futures_util::poll!(storing.as_mut()).is_pending() {
            tokio::spawn(storing);
        }
    }
}

/// `files/{user}/{generation id}_generation.{ext}`: the id is in the key, so an operator can
/// find a generation's file by its id alone.
fn output_key(job: &EditJob, id: GenerationId, image: &Image) -> FileKey {
    let name = format!("generation.{}", image.format.extension());
    FileKey::new(job.principal.user_id(), id.as_uuid(), &name)
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
