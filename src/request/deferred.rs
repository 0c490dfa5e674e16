//! `Prefer: respond-async` (RFC 7240): a job answered `202 Accepted` once its hold is
//! taken, then run to its end on a task of its own and read back through the job API.
//!
//! Everything a synchronous request checks is checked first, and answered as it would be
//! (400, 401, 402, 404, 409, 413, 429); the job's record is written with its hold taken,
//! before the `202`. From then on nobody waits on the connection: the job's "client" is
//! the board's cancel handle, which `DELETE /v1/images/jobs/{id}` drops (a queued job is
//! then cancelled and refunded; a begun one runs on).

use http::{header, HeaderValue, Response, StatusCode};
use tokio::sync::{mpsc, oneshot};
use tower::ServiceExt;

use crate::clock::unix_now;
use crate::id::JobId;
use crate::job::{EditOutcome, EditRequest, Progress, Stage, Step};
use crate::jobs::{job_json, Echo, EventId, JobBoard, JobRecord, Live, Names};
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

/// Runs `edit` through `inner` as an async job on `board`: `202` with the job once its hold
/// is taken, or the error a synchronous request would have been answered.
pub(crate) async fn submit<S>(
    inner: S,
    mut edit: EditRequest,
    board: JobBoard,
) -> Response<ResponseBody>
where
    S: Stage<EditRequest, EditOutcome>,
{
    if let Err(error) = board.admit(edit.principal.user_id()).await {
        return error.into_response();
    }
    let (cancel, watch) = ClientWatch::new();
    edit.client = watch;
    let (progress, steps) = Progress::channel(edit.params.partial_images);
    edit.progress = progress.clone();
    let record = JobRecord::queued(
        JobId::new(),
        edit.principal.user_id().clone(),
        edit.operation,
        edit.params.model.clone(),
        edit.params.n,
        unix_now(),
        Echo::of(&edit.params),
    );
    let names = Names::of(edit.operation, &edit.params);
    let (accepted, answer) = oneshot::channel();
    let run = Run {
        board,
        record,
        names,
        progress,
        pending: Some((accepted, cancel)),
        live: None,
    };
    tokio::spawn(run.drive(inner.oneshot(edit), steps));
    match answer.await {
        Ok(Ok(record)) => accepted_response(&record),
        Ok(Err(error)) => error.into_response(),
        // The task ended without a word: it only does so when its runtime shuts down.
        Err(_) => GatewayError::Internal.into_response(),
    }
}

/// `202 Accepted`, the job's body, where to find it, and that the preference was honoured.
fn accepted_response(record: &JobRecord) -> Response<ResponseBody> {
    let mut response = crate::body::json(StatusCode::ACCEPTED, job_json(record, None, false));
    let headers = response.headers_mut();
    let location = format!("{}/{}", crate::jobs::JOBS_PATH, record.id);
    // A job id is a UUID: always a valid header value.
    if let Ok(value) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, value);
    }
    headers.insert(
        "preference-applied",
        HeaderValue::from_static("respond-async"),
    );
    if let Ok(value) = HeaderValue::from_str(&record.id.to_string()) {
        headers.insert("x-job-id", value);
    }
    response
}

/// One async job's task: records its steps and its end on the board.
struct Run {
    board: JobBoard,
    record: JobRecord,
    names: Names,
    progress: Progress,
    /// Until the job is accepted: whom to answer, and the handle that cancels it.
    pending: Option<(
        oneshot::Sender<Result<JobRecord, GatewayError>>,
        ClientHandle,
    )>,
    live: Option<std::sync::Arc<Live>>,
}

impl Run {
    async fn drive(
        mut self,
        job: impl std::future::Future<Output = Result<EditOutcome, GatewayError>>,
        mut steps: mpsc::UnboundedReceiver<Step>,
    ) {
        tokio::pin!(job);
        let outcome = loop {
            tokio::select! {
                Some(step) = steps.recv() => self.step(step).await,
                outcome = &mut job => break outcome,
            }
        };
        // Steps sent in the poll that ended the job come before its end.
        while let Ok(step) = steps.try_recv() {
            self.step(step).await;
        }
        if self.live.is_none() {
            match outcome {
                // Refused before its hold: answered as a synchronous request would be.
                Err(error) => {
                    if let Some((answer, _)) = self.pending.take() {
                        let _ = answer.send(Err(error));
                    }
                    return;
                }
                // An idempotent replay takes no hold: accepted and ended at once.
                Ok(_) => self.accept().await,
            }
        }
        if let Some(live) = self.live.take() {
            self.board
                .finish(&mut self.record, &live, outcome, &self.names)
                .await;
        }
    }

    async fn step(&mut self, step: Step) {
        match step {
            Step::Held => self.accept().await,
            Step::Started => {
                if let Some(live) = &self.live {
                    self.board.started(&mut self.record, live).await;
                }
            }
            Step::Partial { index, image } => {
                if let Some(live) = &self.live {
                    let frame = self.names.partial(index, &image.bytes);
                    live.log.push(EventId::Partial(index), frame);
                }
            }
        }
    }

    /// Writes the job's record and answers `202`, once.
    async fn accept(&mut self) {
        let Some((answer, cancel)) = self.pending.take() else {
            return;
        };
        match self
            .board
            .accept(&self.record, cancel, self.progress.clone())
            .await
        {
            Ok(live) => {
                self.live = Some(live);
                let _ = answer.send(Ok(self.record.clone()));
            }
            // The job runs on (its hold is taken and ends with it; its images, if any, are
            // charged and listed in the caller's files), but it has no record to read.
            Err(error) => {
                tracing::error!(%error, job = %self.record.id, "recording an accepted job failed");
                let _ = answer.send(Err(error));
            }
        }
    }
}
