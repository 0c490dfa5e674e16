//! Every request's work as a job on the [`JobBoard`]: recorded once its hold is taken,
//! whichever way its client waits for it.
//!
//! - Synchronous: the answer waits for the job's end and carries `x-job-id`.
//! - `Prefer: respond-async` (RFC 7240): `202 Accepted` once the hold is taken; the job is
//!   then read back through the job API. Everything a synchronous request checks is
//!   checked first and answered as it would be (400, 401, 402, 404, 409, 413, 429). Its
//!   "client" is the board's cancel handle, which `DELETE /v1/images/jobs/{id}` drops (a
//!   queued job is then cancelled and refunded; a begun one runs on).
//! - Streamed: see [`stream`](super::stream), which records its job the same way.
//!
//! The job is driven on a task of its own, so its record reaches its end even when the
//! client is gone; the client's leaving reaches billing through its `ClientWatch`.

use std::sync::Arc;

use http::{header, HeaderValue, Response, StatusCode};
use tokio::sync::{mpsc, oneshot};
use tower::ServiceExt;
use tracing::Instrument;

use crate::clock::unix_now;
use crate::id::{JobId, RequestId};
use crate::job::{EditOutcome, EditParams, EditRequest, Progress, Stage, Step};
use crate::jobs::{job_json, Echo, EventId, JobBoard, JobRecord, Live, Names, Rerun};
use crate::lease::{ClientHandle, ClientWatch};
use crate::{GatewayError, ResponseBody};

/// Whether a `Prefer` header asks for an async answer: `respond-async` among its
/// comma-separated preferences, any case, parameters ignored.
pub(crate) fn prefers_async(headers: &http::HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.split(';').next())
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
}

/// What one job records on the board as it goes: accepted with its hold, begun, its
/// partial images, its end.
pub(crate) struct Track {
    board: JobBoard,
    record: JobRecord,
    names: Names,
    progress: Progress,
    live: Option<Arc<Live>>,
    /// An async job's request, which its record keeps (with its ticket, once held) so
    /// another process can run it again.
    request: Option<(RequestId, EditParams)>,
}

impl Track {
    /// The job of `edit`, whose steps go to `progress`.
    pub(crate) fn new(board: JobBoard, edit: &EditRequest, progress: Progress) -> Track {
        let record = JobRecord::queued(
            JobId::new(),
            edit.principal.user_id().clone(),
            edit.operation,
            edit.params.model.clone(),
            edit.params.n,
            unix_now(),
            Echo::of(&edit.params),
        );
        Track {
            board,
            names: Names::of(edit.operation, &edit.params),
            record,
            progress,
            live: None,
            request: None,
        }
    }

    /// The job of a claimed `record` (its process died), run again here as `edit`; its
    /// record is written already.
    pub(crate) fn resumed(
        board: JobBoard,
        record: JobRecord,
        edit: &EditRequest,
        progress: Progress,
        cancel: ClientHandle,
    ) -> Track {
        let live = board.adopt(record.clone(), Some(cancel), progress.clone());
        Track {
            board,
            names: Names::of(edit.operation, &edit.params),
            record,
            progress,
            live: Some(live),
            request: None,
        }
    }

    /// The job's id, once it is recorded.
    pub(crate) fn id(&self) -> Option<JobId> {
        self.live.as_ref().map(|_| self.record.id)
    }

    /// Records the job (its hold is taken); `cancel` is an async job's cancel handle.
    pub(crate) async fn accept(
        &mut self,
        cancel: Option<ClientHandle>,
    ) -> Result<JobRecord, GatewayError> {
        if self.live.is_none() {
            let live = self
                .board
                .accept(&self.record, cancel, self.progress.clone())
                .await?;
            self.live = Some(live);
        }
        Ok(self.record.clone())
    }

    /// Records a step after the hold: the backend began, or showed a partial image.
    pub(crate) fn step(&mut self, step: &Step) {
        let Some(live) = &self.live else {
            return;
        };
        match step {
            Step::Started => self.board.started(&mut self.record, live),
            Step::Partial { index, image } => {
                self.partial(*index, self.names.partial(*index, &image.bytes));
            }
            Step::Held(_) => {}
        }
    }

    /// Keeps a partial image's event, already framed, for readers of the job's events.
    pub(crate) fn partial(&self, index: u8, frame: bytes::Bytes) {
        if let Some(live) = &self.live {
            live.log.push(EventId::Partial(index), frame);
        }
    }

    /// Records the job's end. A job never accepted (refused before its hold) leaves no
    /// record; one that ended without a hold (an idempotent replay) is recorded now.
    pub(crate) async fn end(mut self, outcome: Result<EditOutcome, GatewayError>) {
        if self.live.is_none() && outcome.is_ok() {
            if let Err(error) = self.accept(None).await {
                tracing::error!(%error, "recording a replayed job failed");
            }
        }
        if let Some(live) = self.live.take() {
            self.board
                .finish(&mut self.record, &live, &outcome, &self.names)
                .await;
        }
    }
}

/// Runs `edit` through `inner` as an async job on `board`: `202` with the job once its
/// hold is taken, or the error a synchronous request would have been answered.
pub(crate) async fn submit<S>(
    inner: S,
    mut edit: EditRequest,
    board: JobBoard,
    webhook: Option<String>,
) -> Response<ResponseBody>
where
    S: Stage<EditRequest, EditOutcome>,
{
    let webhook = match webhook {
        Some(raw) => match board.check_webhook(&raw).await {
            Ok(url) => Some(url),
            Err(error) => return error.into_response(),
        },
        None => None,
    };
    if let Err(error) = board.admit(edit.principal.user_id()).await {
        return error.into_response();
    }
    let (cancel, watch) = ClientWatch::new();
    edit.client = watch;
    edit.by_store = true;
    let (progress, steps) = Progress::channel(edit.params.partial_images);
    edit.progress = progress.clone();
    let mut track = Track::new(board, &edit, progress);
    track.record.webhook = webhook;
    track.request = Some((edit.request_id.clone(), edit.params.clone()));
    let (accepted, answer) = oneshot::channel();
    let waiter = Waiter::Accepted(Some((accepted, cancel)));
    // In the request's span: the job's logs (billing's among them) keep its id.
    tokio::spawn(drive(inner.oneshot(edit), steps, track, waiter).in_current_span());
    match answer.await {
        Ok(Ok(record)) => accepted_response(&record),
        Ok(Err(error)) => error.into_response(),
        // The task ended without a word: it only does so when its runtime shuts down.
        Err(_) => GatewayError::internal("an async job's task ended unanswered").into_response(),
    }
}

/// Runs `edit` through `inner` as a job on `board` and answers with its outcome and its
/// `x-job-id`. `client` is dropped with this future (the client left), which billing
/// sees; the job's record is kept on a task of its own either way.
pub(crate) async fn answer<S>(
    inner: S,
    mut edit: EditRequest,
    client: ClientHandle,
    board: JobBoard,
) -> Response<ResponseBody>
where
    S: Stage<EditRequest, EditOutcome>,
{
    let _client = client;
    // A synchronous answer shows no partial images: none are made.
    let (progress, steps) = Progress::channel(0);
    edit.progress = progress.clone();
    let track = Track::new(board, &edit, progress);
    let (ended, answer) = oneshot::channel();
    tokio::spawn(drive(inner.oneshot(edit), steps, track, Waiter::Ended(ended)).in_current_span());
    let Ok((id, outcome)) = answer.await else {
        return GatewayError::internal("a job's task ended unanswered").into_response();
    };
    let mut response = match outcome {
        Ok(outcome) => outcome.into_response(),
        Err(error) => error.into_response(),
    };
    with_job_id(&mut response, id);
    response
}

/// Adds `x-job-id` when there is a job.
pub(crate) fn with_job_id(response: &mut Response<ResponseBody>, id: Option<JobId>) {
    // A job id is a UUID: always a valid header value.
    if let Some(value) = id.and_then(|id| HeaderValue::from_str(&id.to_string()).ok()) {
        response.headers_mut().insert("x-job-id", value);
    }
}

/// `202 Accepted`, the job's body, where to find it, and that the preference was honoured.
fn accepted_response(record: &JobRecord) -> Response<ResponseBody> {
    let mut response = crate::body::json(StatusCode::ACCEPTED, job_json(record, None, false));
    let location = format!("{}/{}", crate::jobs::JOBS_PATH, record.id);
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response.headers_mut().insert(
        "preference-applied",
        HeaderValue::from_static("respond-async"),
    );
    with_job_id(&mut response, Some(record.id));
    response
}

/// Who waits on a job driven by [`drive`].
pub(crate) enum Waiter {
    /// An async submission: answered once the job is recorded, or with its refusal. Holds
    /// the job's cancel handle until then.
    Accepted(
        Option<(
            oneshot::Sender<Result<JobRecord, GatewayError>>,
            ClientHandle,
        )>,
    ),
    /// A synchronous request: answered with the outcome (and the job's id, if it has one).
    Ended(oneshot::Sender<(Option<JobId>, Result<EditOutcome, GatewayError>)>),
}

/// Drives one job to its end, recording its steps on the board and telling its waiter.
pub(crate) async fn drive(
    job: impl std::future::Future<Output = Result<EditOutcome, GatewayError>>,
    mut steps: mpsc::UnboundedReceiver<Step>,
    mut track: Track,
    mut waiter: Waiter,
) {
    tokio::pin!(job);
    let outcome = loop {
        tokio::select! {
            Some(step) = steps.recv() => on_step(&mut track, &mut waiter, step).await,
            outcome = &mut job => break outcome,
        }
    };
    // Steps sent in the poll that ended the job come before its end.
    while let Ok(step) = steps.try_recv() {
        on_step(&mut track, &mut waiter, step).await;
    }
    match waiter {
        Waiter::Ended(ended) => {
            let _ = ended.send((track.id(), outcome.clone()));
            track.end(outcome).await;
        }
        Waiter::Accepted(None) => track.end(outcome).await,
        Waiter::Accepted(Some((accepted, cancel))) => match outcome {
            // Refused before its hold: answered as a synchronous request would be.
            Err(error) => {
                let _ = accepted.send(Err(error));
            }
            // An idempotent replay takes no hold: accepted and ended at once.
            Ok(outcome) => {
                let _ = accepted.send(track.accept(Some(cancel)).await);
                track.end(Ok(outcome)).await;
            }
        },
    }
}

async fn on_step(track: &mut Track, waiter: &mut Waiter, step: Step) {
    match (&step, waiter) {
        (Step::Held(ticket), Waiter::Accepted(pending)) => {
            if let Some((accepted, cancel)) = pending.take() {
                if let Some((request_id, params)) = track.request.take() {
                    track.record.rerun = Some(Rerun::new(ticket.clone(), request_id, params));
                }
                // Without a record the job runs on (its hold ends with it; its images are
                // charged and listed in the caller's files), and the client is told.
                let recorded = track.accept(Some(cancel)).await;
                if let Err(error) = &recorded {
                    tracing::error!(%error, "recording an accepted job failed");
                }
                let _ = accepted.send(recorded);
            }
        }
        (Step::Held(_), Waiter::Ended(_)) => {
            if let Err(error) = track.accept(None).await {
                tracing::error!(%error, "recording a job failed; it is answered without an id");
            }
        }
        _ => track.step(&step),
    }
}
