use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::events::{ended_events, EventId, EventLog};
use super::record::{Echo, JobOutput, JobRecord, JobRecords, JobStatus};
use super::webhook::{delivery_of, WebhookConfig};
use crate::auth::UserId;
use crate::clock::unix_now;
use crate::generations::{GenerationStatus, Generations};
use crate::id::{GenerationId, JobId};
use crate::job::{EditOutcome, GeneratedImage, Image, Progress};
use crate::lease::ClientHandle;
use crate::metrics::Metrics;
use crate::store::FileStore;
use crate::GatewayError;

/// The default bound on one caller's unfinished async jobs.
pub const DEFAULT_MAX_QUEUED_JOBS: u64 = 100;

/// The default time an ended job's record stays readable.
pub const DEFAULT_JOB_RETENTION: Duration = Duration::from_secs(86_400);

/// How long an open job may go without ending, when jobs have no timeout, before it is
/// taken for one whose process died.
const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(86_400);

/// The default time an async job's process holds it without renewing: past it, another
/// process (a replica, or this one restarted) takes the job over and runs it again.
pub const DEFAULT_JOB_LEASE: Duration = Duration::from_secs(30);

/// How long a caller over its queue bound is told to wait.
const QUEUE_RETRY: Duration = Duration::from_secs(5);

/// The jobs of a gateway: their records, and the jobs running in this process (their
/// cancel handles and event logs). Cheap to clone; every clone is the same board.
#[derive(Clone)]
pub struct JobBoard {
    inner: Arc<Inner>,
}

struct Inner {
    records: Arc<dyn JobRecords>,
    store: Arc<dyn FileStore>,
    generations: Arc<dyn Generations>,
    live: Mutex<HashMap<JobId, Arc<Live>>>,
    max_queued: u64,
    retention: Duration,
    keepalive: Duration,
    metrics: Option<Metrics>,
    webhooks: Option<WebhookConfig>,
    /// How long an open job may go without ending before it is taken for one whose process
    /// died (another replica's, or an earlier run's): the job timeout and a minute.
    stale_after: Duration,
    /// This process among the runners of async jobs: a random id per board.
    runner: String,
    /// How long a claim of an async job lasts unless renewed.
    lease: Duration,
}

/// A job running in this process.
pub(crate) struct Live {
    /// An async job's handle: dropped to tell billing that nobody wants the job any more
    /// (a queued job is then cancelled; a running one runs on). A synchronous or streamed
    /// job has none: its client cancels it by leaving.
    cancel: Mutex<Option<ClientHandle>>,
    /// When its backend began (Unix seconds; 0 before).
    started_at: std::sync::atomic::AtomicU64,
    /// Whether it is an async job, whose client reads its result back through the API (and
    /// whose record is written from its start).
    deferred: bool,
    /// The record as accepted: what a read answers here before a synchronous job's record
    /// is written.
    record: JobRecord,
    progress: Progress,
    pub(crate) log: EventLog,
    status: watch::Sender<JobStatus>,
}

impl std::fmt::Debug for JobBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobBoard").finish_non_exhaustive()
    }
}

impl JobBoard {
    /// A board keeping records in `records`; results are read back from `store` through
    /// `generations`.
    pub fn new(
        records: Arc<dyn JobRecords>,
        store: Arc<dyn FileStore>,
        generations: Arc<dyn Generations>,
    ) -> Self {
        JobBoard {
            inner: Arc::new(Inner {
                records,
                store,
                generations,
                live: Mutex::default(),
                max_queued: DEFAULT_MAX_QUEUED_JOBS,
                retention: DEFAULT_JOB_RETENTION,
                keepalive: super::DEFAULT_KEEPALIVE,
                metrics: None,
                webhooks: None,
                stale_after: DEFAULT_STALE_AFTER,
                runner: uuid::Uuid::new_v4().to_string(),
                lease: DEFAULT_JOB_LEASE,
            }),
        }
    }

    /// The same board with other bounds: `max_queued` unfinished async jobs per caller,
    /// ended records readable for `retention`, event streams' keep-alive period.
    pub fn bounds(self, max_queued: u64, retention: Duration, keepalive: Duration) -> Self {
        self.with(|inner| {
            inner.max_queued = max_queued;
            inner.retention = retention;
            inner.keepalive = keepalive;
        })
    }

    /// The same board taking an open job that has not ended within `timeout` (and a minute)
    /// for one whose process died: it reads `failed`, and no longer counts as queued.
    pub(crate) fn job_timeout(self, timeout: Option<Duration>) -> Self {
        let stale_after = timeout.map_or(DEFAULT_STALE_AFTER, |t| t + Duration::from_secs(60));
        self.with(|inner| inner.stale_after = stale_after)
    }

    /// The same board holding its async jobs for `lease` at a time (renewed while they run).
    pub(crate) fn lease(self, lease: Duration) -> Self {
        self.with(|inner| inner.lease = lease)
    }

    /// How long a claim lasts unless renewed.
    pub(crate) fn lease_period(&self) -> Duration {
        self.inner.lease
    }

    /// This process's lease from now.
    fn lease_now(&self) -> super::Lease {
        super::Lease {
            runner: self.inner.runner.clone(),
            until: unix_now().saturating_add(self.inner.lease.as_secs()),
        }
    }

    /// The same board counting its jobs in `metrics`.
    pub(crate) fn metrics(self, metrics: Option<Metrics>) -> Self {
        self.with(|inner| inner.metrics = metrics)
    }

    /// The same board announcing async jobs' ends to their `Webhook-Url` with `webhooks`.
    pub(crate) fn webhooks(self, webhooks: Option<WebhookConfig>) -> Self {
        self.with(|inner| inner.webhooks = webhooks)
    }

    /// A board like this one, changed by `change`; built before any job runs on it.
    fn with(self, change: impl FnOnce(&mut Inner)) -> Self {
        let old = &self.inner;
        let mut inner = Inner {
            records: old.records.clone(),
            store: old.store.clone(),
            generations: old.generations.clone(),
            live: Mutex::default(),
            max_queued: old.max_queued,
            retention: old.retention,
            keepalive: old.keepalive,
            metrics: old.metrics.clone(),
            webhooks: old.webhooks.clone(),
            stale_after: old.stale_after,
            runner: old.runner.clone(),
            lease: old.lease,
        };
        change(&mut inner);
        JobBoard {
            inner: Arc::new(inner),
        }
    }

    /// The deliverer of this board's webhooks, when it has them.
    #[cfg(feature = "fetch")]
    pub(crate) fn deliverer(&self) -> Option<super::WebhookDeliverer> {
        let config = self.inner.webhooks.clone()?;
        let (records, metrics) = (self.inner.records.clone(), self.inner.metrics.clone());
        Some(super::WebhookDeliverer::new(records, config, metrics))
    }

    /// Checks a submitted `Webhook-Url`: `400` (`param: webhook_url`) when this board sends
    /// no webhooks or the URL is refused by their rules.
    pub(crate) async fn check_webhook(&self, raw: &str) -> Result<String, GatewayError> {
        match &self.inner.webhooks {
            Some(webhooks) => webhooks.check(raw).await,
            None => Err(GatewayError::invalid_request(
                "webhook_url: this gateway has no webhook secret configured, so it sends no webhooks",
                Some("webhook_url"),
            )),
        }
    }

    /// Puts the announcement of `record`'s end in the outbox, when it has a webhook.
    async fn announce(&self, record: &JobRecord) {
        let (Some(webhooks), Some(delivery)) = (&self.inner.webhooks, delivery_of(record)) else {
            return;
        };
        match self.inner.records.enqueue(&delivery).await {
            Ok(()) => webhooks.wake(),
            Err(error) => {
                tracing::error!(%error, job = %record.id, "queueing a job's webhook failed")
            }
        }
    }

    fn moved(&self, from: Option<JobStatus>, to: JobStatus) {
        if let Some(metrics) = &self.inner.metrics {
            metrics.job_moved(from.map(JobStatus::as_str), to.as_str());
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Arc<Live>>> {
        self.inner.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn live_job(&self, id: JobId) -> Option<Arc<Live>> {
        self.live().get(&id).cloned()
    }

    /// `429 too_many_queued_jobs` when `owner` has as many unfinished jobs as allowed.
    pub(crate) async fn admit(&self, owner: &UserId) -> Result<(), GatewayError> {
        let since = unix_now().saturating_sub(self.inner.stale_after.as_secs());
        if self.inner.records.open(owner, since).await? >= self.inner.max_queued {
            return Err(GatewayError::TooManyQueuedJobs {
                retry_after: QUEUE_RETRY,
            });
        }
        Ok(())
    }

    /// Takes `record` on (queued, its hold taken) and keeps what its job needs while it
    /// runs here. An async job (`cancel` is its handle) is written now, before its `202`,
    /// leased to this process, so it can be read back from anywhere and run again if this
    /// process dies; a synchronous or streamed job, whose client waits for it, is written
    /// once, at its end (one write per job on the answer's path), and read from this
    /// process until then.
    pub(crate) async fn accept(
        &self,
        record: &JobRecord,
        cancel: Option<ClientHandle>,
        progress: Progress,
    ) -> Result<Arc<Live>, GatewayError> {
        let mut record = record.clone();
        if cancel.is_some() {
            record.lease = Some(self.lease_now());
            record.attempts = 1;
            self.inner.records.insert(&record).await?;
        }
        Ok(self.adopt(record, cancel, progress))
    }

    /// Runs here the job of `record`, already written (claimed from a process that died).
    pub(crate) fn adopt(
        &self,
        record: JobRecord,
        cancel: Option<ClientHandle>,
        progress: Progress,
    ) -> Arc<Live> {
        let id = record.id;
        let live = Arc::new(Live {
            deferred: cancel.is_some(),
            record,
            cancel: Mutex::new(cancel),
            started_at: std::sync::atomic::AtomicU64::new(0),
            progress,
            log: EventLog::default(),
            status: watch::channel(JobStatus::Queued).0,
        });
        self.live().insert(id, live.clone());
        self.moved(None, JobStatus::Queued);
        live
    }

    /// Moves the leases of the async jobs this process runs forward by a lease period.
    pub(crate) async fn renew_leases(&self) -> Result<(), GatewayError> {
        Ok(self.inner.records.renew(&self.lease_now()).await?)
    }

    /// Takes over up to `limit` open async jobs whose lease ended before `before`: their
    /// process died (or, with `u64::MAX`, every open one: a sole runner starting).
    pub(crate) async fn claim(
        &self,
        before: u64,
        limit: usize,
    ) -> Result<Vec<JobRecord>, GatewayError> {
        let claimed = self
            .inner
            .records
            .claim(&self.lease_now(), before, limit)
            .await?;
        // A job still running here (a lease renewal came late) is not taken twice.
        Ok(claimed
            .into_iter()
            .filter(|r| self.live_job(r.id).is_none())
            .collect())
    }

    /// Marks the job running (its backend has begun). Only this process knows it: the
    /// record keeps `queued` until the job ends, and a read here shows the live state (one
    /// write fewer per job; another replica shows such a job `queued`).
    pub(crate) fn started(&self, record: &mut JobRecord, live: &Live) {
        let now = unix_now();
        record.status = JobStatus::Running;
        record.started_at = Some(now);
        live.started_at
            .store(now, std::sync::atomic::Ordering::Release);
        live.status.send_replace(JobStatus::Running);
        self.moved(Some(JobStatus::Queued), JobStatus::Running);
    }

    /// Ends the job with its outcome: recorded, its events completed, no longer live.
    pub(crate) async fn finish(
        &self,
        record: &mut JobRecord,
        live: &Live,
        outcome: &Result<EditOutcome, GatewayError>,
        names: &super::events::Names,
    ) {
        let before = record.status;
        if let Err(GatewayError::JobTakenOver) = outcome {
            // Another run of this job charged (or ended) its hold, and writes its record;
            // this run's images were discarded.
            tracing::warn!(job = %record.id, "a job run twice: the other run's outcome stands");
            live.log.end();
            self.live().remove(&record.id);
            return;
        }
        match outcome {
            Ok(outcome) => {
                // Framed (base64 of every image) only for readers attached now; a reader
                // that comes later gets the events rebuilt from the record.
                if live.log.followed() {
                    for (i, image) in (0u32..).zip(&outcome.images) {
                        let frame = names.completed(image.id.to_string(), &image.image.bytes);
                        live.log.push(EventId::Completed(i), frame);
                    }
                }
                record.status = JobStatus::Succeeded;
                record.output = Some(JobOutput {
                    created: outcome.created,
                    generations: outcome.images.iter().map(|i| i.id).collect(),
                });
            }
            // Billing cancels a job whose client (or `DELETE`) left before its backend
            // began, and only then, with this error: nothing was done, nothing charged.
            Err(GatewayError::RequestTimeout) if !live.progress.has_started() => {
                record.status = JobStatus::Cancelled;
            }
            Err(error) => {
                live.log
                    .push(EventId::Error, super::events::error_frame(error));
                record.fail(error);
            }
        }
        record.finished_at = Some(unix_now());
        let written = if live.deferred {
            self.inner.records.update(record).await
        } else {
            self.inner.records.insert(record).await
        };
        if let Err(error) = written {
            tracing::error!(%error, job = %record.id, "recording a job's end failed");
        }
        self.moved(Some(before), record.status);
        self.announce(record).await;
        live.log.end();
        live.status.send_replace(record.status);
        self.live().remove(&record.id);
    }

    /// The bytes of generation `id`. A synchronous job's answer comes before its images
    /// are stored when the store waits (a disk, a network: they are stored on a task of
    /// their own), so a read right after waits a moment (5 ms, doubling, about five seconds
    /// in all), then answers `409 generation_not_ready`. Bytes in the store were stored
    /// after their charge: a record still pending with them is ready.
    async fn stored(&self, id: GenerationId) -> Result<Bytes, GatewayError> {
        let mut wait = Duration::from_millis(5);
        loop {
            let generation = self
                .inner
                .generations
                .get(id)
                .await?
                .filter(|g| g.status != GenerationStatus::Failed)
                .ok_or(GatewayError::GenerationNotFound)?;
            if let Some(bytes) = self.inner.store.get(&generation.file_key).await? {
                return Ok(bytes);
            }
            if generation.status == GenerationStatus::Ready {
                return Err(GatewayError::ImageNotFound);
            }
            if wait > Duration::from_secs(5) {
                return Err(GatewayError::GenerationNotReady {
                    retry_after: Duration::from_secs(1),
                });
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }

    /// The owner's job `id`, while its record is kept (`404 job_not_found` otherwise).
    pub(crate) async fn get(&self, owner: &UserId, id: JobId) -> Result<JobRecord, GatewayError> {
        let record = match self.inner.records.get(owner, id).await? {
            Some(record) => Some(record),
            // A synchronous or streamed job running here is written at its end.
            None => self
                .live_job(id)
                .filter(|live| &live.record.owner == owner)
                .map(|live| live.record.clone()),
        };
        let mut record = record
            .filter(|r| self.kept(r))
            .ok_or(GatewayError::JobNotFound)?;
        self.current(&mut record).await;
        Ok(record)
    }

    /// Brings a read record up to date: a job running here shows its live state; an open
    /// one past its time whose process died is ended `failed` (its hold was released by
    /// the ledger's expiry).
    async fn current(&self, record: &mut JobRecord) {
        if record.status.is_ended() {
            return;
        }
        if let Some(live) = self.live_job(record.id) {
            let status = *live.status.borrow();
            if !status.is_ended() {
                record.status = status;
                let at = live.started_at.load(std::sync::atomic::Ordering::Acquire);
                record.started_at = (at > 0).then_some(at);
            }
            return;
        }
        // Open, not here, and its lease long lapsed: no runner took it over.
        let lapsed = record.lease.as_ref().map_or(record.created_at, |l| l.until);
        let stale = lapsed.saturating_add(self.inner.stale_after.as_secs()) < unix_now();
        if stale {
            if let Err(error) = self.interrupt(record).await {
                tracing::error!(%error, job = %record.id, "ending a job left open failed");
            }
        }
    }

    /// Ends `record`, left open by a process that died, `failed`.
    pub(crate) async fn interrupt(&self, record: &mut JobRecord) -> Result<(), GatewayError> {
        record.fail(&GatewayError::Upstream);
        record.finished_at = Some(unix_now());
        self.inner.records.update(record).await?;
        self.announce(record).await;
        // Counted ended here; it was never counted open in this process.
        self.moved(None, JobStatus::Failed);
        Ok(())
    }

    /// Whether an ended record is still within its retention.
    fn kept(&self, record: &JobRecord) -> bool {
        let retention = self.inner.retention.as_secs();
        record
            .finished_at
            .is_none_or(|ended| ended.saturating_add(retention) >= unix_now())
    }

    /// The owner's jobs, newest first.
    pub(crate) async fn list(
        &self,
        owner: &UserId,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<JobRecord>, GatewayError> {
        let mut records = self.inner.records.list(owner, after, limit).await?;
        records.retain(|r| self.kept(r));
        for record in &mut records {
            self.current(record).await;
        }
        Ok(records)
    }

    /// Cancels the owner's queued job `id`: its hold is released and it ends `cancelled`.
    /// A job whose backend has begun, or that has ended, is `409 job_not_cancellable`.
    pub(crate) async fn cancel(
        &self,
        owner: &UserId,
        id: JobId,
    ) -> Result<JobRecord, GatewayError> {
        let record = self.get(owner, id).await?;
        let live = self
            .live_job(id)
            .filter(|live| &live.record.owner == owner)
            .ok_or(GatewayError::JobNotCancellable)?;
        if live.progress.has_started() {
            return Err(GatewayError::JobNotCancellable);
        }
        let mut status = live.status.subscribe();
        let Some(handle) = live.cancel.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            // A synchronous or streamed job, or one already being cancelled.
            return Err(GatewayError::JobNotCancellable);
        };
        drop(handle);
        // Billing sees the handle gone at once, and cancels unless the backend was given
        // the job in between.
        let seen = status
            .wait_for(|s| *s != JobStatus::Queued)
            .await
            .map(|s| *s)
            .unwrap_or(record.status);
        match seen {
            JobStatus::Cancelled => self.get(owner, id).await,
            _ => Err(GatewayError::JobNotCancellable),
        }
    }

    /// The images of a succeeded job, read back from the store: its generation ids and
    /// their bytes, in order.
    pub(crate) async fn images(
        &self,
        output: &JobOutput,
    ) -> Result<Vec<(GenerationId, Bytes)>, GatewayError> {
        let mut images = Vec::with_capacity(output.generations.len());
        for id in &output.generations {
            images.push((*id, self.stored(*id).await?));
        }
        Ok(images)
    }

    /// The body a synchronous request of a succeeded job would have been answered with.
    pub(crate) async fn result(
        &self,
        output: &JobOutput,
        echo: &Echo,
    ) -> Result<Bytes, GatewayError> {
        let images = self.images(output).await?;
        let generated = images
            .into_iter()
            .map(|(id, bytes)| GeneratedImage::new(id, Image::stored(bytes)))
            .collect();
        Ok(EditOutcome::new(output.created, generated)
            .described(&echo.quality, echo.background.parse().unwrap_or_default())
            .to_json())
    }

    /// Sends the job's events after `after` to `frames`: as they come while it runs here,
    /// rebuilt from its record once it has ended. A job open in another process is
    /// followed through its record until it ends.
    pub(crate) async fn follow(
        &self,
        record: JobRecord,
        after: Option<EventId>,
        frames: tokio::sync::mpsc::Sender<Bytes>,
    ) {
        let (mut record, mut after) = (record, after);
        let mut wait = Duration::from_millis(200);
        loop {
            if let Some(live) = self.live_job(record.id) {
                let Ok(last) = live.log.follow(after, &frames, self.inner.keepalive).await else {
                    return;
                };
                // Ended: what the log did not carry comes from the record, written before
                // the log was completed.
                after = last.or(after);
                match self.get(&record.owner, record.id).await {
                    Ok(ended) => record = ended,
                    Err(_) => return,
                }
                break;
            }
            if record.status.is_ended() {
                break;
            }
            // Open, and not here: another replica runs it.
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = frames.closed() => return,
            }
            wait = (wait * 2).min(self.inner.keepalive);
            if frames
                .send(Bytes::from_static(b": keep-alive\n\n"))
                .await
                .is_err()
            {
                return;
            }
            match self.get(&record.owner, record.id).await {
                Ok(now) => record = now,
                Err(_) => return,
            }
        }
        let images = match &record.output {
            Some(output) => match self.images(output).await {
                Ok(images) => images,
                Err(error) => {
                    let _ = frames.send(super::events::error_frame(&error)).await;
                    return;
                }
            },
            None => Vec::new(),
        };
        let images: Vec<(String, Bytes)> = images
            .into_iter()
            .map(|(id, bytes)| (id.to_string(), bytes))
            .collect();
        for (id, frame) in ended_events(&record, &images) {
            if after.is_some_and(|after| id <= after) {
                continue;
            }
            if frames.send(id.frame(&frame)).await.is_err() {
                return;
            }
        }
    }

    /// Removes the ended records past their retention; how many.
    pub async fn sweep(&self) -> Result<usize, GatewayError> {
        let before = unix_now().saturating_sub(self.inner.retention.as_secs());
        Ok(self.inner.records.forget(before).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generations::MemoryGenerations;
    use crate::job::{EditParams, Operation};
    use crate::jobs::{Echo, MemoryJobs};
    use crate::store::MemoryFileStore;

    /// A board over memory records, with a one-minute retention and jobs that time out
    /// after ten seconds (so they are stale after seventy).
    fn board() -> (JobBoard, Arc<MemoryJobs>) {
        let records = Arc::new(MemoryJobs::new());
        let board = JobBoard::new(
            records.clone(),
            Arc::new(MemoryFileStore::new()),
            Arc::new(MemoryGenerations::new()),
        )
        .bounds(1, Duration::from_secs(60), Duration::from_secs(15))
        .job_timeout(Some(Duration::from_secs(10)));
        (board, records)
    }

    fn record(created_at: u64) -> JobRecord {
        let params = EditParams::new("m", "p");
        JobRecord::queued(
            JobId::new(),
            UserId::new("alice").unwrap(),
            Operation::Generate,
            "m".into(),
            1,
            created_at,
            Echo::of(&params),
        )
    }

    #[tokio::test]
    async fn an_ended_job_is_readable_for_its_retention_and_swept_after() {
        let (board, records) = board();
        let alice = UserId::new("alice").unwrap();
        let now = unix_now();
        let mut kept = record(now - 100);
        kept.status = JobStatus::Succeeded;
        kept.finished_at = Some(now - 30);
        let mut old = record(now - 200);
        old.status = JobStatus::Failed;
        old.finished_at = Some(now - 61);
        records.insert(&kept).await.unwrap();
        records.insert(&old).await.unwrap();
        assert_eq!(board.get(&alice, kept.id).await.unwrap().id, kept.id);
        assert_eq!(
            board.get(&alice, old.id).await.err(),
            Some(GatewayError::JobNotFound),
            "past its retention"
        );
        let listed = board.list(&alice, None, 10).await.unwrap();
        assert_eq!(listed.iter().map(|r| r.id).collect::<Vec<_>>(), [kept.id]);
        assert_eq!(board.sweep().await.unwrap(), 1);
        assert_eq!(records.get(&alice, old.id).await.unwrap(), None);
        assert!(records.get(&alice, kept.id).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_run_whose_job_another_run_ended_writes_nothing() {
        let (board, records) = board();
        let alice = UserId::new("alice").unwrap();
        let queued = record(unix_now());
        let (handle, _watch) = crate::lease::ClientWatch::new();
        let live = board
            .accept(&queued, Some(handle), Progress::default())
            .await
            .unwrap();
        // The run of a process that took the job over settled its hold and wrote its end.
        let mut theirs = records.get(&alice, queued.id).await.unwrap().unwrap();
        theirs.status = JobStatus::Succeeded;
        theirs.finished_at = Some(unix_now());
        records.update(&theirs).await.unwrap();
        // This run's settle found the hold ended: its outcome is not the job's.
        let mut mine = live.record.clone();
        let names = super::super::events::Names::of_record(&mine);
        let outcome = Err(GatewayError::JobTakenOver);
        board.finish(&mut mine, &live, &outcome, &names).await;
        let kept = records.get(&alice, queued.id).await.unwrap().unwrap();
        assert_eq!(
            kept.status,
            JobStatus::Succeeded,
            "the other run's end stands"
        );
        assert_eq!(kept.error, None);
        assert!(board.live_job(queued.id).is_none(), "no longer run here");
    }

    #[tokio::test]
    async fn a_job_left_open_past_its_timeout_reads_failed_and_frees_the_queue() {
        let (board, records) = board();
        let alice = UserId::new("alice").unwrap();
        let now = unix_now();
        // Open, not running here, created 71 s ago: its process died.
        let stale = record(now - 71);
        records.insert(&stale).await.unwrap();
        // Open and recent: it still counts against the bound of one.
        let fresh = record(now - 5);
        records.insert(&fresh).await.unwrap();
        assert_eq!(
            board.admit(&alice).await.err().map(|e| e.code()),
            Some("too_many_queued_jobs")
        );
        let read = board.get(&alice, stale.id).await.unwrap();
        assert_eq!(read.status, JobStatus::Failed);
        assert_eq!(read.error_object().unwrap()["code"], "upstream_error");
        assert_eq!(
            records.get(&alice, stale.id).await.unwrap().unwrap().status,
            JobStatus::Failed,
            "the record is ended too"
        );
        assert_eq!(
            board.get(&alice, fresh.id).await.unwrap().status,
            JobStatus::Queued
        );
        // Once the fresh one is stale as well, the queue is free again.
        let mut aged = fresh.clone();
        aged.created_at = now - 80;
        records.update(&aged).await.unwrap();
        assert!(board.admit(&alice).await.is_ok());
    }
}
