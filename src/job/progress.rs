//! What a streamed job tells its client before its answer: that its hold is taken, and its
//! partial images.

use tokio::sync::mpsc;

use super::Image;

/// One step of a streamed job, in the order they happen.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Step {
    /// The hold is taken: the stream may start (an error before this is a plain JSON
    /// answer with its own status).
    Held,
    /// A preview of the first image, `index` counting from 0.
    Partial {
        /// OpenAI's `partial_image_index`.
        index: u8,
        /// The preview, encoded like the final image.
        image: Image,
    },
}

/// Where a job reports its [`Step`]s. A job that nobody streams (no `stream: true`, a test,
/// a batch run) has a handle that drops them.
///
/// A backend shows partial images with [`partial`](Self::partial): at most
/// `job.params.partial_images` of them, before its final images; more are dropped.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    sender: Option<mpsc::UnboundedSender<Step>>,
    max_partials: u8,
}

impl Progress {
    /// A handle that sends up to `max_partials` partials to the returned receiver.
    pub fn channel(max_partials: u8) -> (Progress, mpsc::UnboundedReceiver<Step>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let progress = Progress {
            sender: Some(sender),
            max_partials,
        };
        (progress, receiver)
    }

    /// Whether anyone listens: a backend may skip making previews when not.
    pub fn is_streamed(&self) -> bool {
        self.sender.as_ref().is_some_and(|s| !s.is_closed())
    }

    /// Shows the `index`-th partial image (from 0). Partials past the job's
    /// `partial_images` are dropped, which bounds what one job can queue.
    pub fn partial(&self, index: u8, image: Image) {
        if index < self.max_partials {
            self.send(Step::Partial { index, image });
        }
    }

    /// Tells the stream that the hold is taken.
    pub(crate) fn held(&self) {
        self.send(Step::Held);
    }

    fn send(&self, step: Step) {
        if let Some(sender) = &self.sender {
            // A client that left closed the receiver; the step is not needed then.
            let _ = sender.send(step);
        }
    }
}
