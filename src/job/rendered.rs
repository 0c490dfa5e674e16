use std::sync::Arc;

use super::{Background, EditOutcome, GeneratedImage, Image};
use crate::id::GenerationId;
use crate::store::{FileKey, FileStore, GenerationStatus, Generations};

/// Where outputs go; shared by every [`Rendered`] of one service.
#[derive(Clone)]
pub(crate) struct Outputs {
    pub(crate) store: Arc<dyn FileStore>,
    pub(crate) generations: Arc<dyn Generations>,
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
    /// The quality and background the job asked for, which its answer echoes.
    quality: String,
    background: Background,
    images: Vec<GeneratedImage>,
    keys: Vec<FileKey>,
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
    /// No images yet, of an edit finished at `created` at `quality` and `background`; they
    /// go to `outputs`.
    pub(crate) fn new(
        created: u64,
        (quality, background): (&str, Background),
        outputs: Outputs,
    ) -> Self {
        Rendered {
            created,
            quality: quality.to_owned(),
            background,
            images: Vec::new(),
            keys: Vec::new(),
            outputs,
        }
    }

    /// Adds an image whose pending generation `id` is recorded, to be stored under `key`.
    pub(crate) fn push(&mut self, id: GenerationId, image: Image, key: FileKey) {
        self.images.push(GeneratedImage::new(id, image));
        self.keys.push(key);
    }

    /// How many images there are.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether there are none (never, for one that [`EditService`](crate::backend::EditService) returned).
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
        EditOutcome::new(self.created, self.images).described(&self.quality, self.background)
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
