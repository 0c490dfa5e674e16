use std::sync::Arc;
use std::time::Duration;

use crate::auth::UserId;
use crate::generations::{Generation, GenerationStatus, Generations};
use crate::id::GenerationId;
use crate::job::{Background, EditOutcome, GeneratedImage, Image, OutputFormat};
use crate::ledger::{HoldId, Ledger};
use crate::store::{FileKey, FileStore};
use crate::GatewayError;

/// How long a generation may stay pending before it is taken for one whose process died
/// while storing it: a read past it settles it by the store, and the sweep ends it.
pub(crate) const PENDING_TIMEOUT: Duration = Duration::from_secs(300);

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
    /// The hold they are charged under.
    pub(crate) hold: Option<HoldId>,
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
            hold: None,
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

    /// Whether there are none (never, for one that [`EditService`](super::EditService) returned).
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Makes the images reachable: stores each one's bytes and marks its generation ready.
    /// Call it only once the charge for them is committed (`ledger` is where it was).
    ///
    /// When they reach their owner only through the store (`by_store`: an async job, a
    /// client gone), the outcome waits for the store: the job ends with the images that
    /// were stored, and one whose bytes never got there (the store failed, or the process
    /// died first) was never delivered, so its share of the charge is refunded (here, or by
    /// `Outputs::sweep` after a restart); none stored is the store's error. Otherwise the
    /// answer carries the images, and does not wait for a store that waits (a disk, a
    /// network: it stores on a task of its own; a chained edit that comes too early is
    /// answered `409 generation_not_ready`).
    pub async fn publish(
        self,
        ledger: &dyn Ledger,
        by_store: bool,
    ) -> Result<EditOutcome, GatewayError> {
        if !by_store {
            for (generated, key) in self.images.iter().zip(self.keys) {
                self.outputs.store_beside(generated, key).await;
            }
            return Ok(EditOutcome::new(self.created, self.images)
                .described(&self.quality, self.background));
        }
        let outputs = &self.outputs;
        let stored = futures_util::future::join_all(
            self.images
                .iter()
                .zip(&self.keys)
                .map(|(generated, key)| outputs.store(generated, key, self.hold, ledger)),
        )
        .await;
        let mut images = Vec::with_capacity(self.images.len());
        let mut failure = None;
        for (generated, stored) in self.images.into_iter().zip(stored) {
            match stored {
                Ok(()) => images.push(generated),
                Err(error) => failure = Some(error),
            }
        }
        match failure {
            Some(error) if images.is_empty() => Err(error),
            _ => Ok(
                EditOutcome::new(self.created, images).described(&self.quality, self.background)
            ),
        }
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
    /// Stores one output delivered in its answer, and marks its generation; on a task of
    /// its own once it would wait. A failed store leaves the generation failed and its
    /// charge standing: the answer carried the image.
    async fn store_beside(&self, generated: &GeneratedImage, key: FileKey) {
        let (store, generations) = (self.store.clone(), self.generations.clone());
        let (id, bytes) = (generated.id, generated.image.bytes.clone());
        let mut storing = Box::pin(async move {
            let status = match store.put(&key, bytes).await {
                Ok(()) => GenerationStatus::Ready,
                Err(error) => {
                    tracing::error!(%error, generation = %id, "storing an answered generation failed");
                    GenerationStatus::Failed
                }
            };
            if let Err(error) = generations.set_status(id, status).await {
                // Left pending; a read finds its bytes (ready), or the sweep ends it.
                tracing::error!(%error, generation = %id, "recording a generation's status failed");
            }
        });
        if futures_util::poll!(storing.as_mut()).is_pending() {
            tokio::spawn(storing);
        }
    }

    /// Stores one output and marks its generation ready; when the store fails, the
    /// generation is refunded its share of `hold`'s charge and marked failed.
    async fn store(
        &self,
        generated: &GeneratedImage,
        key: &FileKey,
        hold: Option<HoldId>,
        ledger: &dyn Ledger,
    ) -> Result<(), GatewayError> {
        let id = generated.id;
        if let Err(error) = self.store.put(key, generated.image.bytes.clone()).await {
            tracing::error!(%error, generation = %id, "storing a generation failed; it is refunded");
            self.lose(key.owner(), id, hold, ledger).await;
            return Err(error.into());
        }
        // Marked ready after the answer, not before it: a record still pending whose bytes
        // are stored reads as ready (they were stored after the charge), and the sweep
        // marks one whose process died.
        let generations = self.generations.clone();
        let mut marking = Box::pin(async move {
            if let Err(error) = generations.set_status(id, GenerationStatus::Ready).await {
                tracing::error!(%error, generation = %id, "recording a generation's status failed");
            }
        });
        if futures_util::poll!(marking.as_mut()).is_pending() {
            tokio::spawn(marking);
        }
        Ok(())
    }

    /// Ends a generation whose bytes will never be stored: refunded its share of its
    /// hold's charge (once: the deposit's reference is its id), then marked failed. Left
    /// pending when the refund could not be made, for the sweep to try again.
    async fn lose(
        &self,
        owner: &UserId,
        id: GenerationId,
        hold: Option<HoldId>,
        ledger: &dyn Ledger,
    ) {
        if refund(ledger, owner, id, hold).await.is_err() {
            return;
        }
        if let Err(error) = self
            .generations
            .set_status(id, GenerationStatus::Failed)
            .await
        {
            tracing::error!(%error, generation = %id, "marking a lost generation failed");
        }
    }

    /// Ends up to `limit` generations left pending since `before` (Unix seconds) by a
    /// process that died: ready when their bytes are in the store (stored after their
    /// charge), otherwise lost (refunded, failed). Answers how many it ended.
    pub(crate) async fn sweep(
        &self,
        ledger: &dyn Ledger,
        before: u64,
        limit: usize,
    ) -> Result<usize, GatewayError> {
        let pending = self.generations.pending(before, limit).await?;
        let mut ended = 0;
        for generation in pending {
            if self.end_pending(&generation, ledger).await? != Ended::Unread {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Ends one generation left pending by a process that died: ready when its bytes are in
    /// the store (stored after its charge), otherwise lost. Left pending when the store
    /// could not be read, to be tried again.
    async fn end_pending(
        &self,
        generation: &Generation,
        ledger: &dyn Ledger,
    ) -> Result<Ended, GatewayError> {
        let Generation {
            id, file_key, hold, ..
        } = generation;
        match self.store.get(file_key).await {
            Ok(Some(bytes)) => {
                self.generations
                    .set_status(*id, GenerationStatus::Ready)
                    .await?;
                Ok(Ended::Ready(bytes))
            }
            Ok(None) => {
                tracing::warn!(generation = %id, "a charged generation's bytes were never stored; it is refunded");
                self.lose(&generation.owner, *id, *hold, ledger).await;
                Ok(Ended::Lost)
            }
            Err(error) => {
                tracing::error!(%error, generation = %id, "reading a pending generation's bytes failed");
                Ok(Ended::Unread)
            }
        }
    }

    /// The images of the generations charged under `hold` that reached the store, in the
    /// order they were made: what an async job whose process died after its settle
    /// delivered. One still pending is ended first, as the sweep would, when it was
    /// recorded at or before `before` (Unix seconds); a younger one may still be being
    /// stored by a live process, and is left to the sweep.
    pub(crate) async fn delivered(
        &self,
        ledger: &dyn Ledger,
        hold: HoldId,
        before: u64,
    ) -> Result<Vec<GeneratedImage>, GatewayError> {
        let mut generations = self.generations.under_hold(hold).await?;
        // Generation ids are time-ordered (UUIDv7): the job's own order.
        generations.sort_by_key(|g| g.id.as_uuid());
        let mut images = Vec::with_capacity(generations.len());
        for generation in generations {
            let bytes = match generation.status {
                GenerationStatus::Ready => self.store.get(&generation.file_key).await?,
                GenerationStatus::Pending if generation.created <= before => {
                    match self.end_pending(&generation, ledger).await? {
                        Ended::Ready(bytes) => Some(bytes),
                        Ended::Lost | Ended::Unread => None,
                    }
                }
                _ => None,
            };
            let Some((bytes, format)) = bytes.and_then(|b| OutputFormat::of(&b).map(|f| (b, f)))
            else {
                continue;
            };
            images.push(GeneratedImage::new(
                generation.id,
                Image::new(bytes, format),
            ));
        }
        Ok(images)
    }
}

/// How [`Outputs::end_pending`] ended a generation.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Its bytes are stored: ready.
    Ready(bytes::Bytes),
    /// Never stored: refunded, failed.
    Lost,
    /// The store could not be read: still pending.
    Unread,
}

/// Gives `owner` back one image's share of what `hold` charged, once per generation `id`.
/// Nothing when the hold charged nothing (released, expired) or the ledger cannot say;
/// `Err` when the ledger failed (to be tried again).
async fn refund(
    ledger: &dyn Ledger,
    owner: &UserId,
    id: GenerationId,
    hold: Option<HoldId>,
) -> Result<(), ()> {
    let Some(hold) = hold else {
        return Ok(());
    };
    let share = match ledger.charged(hold).await {
        Ok(charge) => charge.and_then(|c| c.per_unit()),
        Err(error) => {
            tracing::error!(%error, generation = %id, %hold, "reading a lost generation's charge failed");
            return Err(());
        }
    };
    let Some(share) = share
        .and_then(|s| i64::try_from(s.get()).ok())
        .filter(|s| *s > 0)
    else {
        tracing::warn!(generation = %id, %hold, "a lost generation has no charge to refund");
        return Ok(());
    };
    match ledger.deposit(owner, share, &format!("refund:{id}")).await {
        Ok(_) => Ok(()),
        Err(error) => {
            tracing::error!(%error, generation = %id, "refunding a lost generation failed");
            Err(())
        }
    }
}
