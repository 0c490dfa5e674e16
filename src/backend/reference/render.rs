//! The reference backend's pixel work: decode within a budget, then resize, mask, tile or
//! paint, and encode. Runs on a blocking thread.

use std::io::Cursor;

use bytes::Bytes;
use image::imageops::{overlay, thumbnail};
use image::{
    DynamicImage, GenericImageView, ImageDecoder, ImageFormat, ImageReader, Limits, Pixel, Rgb,
    Rgba, RgbaImage,
};

use crate::backend::png::strip_ancillary;
use crate::backend::BackendError;
use crate::job::{Background, EditParams, Image, Operation, OutputFormat, Size};

/// The size of a generation asked at `auto`: OpenAI's square default.
const GENERATION_AUTO: (u32, u32) = (1024, 1024);

/// What one render works from, owned so it can move to a blocking thread.
pub(super) struct Work {
    pub(super) operation: Operation,
    pub(super) sources: Vec<Bytes>,
    pub(super) mask: Option<Bytes>,
    pub(super) params: EditParams,
    pub(super) prompt_seed: u64,
}

/// The memory bounds of one render.
#[derive(Clone, Copy)]
pub(super) struct Bounds {
    pub(super) decode_budget: u64,
    pub(super) max_output_pixels: u64,
}

/// The final image and the pixels its previews are made from.
pub(super) struct Rendered {
    pub(super) image: Image,
    pub(super) pixels: DynamicImage,
}

/// Renders `work` by its operation:
/// - an edit resizes its first source to `size`; with a mask it first inverts the colours
///   where the mask is fully transparent (OpenAI's edit area), so the edit is visible and
///   the rest is untouched;
/// - a compose lays its sources side by side, one vertical strip each;
/// - a generation paints a gradient whose colours come from the prompt.
pub(super) fn render(work: &Work, bounds: Bounds) -> Result<Rendered, BackendError> {
    let params = &work.params;
    let opaque =
        params.background == Background::Opaque || params.output_format == OutputFormat::Jpeg;
    let pixels = match (work.operation, work.sources.as_slice(), &work.mask) {
        (Operation::Generate, _, _) => {
            let (w, h) = match params.size {
                Size::Exact { width, height } => (width, height),
                Size::Auto => fit(
                    GENERATION_AUTO.0,
                    GENERATION_AUTO.1,
                    bounds.max_output_pixels,
                ),
            };
            DynamicImage::ImageRgba8(paint(w, h, work.prompt_seed))
        }
        (Operation::Compose, sources, _) if sources.len() > 1 => {
            tile(sources, params.size, bounds)?
        }
        (_, [first, ..], None) => resize(
            decode(first, bounds.decode_budget)?,
            params.size,
            opaque,
            bounds,
        ),
        (_, [first, ..], Some(mask)) => {
            let mut source = decode(first, bounds.decode_budget)?.into_rgba8();
            apply_mask(&mut source, &decode(mask, bounds.decode_budget)?)?;
            resize(
                DynamicImage::ImageRgba8(source),
                params.size,
                opaque,
                bounds,
            )
        }
        (_, [], _) => return Err(BackendError::upstream("an edit job without a source image")),
    };
    let pixels = if opaque {
        DynamicImage::ImageRgb8(pixels.into_rgb8())
    } else {
        pixels
    };
    let image = encode(&pixels, params.output_format)?;
    Ok(Rendered { image, pixels })
}

/// A preview of `pixels` at 1/`divisor` of each side, encoded as `format`: the coarser,
/// the earlier the partial.
pub(super) fn preview(
    pixels: &DynamicImage,
    divisor: u32,
    format: OutputFormat,
) -> Result<Image, BackendError> {
    let (w, h) = pixels.dimensions();
    let small = pixels.thumbnail_exact((w / divisor).max(1), (h / divisor).max(1));
    encode(&small, format)
}

fn encode(pixels: &DynamicImage, format: OutputFormat) -> Result<Image, BackendError> {
    let encoding = match format {
        OutputFormat::Png => ImageFormat::Png,
        OutputFormat::Jpeg => ImageFormat::Jpeg,
        OutputFormat::Webp => ImageFormat::WebP,
    };
    let mut out = Cursor::new(Vec::new());
    pixels
        .write_to(&mut out, encoding)
        .map_err(|e| BackendError::upstream(format!("encoding failed: {e}")))?;
    Ok(Image::new(Bytes::from(out.into_inner()), format))
}

/// Decodes `source` within `budget` bytes of pixels, checked from the header before a
/// pixel is allocated, with its PNG ancillary chunks dropped first.
pub(super) fn decode(source: &[u8], budget: u64) -> Result<DynamicImage, BackendError> {
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
    limits.max_alloc = Some(budget);
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(invalid)?;
    let (width, height) = decoder.dimensions();
    let needed =
        u64::from(width) * u64::from(height) * decoder.color_type().bytes_per_pixel() as u64;
    if needed > budget {
        return Err(BackendError::InvalidImage {
            message: format!(
                "a {width}x{height} {:?} image needs {needed} bytes to decode; the limit is {budget}",
                decoder.color_type()
            ),
        });
    }
    DynamicImage::from_decoder(decoder).map_err(invalid)
}

/// `decoded` at `size` (`auto`: its own size, scaled down to fit the output cap), resized
/// straight into the output's pixel type: the only pixel buffers alive at once are the
/// decoded source and the output.
fn resize(decoded: DynamicImage, size: Size, opaque: bool, bounds: Bounds) -> DynamicImage {
    let (width, height) = decoded.dimensions();
    let (out_w, out_h) = match size {
        Size::Exact { width, height } => (width, height),
        Size::Auto => fit(width, height, bounds.max_output_pixels),
    };
    match (opaque, (out_w, out_h) == (width, height)) {
        (true, true) => DynamicImage::ImageRgb8(decoded.into_rgb8()),
        (false, true) => DynamicImage::ImageRgba8(decoded.into_rgba8()),
        (true, false) => DynamicImage::ImageRgb8(thumbnail(&AsRgb(&decoded), out_w, out_h)),
        (false, false) => DynamicImage::ImageRgba8(thumbnail(&decoded, out_w, out_h)),
    }
}

/// Inverts the colours of `image` where `mask` is fully transparent. The mask must have
/// the image's dimensions (OpenAI's rule).
fn apply_mask(image: &mut RgbaImage, mask: &DynamicImage) -> Result<(), BackendError> {
    if mask.dimensions() != image.dimensions() {
        let ((mw, mh), (iw, ih)) = (mask.dimensions(), image.dimensions());
        return Err(BackendError::InvalidImage {
            message: format!("the mask is {mw}x{mh} and the image {iw}x{ih}; they must match"),
        });
    }
    for (x, y, pixel) in image.enumerate_pixels_mut() {
        if mask.get_pixel(x, y)[3] == 0 {
            let [r, g, b, a] = pixel.0;
            *pixel = Rgba([255 - r, 255 - g, 255 - b, a]);
        }
    }
    Ok(())
}

/// The sources side by side at `size` (`auto`: the first source's size, fitted), each in
/// a vertical strip of equal width. Each source is decoded, resized into its strip and
/// dropped before the next is decoded.
fn tile(sources: &[Bytes], size: Size, bounds: Bounds) -> Result<DynamicImage, BackendError> {
    let first = decode(&sources[0], bounds.decode_budget)?;
    let (w, h) = match size {
        Size::Exact { width, height } => (width, height),
        Size::Auto => {
            let (w, h) = first.dimensions();
            fit(w, h, bounds.max_output_pixels)
        }
    };
    let count = sources.len() as u32;
    let strip = (w / count).max(1);
    let mut canvas = RgbaImage::new(w, h);
    let mut place = |decoded: DynamicImage, i: u32| {
        let piece = thumbnail(&decoded, strip, h);
        overlay(&mut canvas, &piece, i64::from(i * strip), 0);
    };
    place(first, 0);
    for (i, source) in sources.iter().enumerate().skip(1) {
        place(decode(source, bounds.decode_budget)?, i as u32);
    }
    Ok(DynamicImage::ImageRgba8(canvas))
}

/// A `w x h` diagonal gradient between two colours taken from `seed`.
fn paint(w: u32, h: u32, seed: u64) -> RgbaImage {
    let [r0, g0, b0, r1, g1, b1, ..] = seed.to_le_bytes();
    let span = u64::from(w) + u64::from(h);
    let mix =
        |a: u8, b: u8, t: u64| ((u64::from(a) * (span - t) + u64::from(b) * t) / span.max(1)) as u8;
    RgbaImage::from_fn(w, h, |x, y| {
        let t = u64::from(x) + u64::from(y);
        Rgba([mix(r0, r1, t), mix(g0, g1, t), mix(b0, b1, t), 255])
    })
}

/// `width x height` scaled down, keeping its aspect, to at most `max_pixels`.
pub(super) fn fit(width: u32, height: u32, max_pixels: u64) -> (u32, u32) {
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
    use crate::backend::reference::{DEFAULT_DECODE_BUDGET, DEFAULT_MAX_OUTPUT_PIXELS};

    fn png_of(image: RgbaImage) -> Bytes {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Png).unwrap();
        Bytes::from(out.into_inner())
    }

    fn rgba_png(width: u32, height: u32) -> Bytes {
        png_of(RgbaImage::new(width, height))
    }

    fn work(operation: Operation, sources: Vec<Bytes>, mask: Option<Bytes>) -> Work {
        Work {
            operation,
            sources,
            mask,
            params: EditParams::new("m", "p"),
            prompt_seed: 7,
        }
    }

    fn bounds(decode_budget: u64, max_output_pixels: u64) -> Bounds {
        Bounds {
            decode_budget,
            max_output_pixels,
        }
    }

    fn pixels_of(image: &Image) -> RgbaImage {
        image::load_from_memory(&image.bytes).unwrap().into_rgba8()
    }

    #[test]
    fn a_source_at_the_decode_budget_renders_and_one_byte_more_is_refused() {
        let job = work(Operation::Edit, vec![rgba_png(64, 32)], None);
        let exact = 64 * 32 * 4;
        let rendered = render(&job, bounds(exact, DEFAULT_MAX_OUTPUT_PIXELS)).unwrap();
        assert!(!rendered.image.bytes.is_empty());
        let refused = render(&job, bounds(exact - 1, DEFAULT_MAX_OUTPUT_PIXELS));
        assert!(
            matches!(refused, Err(BackendError::InvalidImage { .. })),
            "{:?}",
            refused.err()
        );
    }

    #[test]
    fn an_output_at_the_pixel_cap_is_made_and_one_pixel_more_is_scaled_to_fit() {
        let job = work(Operation::Edit, vec![rgba_png(64, 32)], None);
        let fits = render(&job, bounds(DEFAULT_DECODE_BUDGET, 64 * 32)).unwrap();
        assert_eq!(pixels_of(&fits.image).dimensions(), (64, 32));
        let scaled = render(&job, bounds(DEFAULT_DECODE_BUDGET, 64 * 32 - 1)).unwrap();
        let (w, h) = pixels_of(&scaled.image).dimensions();
        assert!(u64::from(w) * u64::from(h) < 64 * 32, "{w}x{h}");
    }

    #[test]
    fn a_mask_changes_only_its_transparent_area() {
        let source = RgbaImage::from_pixel(8, 4, Rgba([10, 20, 30, 255]));
        // Left half transparent (to edit), right half opaque (to keep).
        let mask = RgbaImage::from_fn(8, 4, |x, _| Rgba([0, 0, 0, if x < 4 { 0 } else { 255 }]));
        let job = work(Operation::Edit, vec![png_of(source)], Some(png_of(mask)));
        let out = pixels_of(
            &render(&job, bounds(DEFAULT_DECODE_BUDGET, 1 << 20))
                .unwrap()
                .image,
        );
        assert_eq!(out.get_pixel(0, 0), &Rgba([245, 235, 225, 255]));
        assert_eq!(out.get_pixel(7, 3), &Rgba([10, 20, 30, 255]));

        let wrong = work(Operation::Edit, vec![rgba_png(8, 4)], Some(rgba_png(4, 4)));
        let refused = render(&wrong, bounds(DEFAULT_DECODE_BUDGET, 1 << 20));
        assert!(matches!(refused, Err(BackendError::InvalidImage { .. })));
    }

    #[test]
    fn a_compose_shows_each_source_in_its_strip() {
        let red = png_of(RgbaImage::from_pixel(6, 6, Rgba([255, 0, 0, 255])));
        let blue = png_of(RgbaImage::from_pixel(6, 6, Rgba([0, 0, 255, 255])));
        let job = work(Operation::Compose, vec![red, blue], None);
        let out = pixels_of(
            &render(&job, bounds(DEFAULT_DECODE_BUDGET, 1 << 20))
                .unwrap()
                .image,
        );
        assert_eq!(out.dimensions(), (6, 6));
        assert_eq!(out.get_pixel(0, 3), &Rgba([255, 0, 0, 255]));
        assert_eq!(out.get_pixel(5, 3), &Rgba([0, 0, 255, 255]));
    }

    #[test]
    fn a_generation_is_painted_at_its_size_and_previews_are_smaller() {
        let mut job = work(Operation::Generate, Vec::new(), None);
        job.params.size = "48x32".parse().unwrap();
        let rendered = render(&job, bounds(DEFAULT_DECODE_BUDGET, 1 << 20)).unwrap();
        assert_eq!(pixels_of(&rendered.image).dimensions(), (48, 32));
        let preview = preview(&rendered.pixels, 4, OutputFormat::Png).unwrap();
        assert_eq!(pixels_of(&preview).dimensions(), (12, 8));
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
