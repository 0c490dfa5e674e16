//! The model-free reference backend.

mod render;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;

use self::render::{preview, render, Bounds, Work};
use super::{BackendError, ImageBackend};
use crate::job::{EditJob, Image, Operation, Size};

/// The default pixel budget of one decoded source: 32 MiB (3840 x 2160 RGBA, 4096 x 2730 RGB).
pub const DEFAULT_DECODE_BUDGET: u64 = 32 * 1024 * 1024;

/// The default largest output: 3840 x 2160 pixels, OpenAI's largest size.
pub const DEFAULT_MAX_OUTPUT_PIXELS: u64 = 3840 * 2160;

/// A backend that needs no model, so the whole pipeline runs for real on a fresh machine.
///
/// It does **not** interpret the prompt. An edit decodes the first source image, inverts
/// its colours where the mask (if any) is fully transparent, and resizes it to `size`
/// (keeping its own dimensions for `auto`, scaled down to fit the output cap). A compose
/// lays its sources side by side in vertical strips. A generation paints a gradient whose
/// colours come from the prompt, at `size` (`auto`: 1024x1024). Then it drops the alpha
/// channel for `background: opaque` or JPEG output, encodes the image as `output_format`,
/// and returns it `n` times.
///
/// A streamed job with `partial_images` shows that many previews of its first image,
/// coarse to fine (1/8, 1/4, 1/2 of each side for three), spread over the simulated
/// [`latency`](Self::latency): a client can leave between two of them.
///
/// # Bounds
/// - At most [`max_renders`](Self::max_renders) renders run at once, process-wide (per
///   backend value and its clones); the permit is held by the blocking work itself, so a
///   render whose request is gone still counts until it ends.
/// - Memory per render: the decoded source is at most the decode budget (default 32 MiB;
///   computed from the header's dimensions and pixel type before anything is allocated),
///   and the output's pixel buffer at most [`max_output_pixels`](Self::max_output_pixels)
///   x 4 bytes (default 31.6 MiB). Together with the source and output files, that is the
///   whole: at most 64 MiB of pixels above the encoded bytes (an edit with a mask holds
///   the decoded mask too, within another decode budget; a compose decodes one source at
///   a time into its canvas). Larger sources are
///   `400 invalid_request` (`param: image`); larger requested sizes are unsupported
///   (refunded).
/// - PNG ancillary chunks (colour profiles, compressed text) are dropped before decoding,
///   so no chunk is ever inflated.
#[derive(Clone, Debug)]
pub struct ReferenceBackend {
    decode_budget: u64,
    max_output_pixels: u64,
    renders: Arc<Semaphore>,
    latency: Duration,
}

impl ReferenceBackend {
    /// A backend with the default bounds and one render at a time per core.
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        ReferenceBackend {
            decode_budget: DEFAULT_DECODE_BUDGET,
            max_output_pixels: DEFAULT_MAX_OUTPUT_PIXELS,
            renders: Arc::new(Semaphore::new(cores)),
            latency: Duration::ZERO,
        }
    }

    /// Takes `latency` more per job, to stand in for a model's think time in demos, load
    /// tests and streaming tests (default: none).
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// How many renders run at once (default: one per core); further edits wait their turn.
    pub fn max_renders(mut self, renders: usize) -> Self {
        self.renders = Arc::new(Semaphore::new(renders.max(1)));
        self
    }

    /// The most bytes a decoded source may take (default [`DEFAULT_DECODE_BUDGET`]).
    pub fn decode_budget(mut self, bytes: u64) -> Self {
        self.decode_budget = bytes.max(1);
        self
    }

    /// The most pixels an output may have (default [`DEFAULT_MAX_OUTPUT_PIXELS`]).
    pub fn max_output_pixels(mut self, pixels: u64) -> Self {
        self.max_output_pixels = pixels.max(1);
        self
    }
}

impl Default for ReferenceBackend {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl ImageBackend for ReferenceBackend {
    async fn edit(&self, job: &EditJob) -> Result<Vec<Image>, BackendError> {
        if let Size::Exact { width, height } = job.params.size {
            if u64::from(width) * u64::from(height) > self.max_output_pixels {
                return Err(BackendError::UnsupportedSize {
                    size: job.params.size,
                });
            }
        }
        if job.operation != Operation::Generate && job.sources.is_empty() {
            return Err(BackendError::upstream("an edit job without a source image"));
        }
        let work = Work {
            operation: job.operation,
            sources: job.sources.iter().map(|s| s.bytes.clone()).collect(),
            mask: job.mask.as_ref().map(|m| m.bytes.clone()),
            params: job.params.clone(),
            prompt_seed: seed(&job.params.prompt),
        };
        let bounds = Bounds {
            decode_budget: self.decode_budget,
            max_output_pixels: self.max_output_pixels,
        };
        let permit = self
            .renders
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| BackendError::upstream("render pool closed"))?;
        let partials = if job.progress.is_streamed() {
            job.params.partial_images
        } else {
            0
        };
        let (image, previews) = tokio::task::spawn_blocking(move || {
            // Held by the work itself: the bound counts renders, not requests.
            let _permit = permit;
            let rendered = render(&work, bounds)?;
            let previews = (0..partials)
                .map(|k| {
                    preview(
                        &rendered.pixels,
                        1 << (partials - k),
                        work.params.output_format,
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, BackendError>((rendered.image, previews))
        })
        .await
        .map_err(|e| BackendError::upstream(format!("render task failed: {e}")))??;
        // The simulated think time, cut into one more step than there are previews.
        let step = self.latency / (u32::from(partials) + 1);
        for (index, preview) in (0u8..).zip(previews) {
            tokio::time::sleep(step).await;
            job.progress.partial(index, preview);
        }
        if !step.is_zero() {
            tokio::time::sleep(step).await;
        }
        Ok(vec![image; job.params.n as usize])
    }
}

/// A stable seed from the prompt (FNV-1a), so one prompt always paints the same colours.
fn seed(prompt: &str) -> u64 {
    prompt.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
