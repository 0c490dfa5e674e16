use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::ServiceExt;
use tower_service::Service;
use tracing::Instrument;

use super::{Begin, IdempotencyRecords};
use crate::auth::UserId;
use crate::job::{EditOutcome, EditRequest, GeneratedImage, Image, Stage};

use crate::clock::unix_now;
use crate::future::{run_to_end, ResponseFuture};

use crate::id::GenerationId;

use crate::generations::{GenerationStatus, Generations};
use crate::store::FileStore;
use crate::GatewayError;

/// Answers a retried request with its first result; see the module docs.
#[derive(Clone)]
pub struct Idempotency<S> {
    pub(super) inner: S,
    pub(super) records: Arc<dyn IdempotencyRecords>,
    pub(super) store: Arc<dyn FileStore>,
    pub(super) generations: Arc<dyn Generations>,
}

impl<S> std::fmt::Debug for Idempotency<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency").finish_non_exhaustive()
    }
}

impl<S> Service<EditRequest> for Idempotency<S>
where
    S: Stage<EditRequest, EditOutcome>,
{
    type Response = EditOutcome;
    type Error = GatewayError;
    type Future = ResponseFuture<EditOutcome, GatewayError>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: EditRequest) -> Self::Future {
        let this = self.clone();
        ResponseFuture::new(async move {
            let Some(key) = req.idempotency_key.clone() else {
                return this.inner.oneshot(req).await;
            };
            let user = req.principal.user_id().clone();
            let fingerprint = req.fingerprint();
            match this
                .records
                .begin(&user, &key, &fingerprint, unix_now())
                .await?
            {
                Begin::New => this.run(req, user, key).await,
                Begin::InProgress => Err(GatewayError::IdempotencyKeyInUse {
                    retry_after: Duration::from_secs(1),
                }),
                Begin::Mismatch => Err(GatewayError::IdempotencyKeyReused),
                Begin::Done {
                    created,
                    generations,
                } => {
                    replay(
                        &*this.generations,
                        &*this.store,
                        &user,
                        created,
                        &generations,
                    )
                    .await
                }
            }
        })
    }
}

impl<S> Idempotency<S>
where
    S: Stage<EditRequest, EditOutcome>,
{
    /// Runs the request and ends its record with the work, not with the socket: billed work
    /// can outlive its client (and is then charged), so the key is completed when it ends (a
    /// retry replays the first answer) or abandoned when it fails (a retry runs again).
    async fn run(
        self,
        req: EditRequest,
        user: UserId,
        key: String,
    ) -> Result<EditOutcome, GatewayError> {
        let work = async move {
            // Dropped before the end (a panic, a runtime going down): forget the key so
            // a retry runs.
            let forget = ForgetOnDrop {
                records: Some(self.records.clone()),
                user: user.clone(),
                key: key.clone(),
            };
            let answer = self.inner.oneshot(req).await;
            let records = forget.disarm();
            match &answer {
                Ok(outcome) => {
                    let ids: Vec<GenerationId> = outcome.images.iter().map(|g| g.id).collect();
                    records.complete(&user, &key, outcome.created, &ids).await?;
                }
                Err(_) => records.abandon(&user, &key).await?,
            }
            answer
        };
        run_to_end(work.in_current_span()).await
    }
}

/// The first answer again, from the stored generations.
async fn replay(
    generations: &dyn Generations,
    store: &dyn FileStore,
    user: &UserId,
    created: u64,
    ids: &[GenerationId],
) -> Result<EditOutcome, GatewayError> {
    let mut images = Vec::with_capacity(ids.len());
    for id in ids {
        let generation = generations
            .get(*id)
            .await?
            .filter(|g| &g.owner == user)
            .ok_or(GatewayError::GenerationNotFound)?;
        // Bytes in the store were stored after their charge: a pending record with them is
        // ready (marked so a moment after its answer).
        let stored = match generation.status {
            GenerationStatus::Failed => return Err(GatewayError::GenerationNotFound),
            _ => store.get(&generation.file_key).await?,
        };
        let bytes = match (stored, generation.status) {
            (Some(bytes), _) => bytes,
            (None, GenerationStatus::Pending) => {
                return Err(GatewayError::GenerationNotReady {
                    retry_after: Duration::from_secs(1),
                })
            }
            (None, _) => return Err(GatewayError::ImageNotFound),
        };
        images.push(GeneratedImage::new(*id, Image::stored(bytes)));
    }
    Ok(EditOutcome::new(created, images))
}

struct ForgetOnDrop {
    records: Option<Arc<dyn IdempotencyRecords>>,
    user: UserId,
    key: String,
}

impl ForgetOnDrop {
    fn disarm(mut self) -> Arc<dyn IdempotencyRecords> {
        match self.records.take() {
            Some(records) => records,
            None => unreachable!("disarmed once"),
        }
    }
}

impl Drop for ForgetOnDrop {
    fn drop(&mut self) {
        let Some(records) = self.records.take() else {
            return;
        };
        let (user, key) = (self.user.clone(), std::mem::take(&mut self.key));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = records.abandon(&user, &key).await;
            });
        }
    }
}
