//! The model-free reference backend.

use std::io::Cursor;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use image::imageops::thumbnail;
use image::{
    DynamicImage, GenericImageView, ImageDecoder, ImageFormat, ImageReader, Limits, Pixel, Rgb,
    Rgba,
};
use tokio::sync::Semaphore;

use super::png::strip_ancillary;
use super::{BackendError, ImageBackend};
use crate::job::{Background, EditJob, EditParams, Image, OutputFormat, Size};

/// The default pixel budget of one decoded source: 32 MiB (3840 x 2160 RGBA, 4096 x 2730 RGB).
pub const DEFAULT_DECODE_BUDGET: u64 = 32 * 1024 * 1024;

/// The default largest output: 3840 x 2160 pixels, OpenAI's largest size.
pub const DEFAULT_MAX_OUTPUT_PIXELS: u64 = 3840 * 2160;

/// A backend that needs no model, so the whole pipeline runs for real on a fresh machine.
///
/// It does **not** interpret the prompt. It decodes the first source image, resizes it to
/// `size` (keeping its own dimensions for `auto`, scaled down to fit the output cap),
/// drops the alpha channel for `background: opaque` or JPEG output, re-encodes it as
/// `output_format`, and returns that image `n` times.
///
/// # Bounds
/// - At most [`max_renders`](Self::max_renders) renders run at once, process-wide (per
///   backend value and its clones); the permit is held by the blocking work itself, so a
///   render whose request is gone still counts until it ends.
/// - Memory per render: the decoded source is at most the decode budget (default 32 MiB;
///   computed from the header's dimensions and pixel type before anything is allocated),
///   and the output's pixel buffer at most [`max_output_pixels`](Self::max_output_pixels)
///   x 4 bytes (default 31.6 MiB). Together with the source and output files, that is the
///   whole: at most 64 MiB of pixels above the encoded bytes. Larger sources are
///   `400 invalid_request` (`param: image`); larger requested sizes are unsupported
///   (refunded).
/// - PNG ancillary chunks (colour profiles, compressed text) are dropped before decoding,
///   so no chunk is ever inflated.
#[derive(Clone, Debug)]
pub struct ReferenceBackend {
    decode_budget: u64,
    max_output_pixels: u64,
    renders: Arc<Semaphore>,
    latency: std::time::Duration,
}

impl ReferenceBackend {
    /// A backend with the default bounds and one render at a time per core.
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        ReferenceBackend {
            decode_budget: DEFAULT_DECODE_BUDGET,
            max_output_pixels: DEFAULT_MAX_OUTPUT_PIXELS,
            renders: Arc::new(Semaphore::new(cores)),
            latency: std::time::Duration::ZERO,
        }
    }

    /// Waits `latency` before each edit, to stand in for a model's think time in demos and
    /// load tests (default: none).
    pub fn latency(mut self, latency: std::time::Duration) -> Self {
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
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if let Size::Exact { width, height } = job.params.size {
            if u64::from(width) * u64::from(height) > self.max_output_pixels {
                return Err(BackendError::UnsupportedSize {
                    size: job.params.size,
                });
            }
        }
        let source = job
            .sources
            .first()
            .ok_or_else(|| BackendError::upstream("edit job without a source image"))?
            .bytes
            .clone();
        let params = job.params.clone();
        let bounds = (self.decode_budget, self.max_output_pixels);
        let permit = self
            .renders
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| BackendError::upstream("render pool closed"))?;
        let image = tokio::task::spawn_blocking(move || {
            // Held by the work itself: the bound counts renders, not requests.
            let _permit = permit;
            render(&source, &params, bounds)
        })
        .await
        .map_err(|e| BackendError::upstream(format!("render task failed: {e}")))??;
        Ok(vec![image; job.params.n as usize])
    }
}

fn render(
    source: &[u8],
    params: &EditParams,
    (decode_budget, max_output_pixels): (u64, u64),
) -> Result<Image, BackendError> {
    let invalid = |e: image::ImageError| BackendError::InvalidImage {
        message: e.to_string(),
    };
    let stripped = strip_ancillary(source).map_err(|message| BackendError::InvalidImage {
        message: message.to_owned(),
    })?;
    let mut reader = ImageReader::new(Cursor::new(stripped.as_deref().unwrap_or(source)))
        .with_guessed_format()
        .map_err(|e| BackendError::upstream(e.to_string()))?;
    let mut limits = Limits::default();
    limits.max_alloc = Some(decode_budget);
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(invalid)?;
    // Checked from the header before a pixel is allocated, whatever the decoder does.
    let (width, height) = decoder.dimensions();
    let needed =
        u64::from(width) * u64::from(height) * decoder.color_type().bytes_per_pixel() as u64;
    if needed > decode_budget {
        return Err(BackendError::InvalidImage {
            message: format!(
                "a {width}x{height} {:?} source needs {needed} bytes to decode; the limit is {decode_budget}",
                decoder.color_type()
            ),
        });
    }
    let decoded = DynamicImage::from_decoder(decoder).map_err(invalid)?;
    drop(stripped);

    let (out_w, out_h) = match params.size {
        Size::Exact { width, height } => (width, height),
        Size::Auto => fit(width, height, max_output_pixels),
    };
    let opaque =
        params.background == Background::Opaque || params.output_format == OutputFormat::Jpeg;
    // Resized straight into the output's pixel type: the only pixel buffers alive at once
    // are the decoded source and the output.
    let pixels = match (opaque, (out_w, out_h) == (width, height)) {
        (true, true) => DynamicImage::ImageRgb8(decoded.into_rgb8()),
        (false, true) => DynamicImage::ImageRgba8(decoded.into_rgba8()),
        (true, false) => DynamicImage::ImageRgb8(thumbnail(&AsRgb(&decoded), out_w, out_h)),
        (false, false) => DynamicImage::ImageRgba8(thumbnail(&decoded, out_w, out_h)),
    };
    let format = match params.output_format {
        OutputFormat::Png => ImageFormat::Png,
        OutputFormat::Jpeg => ImageFormat::Jpeg,
        OutputFormat::Webp => ImageFormat::WebP,
    };
    let mut out = Cursor::new(Vec::new());
    pixels
        .write_to(&mut out, format)
        .map_err(|e| BackendError::upstream(format!("encoding failed: {e}")))?;
    Ok(Image::new(
        Bytes::from(out.into_inner()),
        params.output_format,
    ))
}

/// `width x height` scaled down, keeping its aspect, to at most `max_pixels`.
fn fit(width: u32, height: u32, max_pixels: u64) -> (u32, u32) {
    let pixels = u64::from(width) * u64::from(height);
    if pixels <= max_pixels {
        return (width, height);
    }
    let scale = (max_pixels as f64 / pixels as f64).sqrt();
    let scaled = |side: u32| ((f64::from(side) * scale).floor() as u32).max(1);
    let (w, h) = (scaled(width), scaled(height));
    // A side rounded up to one pixel can leave the other too long.
    let h_cap = (max_pixels / u64::from(w)).max(1);
    let w_cap = (max_pixels / u64::from(h)).max(1);
    (w.min(w_cap as u32), h.min(h_cap as u32))
}

/// A view of an image as RGB, so a resize writes RGB without an RGBA buffer in between.
struct AsRgb<'a>(&'a DynamicImage);

impl GenericImageView for AsRgb<'_> {
    type Pixel = Rgb<u8>;

    fn dimensions(&self) -> (u32, u32) {
        self.0.dimensions()
    }

    fn get_pixel(&self, x: u32, y: u32) -> Rgb<u8> {
        let pixel: Rgba<u8> = self.0.get_pixel(x, y);
        pixel.to_rgb()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rgba_png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image::RgbaImage::new(width, height)
            .write_to(&mut out, ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    #[test]
    fn a_source_at_the_decode_budget_renders_and_one_byte_more_is_refused() {
        let source = rgba_png(64, 32);
        let exact = 64 * 32 * 4;
        let params = EditParams::new("m", "p");
        let rendered = render(&source, &params, (exact, DEFAULT_MAX_OUTPUT_PIXELS)).unwrap();
        assert!(!rendered.bytes.is_empty());
        let refused = render(&source, &params, (exact - 1, DEFAULT_MAX_OUTPUT_PIXELS));
        assert!(
            matches!(refused, Err(BackendError::InvalidImage { .. })),
            "{refused:?}"
        );
    }

    #[test]
    fn an_output_at_the_pixel_cap_is_made_and_one_pixel_more_is_scaled_to_fit() {
        let source = rgba_png(64, 32);
        let params = EditParams::new("m", "p");
        let fits = render(&source, &params, (DEFAULT_DECODE_BUDGET, 64 * 32)).unwrap();
        let (w, h) = image::load_from_memory(&fits.bytes).unwrap().dimensions();
        assert_eq!((w, h), (64, 32));
        let scaled = render(&source, &params, (DEFAULT_DECODE_BUDGET, 64 * 32 - 1)).unwrap();
        let (w, h) = image::load_from_memory(&scaled.bytes).unwrap().dimensions();
        assert!(u64::from(w) * u64::from(h) < 64 * 32, "{w}x{h}");
    }

    #[test]
    fn fit_keeps_small_sizes_and_scales_large_ones_under_the_cap() {
        assert_eq!(fit(100, 50, 10_000), (100, 50));
        let (w, h) = fit(8000, 4000, DEFAULT_MAX_OUTPUT_PIXELS);
        assert!(u64::from(w) * u64::from(h) <= DEFAULT_MAX_OUTPUT_PIXELS);
        assert!((w as i64 - 2 * h as i64).abs() <= 2, "{w}x{h}");
        assert_eq!(fit(1, 100_000_000, 10), (1, 10));
    }
}
