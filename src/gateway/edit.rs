use std::sync::Arc;

use bytes::Bytes;
use std::task::{Context, Poll};

use tower_service::Service;

use super::{EditOutcome, GeneratedImage};
use crate::auth::Principal;
use crate::backend::{EditJob, Image, ImageBackend};
use crate::clock::unix_now;
use crate::future::ResponseFuture;
use crate::id::GenerationId;
use crate::store::{put_all, FileKey, FileStore, Generation, GenerationStatus, Generations, Usage};
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
    outputs: Outputs,
}

/// Where outputs go; shared by every [`Rendered`] of one service.
#[derive(Clone)]
struct Outputs {
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
            outputs: Outputs { store, generations },
        }
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

    fn call(&mut self, job: EditJob) -> Self::Future {
        let this = self.clone();
        ResponseFuture::new(async move {
            let owner = job.principal.user_id();
            if job.store_sources {
                let files: Vec<(FileKey, Bytes)> = job
                    .source_keys
                    .iter()
                    .cloned()
                    .zip(job.sources.iter().map(|s| s.bytes.clone()))
                    .collect();
                put_all(&*this.outputs.store, owner, &files).await?;
            }
            let mut images = this.backend.edit(&job).await?;
            images.truncate(job.params.n as usize);
            if images.is_empty() {
                tracing::warn!("image backend returned no images");
                return Err(GatewayError::Upstream);
            }
            // Refused now, before anything is charged, rather than after the settle.
            let bytes = images.iter().map(|i| i.bytes.len() as u64).sum();
            let adding = Usage::new(bytes, images.len() as u64);
            this.outputs.store.admits(owner, adding).await?;
            let created = unix_now();
            let mut rendered = Rendered {
                created,
                images: Vec::with_capacity(images.len()),
                keys: Vec::with_capacity(images.len()),
                source_keys: job.source_keys,
                outputs: this.outputs.clone(),
            };
            for image in images {
                let id = GenerationId::new();
                let key = output_key(&job.principal, id, &image);
                let record = Generation::new(id, key.clone(), GenerationStatus::Pending, created);
                if let Err(error) = this.outputs.generations.insert(&record).await {
                    rendered.discard().await;
                    return Err(error.into());
                }
                rendered.images.push(GeneratedImage::new(id, image));
                rendered.keys.push(key);
            }
            Ok(rendered)
        })
    }
}

/// Images a backend returned, recorded as pending generations, not reachable yet.
///
/// Exactly one of [`publish`](Self::publish) (after the charge is committed) or
/// [`discard`](Self::discard) (when it cannot be) ends it. Dropped without either, its
/// generations stay pending without files, and the first use after the pending timeout
/// marks them failed.
#[must_use = "publish or discard the images"]
pub struct Rendered {
    created: u64,
    images: Vec<GeneratedImage>,
    keys: Vec<FileKey>,
    source_keys: Vec<FileKey>,
    outputs: Outputs,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendered")
            .field("images", &self.images.len())
            .finish_non_exhaustive()
    }
}

impl Rendered {
    /// How many images there are.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether there are none (never, for one that [`EditService`] returned).
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Makes the images reachable: stores each one's bytes and marks its generation ready.
    /// Call it only once the charge for them is committed.
    ///
    /// A store that finishes at once (in memory) finishes here; one that waits (a disk, a
    /// network) goes on on a task of its own, so the answer never waits for it and a chained
    /// edit that comes too early is answered `409 generation_not_ready`.
    pub async fn publish(self) -> EditOutcome {
        for (generated, key) in self.images.iter().zip(self.keys) {
            self.outputs
                .store(generated.id, key, generated.image.clone())
                .await;
        }
        let mut outcome = EditOutcome::new(self.created, self.images);
        outcome.source_keys = self.source_keys;
        outcome
    }

    /// Marks the generations failed: none of the images ever becomes reachable.
    pub async fn discard(self) {
        for generated in &self.images {
            let failed = GenerationStatus::Failed;
            if let Err(error) = self
                .outputs
                .generations
                .set_status(generated.id, failed)
                .await
            {
                tracing::error!(%error, generation = %generated.id, "marking a discarded generation failed");
            }
        }
    }
}

impl Outputs {
    /// Stores one output and marks its generation; on a task of its own once it would wait.
    async fn store(&self, id: GenerationId, key: FileKey, image: Image) {
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
fn output_key(principal: &Principal, id: GenerationId, image: &Image) -> FileKey {
    let name = format!("generation.{}", image.format.extension());
    FileKey::new(principal.user_id(), id.as_uuid(), &name)
}
