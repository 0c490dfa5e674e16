use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::ServiceExt;
use tower_service::Service;
use uuid::Uuid;

use super::GenerationId;
use crate::auth::Principal;
use crate::backend::EditJob;
use crate::future::ResponseFuture;
use crate::gateway::unix_now;
use crate::request::{EditRequest, ImageKind, Source, SourceImage};
use crate::store::{FileKey, FileStore, GenerationStatus, Generations};
use crate::GatewayError;

/// How long a client is asked to wait for a pending generation.
const RETRY_PENDING: Duration = Duration::from_secs(1);

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
}

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

impl<S, R> Service<EditRequest> for ResolveSource<S>
where
    S: Service<EditJob, Response = R, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
    R: Send + 'static,
{
    type Response = R;
    type Error = GatewayError;
    type Future = ResponseFuture<R, GatewayError>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: EditRequest) -> Self::Future {
        let inner = self.inner.clone();
        let sources = self.sources.clone();
        ResponseFuture::new(async move {
            let (images, keys) = sources.resolve(&req.principal, req.source).await?;
            let mut job = EditJob::new(req.principal, images, req.params);
            job.source_keys = keys;
            job.request_id = req.request_id;
            inner.oneshot(job).await
        })
    }
}

impl Sources {
    /// The source images and the keys they are stored under.
    async fn resolve(
        &self,
        principal: &Principal,
        source: Source,
    ) -> Result<(Vec<SourceImage>, Vec<FileKey>), GatewayError> {
        match source {
            Source::Upload(images) => {
                // The spec: multipart sources are uploads of the caller, fetchable by key.
                let mut keys = Vec::with_capacity(images.len());
                for image in &images {
                    let name = image
                        .filename
                        .clone()
                        .unwrap_or_else(|| format!("upload.{}", image.kind.extension()));
                    let key = FileKey::new(principal.user_id(), Uuid::new_v4(), &name);
                    self.store.put(&key, image.bytes.clone()).await?;
                    keys.push(key);
                }
                Ok((images, keys))
            }
            Source::ImageKey(key) => {
                let image = self.fetch(&key, "image_key").await?;
                Ok((vec![image], vec![key]))
            }
            Source::Generation(id) => {
                let key = self.generation_key(principal, id).await?;
                let image = self.fetch(&key, "generation_id").await?;
                Ok((vec![image], vec![key]))
            }
        }
    }

    async fn fetch(&self, key: &FileKey, param: &'static str) -> Result<SourceImage, GatewayError> {
        let bytes = self
            .store
            .get(key)
            .await?
            .ok_or(GatewayError::ImageNotFound)?;
        let kind = ImageKind::sniff(&bytes).ok_or(GatewayError::ImageTypeUnsupported { param })?;
        Ok(SourceImage {
            bytes,
            kind,
            filename: None,
        })
    }

    /// The file key of a ready generation of the caller's.
    async fn generation_key(
        &self,
        principal: &Principal,
        id: GenerationId,
    ) -> Result<FileKey, GatewayError> {
        let generation = self
            .generations
            .get(id)
            .await?
            .filter(|g| &g.owner == principal.user_id())
            .ok_or(GatewayError::GenerationNotFound)?;
        match generation.status {
            GenerationStatus::Ready => Ok(generation.file_key),
            GenerationStatus::Failed => Err(GatewayError::GenerationNotFound),
            GenerationStatus::Pending => {
                let age = unix_now().saturating_sub(generation.created);
                if age < self.pending_timeout.as_secs() {
                    return Err(GatewayError::GenerationNotReady {
                        retry_after: RETRY_PENDING,
                    });
                }
                // The process that was storing it is gone: settle the record by the store.
                let stored = self.store.get(&generation.file_key).await?.is_some();
                let status = if stored {
                    GenerationStatus::Ready
                } else {
                    GenerationStatus::Failed
                };
                self.generations.set_status(id, status).await?;
                if stored {
                    Ok(generation.file_key)
                } else {
                    Err(GatewayError::GenerationNotFound)
                }
            }
        }
    }
}
