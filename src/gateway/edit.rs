use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use tower_service::Service;

use super::{EditOutcome, GeneratedImage};
use crate::backend::{EditJob, ImageBackend};
use crate::future::ResponseFuture;
use crate::source::GenerationId;
use crate::GatewayError;

/// The innermost service: runs the backend and gives each returned image a generation id.
///
/// More images than `n` are cut to `n`; none at all is `502 upstream_error`.
#[derive(Clone)]
pub struct EditService {
    backend: Arc<dyn ImageBackend>,
}

impl EditService {
    /// Runs edits on `backend`.
    pub fn new(backend: Arc<dyn ImageBackend>) -> Self {
        EditService { backend }
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
        let backend = self.backend.clone();
        ResponseFuture::new(async move {
            let mut images = backend.edit(&job).await?;
            images.truncate(job.params.n as usize);
            if images.is_empty() {
                tracing::warn!("image backend returned no images");
                return Err(GatewayError::Upstream);
            }
            let images = images
                .into_iter()
                .map(|image| GeneratedImage::new(GenerationId::new(), image))
                .collect();
            Ok(EditOutcome::new(unix_now(), images))
        })
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
