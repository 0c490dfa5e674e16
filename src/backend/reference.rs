//! The model-free reference backend.

use std::io::Cursor;

use async_trait::async_trait;
use bytes::Bytes;
use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};

use super::{BackendError, EditJob, Image, ImageBackend};
use crate::request::{Background, EditParams, OutputFormat, Size};

/// A backend that needs no model, so the whole pipeline runs for real on a fresh machine.
///
/// It does **not** interpret the prompt. It decodes the first source image, resizes it to
/// `size` (keeping its own dimensions for `auto`), drops the alpha channel for
/// `background: opaque` or JPEG output, re-encodes it as `output_format`, and returns that
/// image `n` times.
///
/// Decoding is bounded: sources over [`ReferenceBackend::max_side`] pixels a side or needing
/// more than 512 MiB to decode are refused as invalid images, and a requested size over
/// `max_side` is an unsupported size (refunded). The work runs on Tokio's blocking pool.
#[derive(Clone, Copy, Debug)]
pub struct ReferenceBackend {
    max_side: u32,
    latency: std::time::Duration,
}

impl ReferenceBackend {
    /// A backend that produces up to 4096 x 4096 pixels.
    pub fn new() -> Self {
        ReferenceBackend {
            max_side: 4096,
            latency: std::time::Duration::ZERO,
        }
    }

    /// Waits `latency` before each edit, to stand in for a model's think time in demos and
    /// load tests (default: none).
    pub fn latency(mut self, latency: std::time::Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Changes the largest side, in pixels, it decodes or produces (default 4096).
    pub fn max_side(mut self, pixels: u32) -> Self {
        self.max_side = pixels.max(1);
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
            if width > self.max_side || height > self.max_side {
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
        let max_side = self.max_side;
        let image = tokio::task::spawn_blocking(move || render(&source, &params, max_side))
            .await
            .map_err(|e| BackendError::upstream(format!("render task failed: {e}")))??;
        Ok(vec![image; job.params.n as usize])
    }
}

fn render(source: &[u8], params: &EditParams, max_side: u32) -> Result<Image, BackendError> {
    let invalid = |e: image::ImageError| BackendError::InvalidImage {
        message: e.to_string(),
    };
    let mut limits = Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    limits.max_alloc = Some(512 * 1024 * 1024);
    let mut reader = ImageReader::new(Cursor::new(source))
        .with_guessed_format()
        .map_err(|e| BackendError::upstream(e.to_string()))?;
    reader.limits(limits);
    let decoded = reader.decode().map_err(invalid)?;

    let resized = match params.size {
        Size::Auto => decoded,
        Size::Exact { width, height } => decoded.resize_exact(width, height, FilterType::Triangle),
    };
    let opaque =
        params.background == Background::Opaque || params.output_format == OutputFormat::Jpeg;
    let pixels = if opaque {
        DynamicImage::ImageRgb8(resized.to_rgb8())
    } else {
        DynamicImage::ImageRgba8(resized.to_rgba8())
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
