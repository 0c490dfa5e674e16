use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::rerun::{Lease, Rerun};
use crate::auth::UserId;
use crate::id::{GenerationId, JobId};
use crate::job::{EditParams, Operation};
use crate::store::StoreError;
use crate::GatewayError;

/// Where a job is in its life. `queued` and `running` are open; the other three are ends,
/// and a job reaches exactly one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStatus {
    /// Its hold is taken; its backend has not been given it yet. Cancellable.
    Queued,
    /// Its backend has begun: the job is owed and runs to its end.
    Running,
    /// It returned images, charged and stored.
    Succeeded,
    /// It ended with an error; its hold was released.
    Failed,
    /// Cancelled while queued; its hold was released.
    Cancelled,
}

impl JobStatus {
    /// The word the API and the records use.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// The status of `word`, as [`as_str`](Self::as_str) writes it.
    pub fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            _ => return None,
        })
    }

    /// Whether the job has ended.
    pub fn is_ended(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// The parameters every event of a job echoes (OpenAI's stream events carry them), kept so
/// an ended job's events can be sent again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Echo {
    /// `size`, as the request named it.
    pub size: String,
    /// `quality`.
    pub quality: String,
    /// `background`.
    pub background: String,
    /// `output_format`.
    pub output_format: String,
}

impl Echo {
    /// What the events of a job with `params` echo.
    pub(crate) fn of(params: &EditParams) -> Echo {
        Echo {
            size: params.size.to_string(),
            quality: params.quality.to_string(),
            background: params.background.as_str().to_owned(),
            output_format: params.output_format.as_str().to_owned(),
        }
    }
}

/// What a succeeded job returned: the `created` of its answer and its images' generations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobOutput {
    /// Unix seconds at which the job finished, the answer's `created`.
    pub created: u64,
    /// Its images, in the answer's order.
    pub generations: Vec<GenerationId>,
}

impl JobOutput {
    /// Its generation ids as text, in order.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.generations.iter().map(ToString::to_string).collect()
    }

    /// Its generation ids as a record's column keeps them: comma-separated.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn ids_column(&self) -> String {
        self.ids().join(",")
    }

    /// The output a record's two columns hold: none unless both are set; a malformed id
    /// is corruption.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn from_columns(
        created: Option<u64>,
        ids: Option<String>,
    ) -> Result<Option<JobOutput>, StoreError> {
        let (Some(created), Some(ids)) = (created, ids) else {
            return Ok(None);
        };
        let generations = ids
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                GenerationId::parse(s)
                    .map_err(|_| StoreError::new("corrupt job record: generation"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(JobOutput {
            created,
            generations,
        }))
    }
}

/// One job as its record keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobRecord {
    /// Its id.
    pub id: JobId,
    /// Who asked (and pays); no one else sees it.
    pub owner: UserId,
    /// Which endpoint asked.
    pub operation: Operation,
    /// The model asked for.
    pub model: String,
    /// Images asked for.
    pub n: u32,
    /// Where it is.
    pub status: JobStatus,
    /// Unix seconds: accepted (its hold taken), begun, ended.
    pub created_at: u64,
    /// When its backend began.
    pub started_at: Option<u64>,
    /// When it ended.
    pub finished_at: Option<u64>,
    /// What its events echo.
    pub echo: Echo,
    /// A succeeded job's images.
    pub output: Option<JobOutput>,
    /// A failed job's error envelope, as the synchronous request would have been answered.
    pub error: Option<String>,
    /// Where its end is announced (an async job's `Webhook-Url`, checked at submit).
    pub webhook: Option<String>,
    /// An async job's request, kept so another process can run it again.
    pub rerun: Option<Rerun>,
    /// Who runs an open async job, until when.
    pub lease: Option<Lease>,
    /// How many times a process took the job on (1 for its first run).
    pub attempts: u32,
}

impl JobRecord {
    /// A job of `owner` accepted now, queued.
    #[allow(clippy::too_many_arguments)]
    pub fn queued(
        id: JobId,
        owner: UserId,
        operation: Operation,
        model: String,
        n: u32,
        created_at: u64,
        echo: Echo,
    ) -> Self {
        JobRecord {
            id,
            owner,
            operation,
            model,
            n,
            status: JobStatus::Queued,
            created_at,
            started_at: None,
            finished_at: None,
            echo,
            output: None,
            error: None,
            webhook: None,
            rerun: None,
            lease: None,
            attempts: 0,
        }
    }
}

impl JobRecord {
    /// Ends the job failed with `error`, whose envelope it keeps.
    pub(crate) fn fail(&mut self, error: &GatewayError) {
        self.status = JobStatus::Failed;
        self.error = Some(String::from_utf8_lossy(&error.to_json()).into_owned());
    }

    /// A failed job's error as the API shows it: the envelope's object (`message`, `type`,
    /// `param`, `code`).
    pub(crate) fn error_object(&self) -> Option<serde_json::Value> {
        let envelope: serde_json::Value = serde_json::from_str(self.error.as_deref()?).ok()?;
        Some(envelope["error"].clone())
    }
}

/// Where job records are kept: in memory, SQLite, or your own.
///
/// # Contract
/// - `insert` adds a record whose id is new; `update` replaces the record of its id (its
///   status, times, output and error; never its owner).
/// - `get` and `list` answer the owner's records only: another caller's job is `None`, as
///   an unknown one is.
/// - `list` is newest first (ids are time-ordered), `after` excluded, at most `limit`.
/// - `open` counts the owner's queued and running jobs created at or after `since`.
/// - `insert` keeps the record's `rerun`, `lease` and `attempts`; `update` leaves them as
///   they are (only `claim` and `renew` move them).
/// - `claim` takes open jobs, whoever owns them, whose lease ended before `before` (or that
///   have none) and is not the claiming runner's own: each is leased to the runner and counts one more attempt, and no two
///   concurrent claims, from any process, take the same job. `renew` moves the leases of
///   the runner's open jobs.
/// - `forget` removes ended jobs that ended before `before`.
#[async_trait]
pub trait JobRecords: Send + Sync + 'static {
    /// Adds a record.
    async fn insert(&self, job: &JobRecord) -> Result<(), StoreError>;
    /// Replaces the record of `job.id`.
    async fn update(&self, job: &JobRecord) -> Result<(), StoreError>;
    /// The owner's job `id`.
    async fn get(&self, owner: &UserId, id: JobId) -> Result<Option<JobRecord>, StoreError>;
    /// The owner's jobs, newest first, after `after`.
    async fn list(
        &self,
        owner: &UserId,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError>;
    /// How many of the owner's jobs created at or after `since` are queued or running.
    async fn open(&self, owner: &UserId, since: u64) -> Result<u64, StoreError>;
    /// Takes up to `limit` open jobs whose lease ended before `before` for `lease`'s runner,
    /// leased until its `until`, one more attempt each; answers them as they now are.
    async fn claim(
        &self,
        lease: &Lease,
        before: u64,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError>;
    /// Moves the lease of every open job of `lease`'s runner to its `until`.
    async fn renew(&self, lease: &Lease) -> Result<(), StoreError>;
    /// Removes the jobs that ended before `before` (Unix seconds); how many.
    async fn forget(&self, before: u64) -> Result<usize, StoreError>;

    /// Adds a webhook delivery to send.
    async fn enqueue(&self, delivery: &Delivery) -> Result<(), StoreError>;
    /// Up to `limit` deliveries still to send whose time has come at `now`.
    async fn due(&self, now: u64, limit: usize) -> Result<Vec<Delivery>, StoreError>;
    /// Records an attempt at `delivery`: its new `attempts`, and its next time, or `None`
    /// when it is over (delivered, or given up).
    async fn attempted(
        &self,
        id: &str,
        attempts: u32,
        next_at: Option<u64>,
    ) -> Result<(), StoreError>;
}

/// One webhook event to send, kept until a receiver took it (a `2xx`) or its attempts
/// ran out, across restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// `webhook-id`: one per event, the same on every attempt (receivers deduplicate by it).
    pub id: String,
    /// Where it goes.
    pub url: String,
    /// The JSON body, signed as sent.
    pub body: String,
    /// Attempts so far.
    pub attempts: u32,
    /// When the next attempt is due (Unix seconds).
    pub next_at: u64,
}

/// Job records in this process (lost on exit).
#[derive(Debug, Default)]
pub struct MemoryJobs {
    jobs: Mutex<BTreeMap<JobId, JobRecord>>,
    deliveries: Mutex<BTreeMap<String, Delivery>>,
}

impl MemoryJobs {
    /// No jobs.
    pub fn new() -> Self {
        Self::default()
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, BTreeMap<JobId, JobRecord>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl JobRecords for MemoryJobs {
    async fn insert(&self, job: &JobRecord) -> Result<(), StoreError> {
        self.jobs().insert(job.id, job.clone());
        Ok(())
    }

    async fn update(&self, job: &JobRecord) -> Result<(), StoreError> {
        if let Some(kept) = self.jobs().get_mut(&job.id) {
            *kept = JobRecord {
                owner: kept.owner.clone(),
                rerun: kept.rerun.take(),
                lease: kept.lease.take(),
                attempts: kept.attempts,
                ..job.clone()
            };
        }
        Ok(())
    }

    async fn get(&self, owner: &UserId, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.jobs().get(&id).filter(|j| &j.owner == owner).cloned())
    }

    async fn list(
        &self,
        owner: &UserId,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let jobs = self.jobs();
        let older = match after {
            Some(after) => jobs.range(..after),
            None => jobs.range(..),
        };
        Ok(older
            .rev()
            .filter(|(_, j)| &j.owner == owner)
            .take(limit)
            .map(|(_, j)| j.clone())
            .collect())
    }

    async fn open(&self, owner: &UserId, since: u64) -> Result<u64, StoreError> {
        let jobs = self.jobs();
        let open = jobs
            .values()
            .filter(|j| &j.owner == owner && !j.status.is_ended() && j.created_at >= since);
        Ok(open.count() as u64)
    }

    async fn claim(
        &self,
        lease: &Lease,
        before: u64,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let mut jobs = self.jobs();
        let lapsed = |j: &JobRecord| {
            (j.lease.as_ref()).is_none_or(|l| l.until < before && l.runner != lease.runner)
        };
        let taken = jobs
            .values_mut()
            .filter(|j| !j.status.is_ended() && lapsed(j))
            .take(limit)
            .map(|j| {
                j.lease = Some(lease.clone());
                j.attempts = j.attempts.saturating_add(1);
                j.clone()
            });
        Ok(taken.collect())
    }

    async fn renew(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut jobs = self.jobs();
        for job in jobs.values_mut().filter(|j| !j.status.is_ended()) {
            if let Some(kept) = job.lease.as_mut().filter(|l| l.runner == lease.runner) {
                kept.until = lease.until;
            }
        }
        Ok(())
    }

    async fn forget(&self, before: u64) -> Result<usize, StoreError> {
        let mut jobs = self.jobs();
        let count = jobs.len();
        jobs.retain(|_, j| !(j.status.is_ended() && j.finished_at.unwrap_or(0) < before));
        Ok(count - jobs.len())
    }

    async fn enqueue(&self, delivery: &Delivery) -> Result<(), StoreError> {
        let mut deliveries = self.deliveries.lock().unwrap_or_else(|e| e.into_inner());
        deliveries.insert(delivery.id.clone(), delivery.clone());
        Ok(())
    }

    async fn due(&self, now: u64, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let deliveries = self.deliveries.lock().unwrap_or_else(|e| e.into_inner());
        let due = deliveries.values().filter(|d| d.next_at <= now);
        Ok(due.take(limit).cloned().collect())
    }

    async fn attempted(
        &self,
        id: &str,
        attempts: u32,
        next_at: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut deliveries = self.deliveries.lock().unwrap_or_else(|e| e.into_inner());
        match next_at {
            None => {
                deliveries.remove(id);
            }
            Some(next_at) => {
                if let Some(d) = deliveries.get_mut(id) {
                    d.attempts = attempts;
                    d.next_at = next_at;
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl<T: JobRecords + ?Sized> JobRecords for std::sync::Arc<T> {
    async fn insert(&self, job: &JobRecord) -> Result<(), StoreError> {
        (**self).insert(job).await
    }
    async fn update(&self, job: &JobRecord) -> Result<(), StoreError> {
        (**self).update(job).await
    }
    async fn get(&self, owner: &UserId, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        (**self).get(owner, id).await
    }
    async fn list(
        &self,
        owner: &UserId,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        (**self).list(owner, after, limit).await
    }
    async fn open(&self, owner: &UserId, since: u64) -> Result<u64, StoreError> {
        (**self).open(owner, since).await
    }
    async fn claim(
        &self,
        lease: &Lease,
        before: u64,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        (**self).claim(lease, before, limit).await
    }
    async fn renew(&self, lease: &Lease) -> Result<(), StoreError> {
        (**self).renew(lease).await
    }
    async fn forget(&self, before: u64) -> Result<usize, StoreError> {
        (**self).forget(before).await
    }
    async fn enqueue(&self, delivery: &Delivery) -> Result<(), StoreError> {
        (**self).enqueue(delivery).await
    }
    async fn due(&self, now: u64, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        (**self).due(now, limit).await
    }
    async fn attempted(
        &self,
        id: &str,
        attempts: u32,
        next_at: Option<u64>,
    ) -> Result<(), StoreError> {
        (**self).attempted(id, attempts, next_at).await
    }
}
