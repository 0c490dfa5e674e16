//! Async jobs whose process died, run again: a job accepted is delivered or refunded.
//!
//! Every async job's record keeps its request (its parameters, and its images as stored
//! keys) and its hold, and is leased to the process that runs it, which renews the lease
//! while it lives. A [`JobRunner`] (one per process, spawned beside the gateway) renews
//! this process's leases and takes over the jobs whose lease lapsed: each is run again
//! through the same layers, under the hold its first run took, so it is charged once (a
//! settle on a hold another run ended charges nothing and publishes nothing). A job whose
//! earlier run was charged and stored its images ends `succeeded` with them, without
//! running again. A job that cannot run again (its hold ended, its images gone, or too
//! many runs) ends `failed` and its hold, if still open, is released.

use std::sync::Arc;
use std::time::Duration;

use tower::util::BoxCloneSyncService;
use tower::ServiceExt;
use tracing::Instrument;

use super::deferred::{drive, Track, Waiter};
use crate::auth::Principal;
use crate::backend::{Outputs, PENDING_TIMEOUT};
use crate::clock::unix_now;
use crate::job::{EditOutcome, EditRequest, GeneratedImage, Progress, Reference, RequestContext};
use crate::jobs::{JobBoard, JobRecord};
use crate::lease::ClientWatch;
use crate::ledger::Ledger;
use crate::GatewayError;

/// How many runs a job gets in all before it is given up (failed, refunded).
pub const MAX_JOB_ATTEMPTS: u32 = 3;

/// How many lapsed jobs one pass takes over.
const CLAIM_BATCH: usize = 16;

/// How many pending generations one pass of the sweep ends.
const SWEEP_BATCH: usize = 64;

/// The service a job runs through: source resolution, billing and the backend.
pub(crate) type JobStack = BoxCloneSyncService<EditRequest, EditOutcome, GatewayError>;

/// Renews this process's leases on its async jobs and runs again the jobs of processes
/// that died. Get it from [`Gateway::job_runner`](crate::Gateway::job_runner) and spawn
/// [`run`](Self::run) on every process that serves the gateway (or on none: a job is then
/// ended `failed` when read, once its lease and the job timeout have passed).
#[derive(Clone)]
pub struct JobRunner {
    /// Whether this process is its records' only runner ([`take_all`](Self::take_all)
    /// was called): nobody else then leaves generations pending after its start.
    sole: Arc<std::sync::atomic::AtomicBool>,
    board: JobBoard,
    stack: JobStack,
    ledger: Arc<dyn Ledger>,
    /// Where jobs' images go: the generations a process that died left pending are ended
    /// here too (ready, or refunded).
    outputs: Outputs,
}

impl std::fmt::Debug for JobRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRunner").finish_non_exhaustive()
    }
}

impl JobRunner {
    pub(crate) fn new(
        board: JobBoard,
        stack: JobStack,
        ledger: Arc<dyn Ledger>,
        outputs: Outputs,
    ) -> Self {
        JobRunner {
            sole: Arc::default(),
            board,
            stack,
            ledger,
            outputs,
        }
    }

    /// Takes over every open async job at once, whatever its lease, after ending every
    /// pending generation: for a process that is the only one using its records (SQLite),
    /// started after one that died, before it serves. Answers how many jobs it took.
    pub async fn take_all(&self) -> Result<usize, GatewayError> {
        // First, while no job of this process stores anything: every pending generation
        // is an earlier run's.
        self.sole.store(true, std::sync::atomic::Ordering::Release);
        while self
            .outputs
            .sweep(&*self.ledger, u64::MAX, SWEEP_BATCH)
            .await?
            == SWEEP_BATCH
        {}
        self.take(u64::MAX).await
    }

    /// Forever: renews this process's leases three times per lease period, takes over
    /// the jobs whose lease lapsed, and (unless it is the sole runner, which ended them at
    /// its start) ends generations pending for longer than any store takes.
    pub async fn run(self) {
        let every = (self.board.lease_period() / 3).max(Duration::from_millis(200));
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            if let Err(error) = self.board.renew_leases().await {
                tracing::warn!(%error, "renewing this process's job leases failed");
            }
            if let Err(error) = self.take(unix_now()).await {
                tracing::warn!(%error, "taking over lapsed jobs failed");
            }
            if self.sole.load(std::sync::atomic::Ordering::Acquire) {
                continue;
            }
            let before = unix_now().saturating_sub(PENDING_TIMEOUT.as_secs());
            if let Err(error) = self.outputs.sweep(&*self.ledger, before, SWEEP_BATCH).await {
                tracing::warn!(%error, "ending generations left pending failed");
            }
        }
    }

    /// Takes over every open job whose lease ended before `before`, a batch at a time.
    async fn take(&self, before: u64) -> Result<usize, GatewayError> {
        let mut taken = 0;
        loop {
            let claimed = self.board.claim(before, CLAIM_BATCH).await?;
            if claimed.is_empty() {
                return Ok(taken);
            }
            taken += claimed.len();
            for record in claimed {
                self.resume(record).await;
            }
        }
    }

    /// Runs a claimed job again, or ends it failed when it cannot be.
    async fn resume(&self, mut record: JobRecord) {
        let span = tracing::info_span!("rerun", job = %record.id, attempt = record.attempts);
        let rerun = match record.rerun.clone() {
            Some(rerun) if record.attempts <= MAX_JOB_ATTEMPTS => rerun,
            rerun => {
                async {
                    tracing::warn!("a job left by a process that died is given up");
                    if let Some(rerun) = rerun {
                        release(&*self.ledger, rerun.ticket.hold).await;
                    }
                    if let Err(error) = self.board.interrupt(&mut record).await {
                        tracing::error!(%error, "ending a job that is given up failed");
                    }
                }
                .instrument(span)
                .await;
                return;
            }
        };
        let principal = Principal::new(record.owner.clone());
        let context = RequestContext::new(principal, rerun.request_id.clone());
        let sources = rerun.ticket.sources.iter().cloned().map(Reference::Key);
        let mut edit = EditRequest::new(
            context,
            record.operation,
            sources.collect(),
            rerun.params.clone(),
        )
        .resuming(rerun.ticket.hold);
        edit.mask = rerun.ticket.mask.clone().map(Reference::Key);
        let (cancel, watch) = ClientWatch::new();
        edit.client = watch;
        let (progress, steps) = Progress::channel(edit.params.partial_images);
        edit.progress = progress.clone();
        let (ledger, hold) = (self.ledger.clone(), rerun.ticket.hold);
        let delivered = self.delivered(hold).instrument(span.clone()).await;
        let track = Track::resumed(self.board.clone(), record, &edit, progress, cancel);
        if !delivered.is_empty() {
            // Its first run was charged and stored these: the job ends with them.
            tracing::info!(parent: &span, images = delivered.len(), "a job whose process died after its charge ends with the images it stored");
            let mut outcome = EditOutcome::new(unix_now(), delivered);
            outcome.source_keys = rerun.ticket.sources.clone();
            let job = async move { Ok(outcome) };
            tokio::spawn(drive(job, steps, track, Waiter::Accepted(None)).instrument(span));
            return;
        }
        let work = self.stack.clone().oneshot(edit);
        let job = async move {
            let outcome = work.await;
            if outcome.is_err() {
                // Billing ends a hold it took over; one refused before billing (an image
                // gone) is ended here. Releasing an ended hold changes nothing.
                release(&*ledger, hold).await;
            }
            outcome
        };
        tracing::info!(parent: &span, "running again a job whose process died");
        tokio::spawn(drive(job, steps, track, Waiter::Accepted(None)).instrument(span));
    }

    /// The images a job's earlier run delivered through the store, when its hold was
    /// settled (its process died after the charge); none otherwise, or when they cannot be
    /// read now (the job then runs again, and finds its hold ended).
    async fn delivered(&self, hold: crate::ledger::HoldId) -> Vec<GeneratedImage> {
        match self.ledger.charged(hold).await {
            Ok(Some(_)) => {}
            Ok(None) => return Vec::new(),
            Err(error) => {
                tracing::warn!(%error, %hold, "reading a taken-over job's charge failed");
                return Vec::new();
            }
        }
        // The sole runner knows every pending generation is an earlier run's; otherwise
        // only those older than any storage may be ended.
        let before = if self.sole.load(std::sync::atomic::Ordering::Acquire) {
            u64::MAX
        } else {
            unix_now().saturating_sub(PENDING_TIMEOUT.as_secs())
        };
        match self.outputs.delivered(&*self.ledger, hold, before).await {
            Ok(images) => images,
            Err(error) => {
                tracing::warn!(%error, %hold, "reading a taken-over job's images failed");
                Vec::new()
            }
        }
    }
}

/// Ends `hold` charging nothing; an ended hold is left as it is.
async fn release(ledger: &dyn Ledger, hold: crate::ledger::HoldId) {
    if let Err(error) = ledger.release(hold).await {
        tracing::error!(%error, %hold, "releasing a job's hold failed; it will expire");
    }
}
