use std::time::Duration;

use tower_layer::Layer;

use super::{Normalize, Rules};
use crate::catalog::Catalog;
use crate::job::Operation;
use crate::jobs::JobBoard;
use crate::jobs::DEFAULT_KEEPALIVE;
use crate::multipart::MultipartLimits;

/// Applies [`Normalize`] to a typed edit service: the door from HTTP to [`EditRequest`].
///
/// [`EditRequest`]: crate::job::EditRequest
#[derive(Clone, Debug)]
pub struct NormalizeLayer {
    rules: Rules,
    keepalive: Duration,
    jobs: Option<JobBoard>,
}

impl NormalizeLayer {
    /// Normalizes edit requests for the models of `catalog`, with the default limits.
    pub fn new(catalog: Catalog) -> Self {
        NormalizeLayer {
            rules: Rules::new(Operation::Edit, catalog),
            keepalive: DEFAULT_KEEPALIVE,
            jobs: None,
        }
    }

    /// Answers requests that carry `Prefer: respond-async` with `202 Accepted` and runs
    /// them as jobs on `board`. Default: none, and the preference is ignored (answered
    /// synchronously, without `Preference-Applied`).
    pub fn jobs(mut self, board: JobBoard) -> Self {
        self.jobs = Some(board);
        self
    }

    /// Normalizes requests of `operation` (the endpoint this layer serves) instead.
    pub fn operation(mut self, operation: Operation) -> Self {
        self.rules.operation = operation;
        self
    }

    /// How long a streamed answer may stay silent before a keep-alive comment is sent.
    /// Default: [`DEFAULT_KEEPALIVE`] (15 s).
    pub fn stream_keepalive(mut self, period: Duration) -> Self {
        self.keepalive = period.max(Duration::from_millis(10));
        self
    }

    /// Replaces the body limits.
    pub fn limits(mut self, limits: MultipartLimits) -> Self {
        self.rules.limits = limits;
        self
    }
}

impl<S> Layer<S> for NormalizeLayer {
    type Service = Normalize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Normalize::new(inner, self.rules.clone(), self.keepalive, self.jobs.clone())
    }
}
