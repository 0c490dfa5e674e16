use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tower::ServiceExt;
use tower_service::Service;

use crate::auth::Principal;
use crate::billing::Admission;
use crate::job::{EditJob, EditOutcome, EditRequest, Operation, Reference, SourceImage, Stage};

use crate::clock::unix_now;
use crate::future::ResponseFuture;
use crate::id::GenerationId;
use crate::media::ImageKind;

use crate::generations::{GenerationStatus, Generations};
use crate::store::{FileKey, FileStore};
use crate::GatewayError;

/// How long a client is asked to wait for a pending generation.
const RETRY_PENDING: Duration = Duration::from_secs(1);

/// The most bytes of stored or fetched images one request may read before its hold (one
/// more image may be in flight when it is reached): with the body limit, what a request can
/// make the gateway hold in memory before anyone has paid.
pub const MAX_NAMED_SOURCE_BYTES: usize = 64 << 20;

/// Fetches the source image of each edit and hands the inner service an [`EditJob`].
#[derive(Clone)]
pub struct ResolveSource<S> {
    inner: S,
    sources: Sources,
}

/// Where sources come from; shared by every clone of the service.
#[derive(Clone)]
pub(crate) struct Sources {
    pub(crate) store: Arc<dyn FileStore>,
    pub(crate) generations: Arc<dyn Generations>,
    /// A generation pending longer than this is checked against the store: its writer died.
    pub(crate) pending_timeout: Duration,
    /// Fetches `https://` references; without it they are refused.
    #[cfg(feature = "fetch")]
    pub(crate) fetcher: Option<crate::fetch::UrlFetcher>,
    /// The balance check before any named source is read; without it, none.
    pub(crate) admission: Option<Admission>,
}

/// Inline and fetched images still to store, under their new keys, once the hold is taken.
type Uploads = Vec<(FileKey, Bytes)>;

impl<S> ResolveSource<S> {
    pub(crate) fn new(inner: S, sources: Sources) -> Self {
        ResolveSource { inner, sources }
    }
}

impl<S> std::fmt::Debug for ResolveSource<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolveSource").finish_non_exhaustive()
    }
}

impl<S> Service<EditRequest> for ResolveSource<S>
where
    S: Stage<EditJob, EditOutcome>,
{
    type Response = EditOutcome;
    type Error = GatewayError;
    type Future = ResponseFuture<EditOutcome, GatewayError>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: EditRequest) -> Self::Future {
        let inner = self.inner.clone();
        let sources = self.sources.clone();
        ResponseFuture::new(async move {
            // A job run again holds its money already.
            if let (Some(admission), None) = (&sources.admission, req.resume) {
                admission.check(&req).await?;
            }
            let mut uploads = Uploads::new();
            let (mut images, mut keys) = (Vec::new(), Vec::new());
            let mut read = 0usize;
            for reference in &req.sources {
                let (image, key) = sources
                    .resolve(&req.principal, reference, &mut uploads)
                    .await?;
                if !matches!(reference, Reference::Inline(_)) {
                    read = read.saturating_add(image.bytes.len());
                    if read > MAX_NAMED_SOURCE_BYTES {
                        return Err(GatewayError::invalid_request(
                            "the images this request names total more than 64 MiB",
                            Some("images"),
                        ));
                    }
                }
                images.push(image);
                keys.push(key);
            }
            if req.operation == Operation::Compose {
                distinct(&keys)?;
            }
            let (mask, mask_key) = match &req.mask {
                Some(mask) => {
                    let (image, key) = sources.resolve(&req.principal, mask, &mut uploads).await?;
                    (Some(image), Some(key))
                }
                None => (None, None),
            };
            let job = req.into_job((images, mask), (keys.clone(), mask_key), uploads);
            let mut outcome = inner.oneshot(job).await?;
            outcome.source_keys = keys;
            Ok(outcome)
        })
    }
}

impl Sources {
    /// Fetches one reference: its image and the key it is (or will be) stored under. An
    /// inline or fetched image is added to `uploads`.
    async fn resolve(
        &self,
        principal: &Principal,
        reference: &Reference,
        uploads: &mut Uploads,
    ) -> Result<(SourceImage, FileKey), GatewayError> {
        Ok(match reference {
            Reference::Inline(image) => {
                // The spec: images sent in the request are uploads of the caller, fetchable
                // by key. They are written by the job itself, once its hold is taken, so a
                // refused job stores nothing.
                let key = image.upload_key(principal.user_id());
                uploads.push((key.clone(), image.bytes.clone()));
                (image.clone(), key)
            }
            Reference::Key(key) => (self.fetch(key, "image_key").await?, key.clone()),
            Reference::Generation(id) => self.generation_source(principal, *id).await?,
            Reference::Url(url) => {
                let image = self.fetch_url(url).await?;
                let key = image.upload_key(principal.user_id());
                uploads.push((key.clone(), image.bytes.clone()));
                (image, key)
            }
        })
    }

    #[cfg(feature = "fetch")]
    async fn fetch_url(&self, url: &crate::fetch::RemoteUrl) -> Result<SourceImage, GatewayError> {
        match &self.fetcher {
            Some(fetcher) => fetcher.fetch(url, "image_urls").await,
            None => Err(url_fetching_off()),
        }
    }

    #[cfg(not(feature = "fetch"))]
    async fn fetch_url(&self, _url: &crate::fetch::RemoteUrl) -> Result<SourceImage, GatewayError> {
        Err(url_fetching_off())
    }

    async fn fetch(&self, key: &FileKey, param: &'static str) -> Result<SourceImage, GatewayError> {
        let bytes = self
            .store
            .get(key)
            .await?
            .ok_or(GatewayError::ImageNotFound)?;
        source_image(bytes, param)
    }

    /// The stored image of a ready generation of the caller's, and its key.
    async fn generation_source(
        &self,
        principal: &Principal,
        id: GenerationId,
    ) -> Result<(SourceImage, FileKey), GatewayError> {
        let generation = self
            .generations
            .get(id)
            .await?
            .filter(|g| &g.owner == principal.user_id())
            .ok_or(GatewayError::GenerationNotFound)?;
        let key = generation.file_key;
        match generation.status {
            GenerationStatus::Ready => Ok((self.fetch(&key, "generation_id").await?, key)),
            GenerationStatus::Failed => Err(GatewayError::GenerationNotFound),
            GenerationStatus::Pending => {
                // Bytes in the store were stored after their charge: the generation is
                // ready (its record is marked a moment after its answer, or was not, its
                // process gone). Without them it is still being stored, or, past the
                // pending timeout, lost: left for the job runner's sweep, which refunds it.
                let Some(bytes) = self.store.get(&key).await? else {
                    let age = unix_now().saturating_sub(generation.created);
                    if age < self.pending_timeout.as_secs() {
                        return Err(GatewayError::GenerationNotReady {
                            retry_after: RETRY_PENDING,
                        });
                    }
                    return Err(GatewayError::GenerationNotFound);
                };
                Ok((source_image(bytes, "generation_id")?, key))
            }
        }
    }
}

/// The answer to an `https://` reference on a gateway that fetches none.
fn url_fetching_off() -> GatewayError {
    GatewayError::invalid_request(
        "this gateway does not fetch https:// image URLs; upload the image, or send it as a \
         data:image/...;base64 URI",
        Some("image_urls"),
    )
}

/// Refuses a compose that names one stored image twice in two ways (a key and the
/// generation stored under it). References equal as written were refused by normalization.
fn distinct(keys: &[FileKey]) -> Result<(), GatewayError> {
    for (i, key) in keys.iter().enumerate() {
        if keys[..i].contains(key) {
            return Err(GatewayError::invalid_request(
                "the same image is referenced twice; each reference must be distinct",
                Some("image_keys"),
            ));
        }
    }
    Ok(())
}

/// A stored source, its type read from its bytes.
fn source_image(bytes: Bytes, param: &'static str) -> Result<SourceImage, GatewayError> {
    let kind = ImageKind::sniff(&bytes).ok_or(GatewayError::ImageTypeUnsupported { param })?;
    Ok(SourceImage::new(bytes, kind))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::UserId;
    use crate::generations::{Generation, MemoryGenerations};
    use crate::store::MemoryFileStore;

    const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    /// Sources with one generation of alice's left pending since the epoch (its writer died),
    /// its file stored or not.
    async fn stale(stored: bool) -> (Sources, Principal, GenerationId) {
        let alice = UserId::new("alice").unwrap();
        let (store, generations) = (MemoryFileStore::new(), MemoryGenerations::new());
        let id = GenerationId::new();
        let key = FileKey::new(&alice, id.as_uuid(), "generation.png");
        let record = Generation::new(id, key.clone(), GenerationStatus::Pending, 0);
        generations.insert(&record).await.unwrap();
        if stored {
            store
                .put(&key, Bytes::from_static(PNG_MAGIC))
                .await
                .unwrap();
        }
        let sources = Sources {
            store: Arc::new(store),
            generations: Arc::new(generations),
            pending_timeout: crate::backend::PENDING_TIMEOUT,
            #[cfg(feature = "fetch")]
            fetcher: None,
            admission: None,
        };
        (sources, Principal::new(alice), id)
    }

    #[tokio::test]
    async fn a_stale_pending_generation_with_its_file_is_ready_and_used() {
        let (sources, alice, id) = stale(true).await;
        let (image, key) = sources
            .resolve(&alice, &Reference::Generation(id), &mut Uploads::new())
            .await
            .unwrap();
        assert_eq!(&image.bytes[..], PNG_MAGIC);
        assert_eq!(
            key.as_str(),
            format!("files/alice/{}_generation.png", id.as_uuid())
        );
    }

    #[tokio::test]
    async fn a_stale_pending_generation_without_its_file_is_not_found_and_left_to_the_sweep() {
        let (sources, alice, id) = stale(false).await;
        let error = sources
            .resolve(&alice, &Reference::Generation(id), &mut Uploads::new())
            .await
            .unwrap_err();
        assert!(
            matches!(error, GatewayError::GenerationNotFound),
            "{error:?}"
        );
        // Still pending: the job runner's sweep ends it, refunding its charge.
        let record = sources.generations.get(id).await.unwrap().unwrap();
        assert_eq!(record.status, GenerationStatus::Pending);
    }
}
