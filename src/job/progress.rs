//! What a job tells whoever waits for it before its answer: that its hold is taken, that its
//! backend has begun, and its partial images.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::Image;
use crate::ledger::HoldId;
use crate::store::FileKey;

/// One step of a streamed job, in the order they happen.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Step {
    /// The hold is taken: the stream may start (an error before this is a plain JSON
    /// answer with its own status).
    Held(Ticket),
    /// The backend has begun the job's work: from here on it is owed, whoever still waits.
    Started,
    /// A preview of the first image, `index` counting from 0.
    Partial {
        /// OpenAI's `partial_image_index`.
        index: u8,
        /// The preview, encoded like the final image.
        image: Image,
    },
}

/// What a job is once its hold is taken, besides its parameters: the hold, and its images
/// as the keys they are stored under (a request's inline and fetched images are stored as
/// the caller's uploads). With the request's parameters it is enough to run the job again,
/// under the same hold, in a process that did not receive the request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ticket {
    /// The job's hold.
    pub hold: HoldId,
    /// Its source images, in the request's order.
    pub sources: Vec<FileKey>,
    /// Its mask.
    pub mask: Option<FileKey>,
}

impl Ticket {
    /// The ticket of a job holding `hold` over the images stored under `sources` and `mask`.
    pub fn new(hold: HoldId, sources: Vec<FileKey>, mask: Option<FileKey>) -> Self {
        Ticket {
            hold,
            sources,
            mask,
        }
    }
}

/// Where a job reports its [`Step`]s. A job that nobody streams (no `stream: true`, a test,
/// a batch run) has a handle that drops them.
///
/// A backend shows partial images with [`partial`](Self::partial): at most
/// `job.params.partial_images` of them in all, before its final images; more are dropped,
/// so neither a backend nor an upstream's stream can queue more than that.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    sender: Option<mpsc::UnboundedSender<Step>>,
    max_partials: u8,
    /// Partials sent so far, by every clone of this handle.
    sent: Arc<AtomicU8>,
    /// Whether the backend has begun, as every clone of this handle sees it.
    started: Arc<AtomicBool>,
}

impl Progress {
    /// A handle that sends up to `max_partials` partials to the returned receiver.
    pub fn channel(max_partials: u8) -> (Progress, mpsc::UnboundedReceiver<Step>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let progress = Progress {
            sender: Some(sender),
            max_partials,
            sent: Arc::default(),
            started: Arc::default(),
        };
        (progress, receiver)
    }

    /// Whether anyone listens for partial images: a backend may skip making previews when
    /// not (no receiver, or none asked for).
    pub fn is_streamed(&self) -> bool {
        self.max_partials > 0 && self.sender.as_ref().is_some_and(|s| !s.is_closed())
    }

    /// Shows the `index`-th partial image (from 0). An index past the job's
    /// `partial_images`, or any partial once that many were shown, is dropped.
    pub fn partial(&self, index: u8, image: Image) {
        if index >= self.max_partials {
            return;
        }
        let counted = self
            .sent
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |sent| {
                (sent < self.max_partials).then_some(sent + 1)
            })
            .is_ok();
        if counted {
            self.send(Step::Partial { index, image });
        }
    }

    /// Tells the stream that the hold is taken, with what the job then is.
    pub(crate) fn held(&self, ticket: Ticket) {
        self.send(Step::Held(ticket));
    }

    /// Marks the job's work begun: called right before the backend is given the job. From
    /// then on the work may cost someone (a render's time, an upstream's bill), so a client
    /// that leaves no longer cancels it (unless the backend is
    /// [cancellable](crate::backend::ImageBackend::cancellable)).
    pub(crate) fn start(&self) {
        if !self.started.swap(true, Ordering::AcqRel) {
            self.send(Step::Started);
        }
    }

    /// How many partial images were shown so far (by every clone of this handle).
    pub fn partials_shown(&self) -> u8 {
        self.sent.load(Ordering::Acquire)
    }

    /// Whether the backend has been given the job.
    pub fn has_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    fn send(&self, step: Step) {
        if let Some(sender) = &self.sender {
            // A client that left closed the receiver; the step is not needed then.
            let _ = sender.send(step);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::OutputFormat;

    #[test]
    fn no_more_partials_than_asked_are_queued() {
        let (progress, mut steps) = Progress::channel(2);
        let image = Image::new(bytes::Bytes::from_static(b"x"), OutputFormat::Png);
        for _ in 0..10 {
            progress.clone().partial(0, image.clone());
        }
        progress.partial(5, image);
        let mut count = 0;
        while steps.try_recv().is_ok() {
            count += 1;
        }
        assert_eq!(count, 2);
    }
}
