use std::sync::Arc;

use tower_layer::Layer;

use super::{Moderated, Moderation};

/// Applies [`Moderated`]: before source resolution (a service of
/// [`EditRequest`](crate::job::EditRequest)s) it checks prompts; between source resolution
/// and billing (a service of [`EditJob`](crate::job::EditJob)s) it checks source images.
#[derive(Clone)]
pub struct ModerationLayer {
    moderation: Option<Arc<dyn Moderation>>,
    fail_open: bool,
}

impl std::fmt::Debug for ModerationLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModerationLayer")
            .field("on", &self.moderation.is_some())
            .field("fail_open", &self.fail_open)
            .finish()
    }
}

impl ModerationLayer {
    /// Checks every prompt with `moderation`, failing closed.
    pub fn new(moderation: Arc<dyn Moderation>) -> Self {
        ModerationLayer {
            moderation: Some(moderation),
            fail_open: false,
        }
    }

    /// No check: every request passes (the default of a gateway).
    pub fn none() -> Self {
        ModerationLayer {
            moderation: None,
            fail_open: false,
        }
    }

    /// Lets a request through when the check itself fails (logged), instead of `503`.
    pub fn fail_open(mut self, open: bool) -> Self {
        self.fail_open = open;
        self
    }
}

impl<S> Layer<S> for ModerationLayer {
    type Service = Moderated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Moderated::new(inner, self.moderation.clone(), self.fail_open)
    }
}
