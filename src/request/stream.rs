//! `stream: true`: a job answered as server-sent events, OpenAI's image stream.
//!
//! ```text
//! event: image_edit.partial_image          (0 to partial_images of them)
//! data: {"type":"image_edit.partial_image","b64_json":..,"partial_image_index":0,..}
//!
//! event: image_edit.completed              (one per image returned)
//! data: {"type":"image_edit.completed","b64_json":..,"usage":{..},"picklyone_generation_id":..}
//! ```
//!
//! Generations name their events `image_generation.*`. The answer's status and headers wait
//! for the job's hold: until it is taken, a refusal (402, 404, 429, ...) is the usual JSON
//! error. After, a failure is one `data: {"error": {...}}` frame, which the SDKs raise. A
//! comment line (`: keep-alive`) goes out whenever nothing else has for the keep-alive
//! period, so proxies do not cut a long render.
//!
//! A client that leaves mid-stream drops the body. Before the backend was given the job,
//! that cancels it (hold released); after, the job is owed work (a partial image is work
//! done): it runs to its end, is charged for the images it returns, and they are stored
//! and listed as if the stream had been read.

use std::time::Duration;

use bytes::Bytes;
use http::Response;
use tokio::sync::{mpsc, oneshot};
use tower::ServiceExt;
use tracing::Instrument;

use super::deferred::{with_job_id, Track};
use crate::id::JobId;
use crate::job::{EditOutcome, EditRequest, Progress, Stage, Step};
use crate::jobs::{error_frame, event_stream, JobBoard, Names};
use crate::lease::ClientHandle;
use crate::{GatewayError, ResponseBody};

/// Frames buffered between the job's task and the connection; a slow reader holds the
/// task back rather than growing a queue.
const FRAME_BUFFER: usize = 2;

/// Runs `edit` through `inner` on a task of its own and answers with its event stream (or,
/// when it fails before its hold is taken, with the error). `client` is dropped when the
/// stream's reader is gone, which tells billing the client left. With a `board`, the job
/// is recorded there (its head carries `x-job-id`), its events go to its log too, and the
/// task follows the job to its end after the reader left, so its record ends with it.
pub(crate) async fn respond<S>(
    inner: S,
    mut edit: EditRequest,
    client: ClientHandle,
    keepalive: Duration,
    board: Option<JobBoard>,
) -> Response<ResponseBody>
where
    S: Stage<EditRequest, EditOutcome>,
{
    let (progress, steps) = Progress::channel(edit.params.partial_images);
    edit.progress = progress.clone();
    let names = Names::of(edit.operation, &edit.params);
    let track = board.map(|board| Track::new(board, &edit, progress));
    let (start, started) = oneshot::channel();
    let (frames, body) = mpsc::channel(FRAME_BUFFER);
    let relay = Relay {
        start: Some(start),
        frames,
        names,
        job: None,
    };
    let run = Run {
        relay,
        track,
        client: Some(client),
        keepalive,
    };
    tokio::spawn(run.drive(inner.oneshot(edit), steps).in_current_span());
    match started.await {
        Ok(Ok(id)) => {
            let mut response = event_stream(ResponseBody::stream(body));
            with_job_id(&mut response, id);
            response
        }
        Ok(Err(error)) => error.into_response(),
        // The task ended without a word: it only does so when its runtime shuts down.
        Err(_) => GatewayError::internal("a streamed job's task ended unanswered").into_response(),
    }
}

/// The reader left: the job's task stops.
struct Gone;

/// The job's side of one stream: the one-time signal that decides the answer's head, and
/// the frames of its body.
struct Relay {
    start: Option<oneshot::Sender<Result<Option<JobId>, GatewayError>>>,
    frames: mpsc::Sender<Bytes>,
    names: Names,
    /// The job's id, once it is recorded: sent in the answer's head.
    job: Option<JobId>,
}

impl Relay {
    /// Decides the answer's head, once.
    fn start(&mut self, decision: Result<(), GatewayError>) -> Result<(), Gone> {
        let job = self.job;
        match self.start.take() {
            Some(sender) => sender.send(decision.map(|()| job)).map_err(|_| Gone),
            None => Ok(()),
        }
    }

    fn started(&self) -> bool {
        self.start.is_none()
    }

    async fn send(&self, frame: Bytes) -> Result<(), Gone> {
        self.frames.send(frame).await.map_err(|_| Gone)
    }

    /// Relays one step of the job: its hold starts the stream; a partial is an event.
    async fn step(&mut self, step: Step) -> Result<(), Gone> {
        match step {
            Step::Held(_) => self.start(Ok(())),
            // A partial is framed once by `Run::step`, for this stream and the job's log.
            Step::Started | Step::Partial { .. } => Ok(()),
        }
    }

    /// Relays the job's end: one `completed` event per image, or an error (a frame once
    /// the stream started, the answer's head before).
    async fn end(&mut self, outcome: Result<EditOutcome, GatewayError>) -> Result<(), Gone> {
        match outcome {
            Ok(outcome) => {
                // An answer replayed for an idempotent retry never took a hold: start now.
                self.start(Ok(()))?;
                for image in &outcome.images {
                    let frame = self
                        .names
                        .completed(image.id.to_string(), &image.image.bytes);
                    self.send(frame).await?;
                }
                Ok(())
            }
            Err(error) if self.started() => self.send(error_frame(&error)).await,
            Err(error) => self.start(Err(error)),
        }
    }
}

/// One streamed job's task: the relay to its reader, and its record.
struct Run {
    relay: Relay,
    track: Option<Track>,
    /// Dropped when the reader leaves: the job learns its client is gone.
    client: Option<ClientHandle>,
    keepalive: Duration,
}

impl Run {
    /// Drives the job, turning its steps into frames, until it ends; without a record to
    /// keep, until the reader leaves.
    async fn drive(
        mut self,
        job: impl std::future::Future<Output = Result<EditOutcome, GatewayError>>,
        mut steps: mpsc::UnboundedReceiver<Step>,
    ) {
        tokio::pin!(job);
        let keepalive = self.keepalive;
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        let outcome = loop {
            let reading = self.client.is_some();
            tokio::select! {
                Some(step) = steps.recv() => {
                    if self.step(step).await.is_err() {
                        return;
                    }
                    ticks.reset();
                }
                outcome = &mut job => break outcome,
                () = self.relay.frames.closed(), if reading => {
                    if self.gone().is_err() {
                        return;
                    }
                }
                _ = ticks.tick(), if reading && self.relay.started() => {
                    let comment = Bytes::from_static(b": keep-alive\n\n");
                    if self.relay.send(comment).await.is_err() && self.gone().is_err() {
                        return;
                    }
                }
            }
        };
        // Steps the job sent in the poll that ended it (its hold, its last partials) come
        // before its end.
        while let Ok(step) = steps.try_recv() {
            if self.step(step).await.is_err() {
                return;
            }
        }
        match self.track.take() {
            Some(track) => {
                if self.client.is_some() {
                    let _ = self.relay.end(outcome.clone()).await;
                }
                track.end(outcome).await;
            }
            None => {
                let _ = self.relay.end(outcome).await;
            }
        }
    }

    /// Records and relays one step; `Err` when the reader left and nothing else needs
    /// the job's steps.
    async fn step(&mut self, step: Step) -> Result<(), Gone> {
        if let Step::Partial { index, image } = &step {
            // Framed once: the same bytes go to the reader and to the job's event log.
            let frame = self.relay.names.partial(*index, &image.bytes);
            if let Some(track) = &self.track {
                track.partial(*index, frame.clone());
            }
            let reading = self.client.is_some() && self.relay.started();
            if reading && self.relay.send(frame).await.is_err() {
                return self.gone();
            }
            return Ok(());
        }
        if let Some(track) = &mut self.track {
            match &step {
                Step::Held(_) => {
                    if let Err(error) = track.accept(None).await {
                        tracing::error!(%error, "recording a streamed job failed");
                    }
                    self.relay.job = track.id();
                }
                other => track.step(other),
            }
        }
        if self.client.is_some() && self.relay.step(step).await.is_err() {
            return self.gone();
        }
        Ok(())
    }

    /// The reader left: billing is told; the task goes on only to keep the job's record.
    fn gone(&mut self) -> Result<(), Gone> {
        self.client = None;
        match self.track {
            Some(_) => Ok(()),
            None => Err(Gone),
        }
    }
}
