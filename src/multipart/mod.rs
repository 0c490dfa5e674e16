//! `multipart/form-data` bodies, read as they stream and bounded by [`MultipartLimits`]: the
//! edit endpoint's `image` / `image[]` files and text fields, and the upload endpoint's
//! `files`.
//!
//! Bodies are read by a part reader that returns part data as slices of the body's own
//! chunks; an image part is then joined into one buffer, so its bytes are copied once between
//! the connection's read buffer and the backend. Every image part is typed by its magic
//! number as soon as 12 bytes have arrived.

mod params;
mod parser;

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

use self::params::{parameter, parameters};
pub(crate) use self::parser::{MultipartError, PartHead, Parts};
use crate::job::SourceImage;
use crate::media::{ImageKind, SNIFF_LEN};
use crate::store::DIRECT_ALIGN;
use crate::{BoxError, GatewayError};

/// Bounds on what one multipart body may make the gateway read and hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MultipartLimits {
    /// The whole body, in bytes (default 26 MiB): over it is `413`.
    pub whole_body: u64,
    /// One image part, in bytes (default 25 MiB): over it is `400 IMAGE_TOO_LARGE`.
    pub image: u64,
    /// The prompt part, in bytes (default 128,000: 32,000 characters of up to 4 bytes).
    pub prompt: usize,
    /// Any other text part, in bytes (default 4 KiB).
    pub text: usize,
    /// Parts of any kind (default 64).
    pub parts: usize,
    /// The header block of one part, in bytes (default 8 KiB).
    pub part_header: usize,
}

impl Default for MultipartLimits {
    fn default() -> Self {
        MultipartLimits {
            whole_body: crate::limit::DEFAULT_BODY_LIMIT,
            image: 25 * 1024 * 1024,
            prompt: 4 * crate::job::MAX_PROMPT_CHARS,
            text: 4 * 1024,
            parts: 64,
            part_header: 8 * 1024,
        }
    }
}

/// A reader of `body`'s parts, bounded by `limits`.
pub(crate) fn open<S, E>(
    body: S,
    boundary: &str,
    limits: &MultipartLimits,
) -> Result<Parts<Pin<Box<S>>>, GatewayError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<BoxError>,
{
    Parts::new(Box::pin(body), boundary, *limits).map_err(multipart_error)
}

/// The boundary of a `multipart/form-data` content type.
pub(crate) fn boundary_of(content_type: &str) -> Result<String, GatewayError> {
    let (essence, params) = parameters(content_type);
    parameter(&params, "boundary")
        .filter(|_| essence == "multipart/form-data")
        .ok_or_else(|| {
            GatewayError::invalid_request(
                "Content-Type must be multipart/form-data with a boundary",
                None,
            )
        })
}

/// Past this many bytes, an image part is copied into its final buffer as it arrives.
const JOIN_AS_READ: usize = 1024 * 1024;

/// Reads the data of the part `head` introduced: type checked by its first 12 bytes, cut
/// off past `limit`, in one contiguous buffer.
///
/// Each byte is copied once. A part of up to 1 MiB is kept as slices of the body's chunks
/// and joined at its end (not copied at all when it came in one chunk); a larger one is
/// copied into a buffer sized for the most the rest of the body can hold, chunk by chunk, so
/// the connection's read buffers are released as it goes instead of being held until the
/// end. (Capacity that is never written is never touched, so it costs no memory.)
pub(crate) async fn read_image<S, E>(
    parts: &mut Parts<S>,
    head: PartHead,
    limit: u64,
    param: &'static str,
) -> Result<SourceImage, GatewayError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<BoxError>,
{
    let filename = head.filename.map(|n| n.chars().take(255).collect());
    let too_large = GatewayError::ImageTooLarge { limit, param };
    let mut data = PartData::default();
    let mut magic = [0u8; SNIFF_LEN];
    let mut kind = None;
    while let Some(chunk) = parts.chunk().await.map_err(multipart_error)? {
        let start = data.len();
        if kind.is_none() {
            let take = (SNIFF_LEN - start).min(chunk.len());
            magic[start..start + take].copy_from_slice(&chunk[..take]);
            if start + take == SNIFF_LEN {
                kind = Some(sniffed(&magic, param)?);
            }
        }
        let total = (start + chunk.len()) as u64;
        if total > limit {
            return Err(too_large);
        }
        let capacity = limit.min(parts.unread_bound() + total) as usize;
        data.push(chunk, capacity);
    }
    let kind = match kind {
        Some(kind) => kind,
        None => sniffed(&magic[..data.len()], param)?,
    };
    Ok(SourceImage {
        bytes: data.into_bytes(),
        kind,
        filename,
    })
}

fn sniffed(head: &[u8], param: &'static str) -> Result<ImageKind, GatewayError> {
    ImageKind::sniff(head).ok_or(GatewayError::ImageTypeUnsupported { param })
}

/// One part's data while it is read: slices of the body's chunks, or once past
/// [`JOIN_AS_READ`], one buffer.
enum PartData {
    Slices(Vec<Bytes>),
    Joined(Joined),
}

/// Bytes copied into one buffer, from a boundary of [`DIRECT_ALIGN`] on: a store that writes
/// past the page cache writes them from here, with no copy of its own (the local store's
/// large files).
struct Joined {
    buffer: Vec<u8>,
    /// Where the bytes start in `buffer`.
    start: usize,
}

impl Joined {
    /// `slices` copied into a buffer with room for `capacity` bytes (at least theirs).
    fn new(slices: &[Bytes], capacity: usize) -> Joined {
        let len = slices.iter().map(Bytes::len).sum::<usize>();
        let mut buffer: Vec<u8> = Vec::new();
        // A capacity the allocator refuses (limits set beyond memory) means growing (and,
        // once the buffer moves, losing the alignment: the store then copies).
        if buffer
            .try_reserve_exact(capacity.max(len) + DIRECT_ALIGN)
            .is_err()
        {
            buffer.reserve(len + DIRECT_ALIGN);
        }
        let start = buffer.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        buffer.resize(start, 0);
        for slice in slices {
            buffer.extend_from_slice(slice);
        }
        Joined { buffer, start }
    }

    fn len(&self) -> usize {
        self.buffer.len() - self.start
    }

    fn into_bytes(self) -> Bytes {
        // Capacity past the part's end stays reserved but untouched: it costs address
        // space, not memory, and shrinking would make the allocator hand the pages back.
        Bytes::from(self.buffer).slice(self.start..)
    }
}

impl Default for PartData {
    fn default() -> Self {
        PartData::Slices(Vec::new())
    }
}

impl PartData {
    fn len(&self) -> usize {
        match self {
            PartData::Slices(slices) => slices.iter().map(Bytes::len).sum(),
            PartData::Joined(joined) => joined.len(),
        }
    }

    /// Adds `chunk`; `capacity` bounds the whole part, so a joined buffer never grows.
    fn push(&mut self, chunk: Bytes, capacity: usize) {
        let needed = self.len() + chunk.len();
        match self {
            PartData::Joined(joined) => joined.buffer.extend_from_slice(&chunk),
            PartData::Slices(slices) if needed <= JOIN_AS_READ => slices.push(chunk),
            PartData::Slices(slices) => {
                slices.push(chunk);
                *self = PartData::Joined(Joined::new(slices, capacity.max(needed)));
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            PartData::Slices(mut slices) if slices.len() == 1 => slices.pop().unwrap_or_default(),
            PartData::Slices(slices) => {
                let len = slices.iter().map(Bytes::len).sum();
                Joined::new(&slices, len).into_bytes()
            }
            PartData::Joined(joined) => joined.into_bytes(),
        }
    }
}

pub(crate) fn multipart_error(error: MultipartError) -> GatewayError {
    match error {
        MultipartError::TooLarge => GatewayError::PayloadTooLarge,
        MultipartError::Read(cause) => crate::limit::body_error(cause),
        // The messages name what is wrong, never the body's contents.
        other => GatewayError::invalid_request(other.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body with one `image` part holding `image`, cut into `chunk`-byte chunks.
    fn image_body(image: &[u8], chunk: usize) -> Vec<Result<Bytes, std::io::Error>> {
        let mut body = b"--b\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\n".to_vec();
        body.extend_from_slice(image);
        body.extend_from_slice(b"\r\n--b--\r\n");
        body.chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect()
    }

    fn read(image: &[u8], chunk: usize, limit: u64) -> Result<SourceImage, GatewayError> {
        let limits = MultipartLimits::default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let body = futures_util::stream::iter(image_body(image, chunk));
            let mut parts = open(body, "b", &limits)?;
            let head = parts.next_part().await.map_err(multipart_error)?.unwrap();
            read_image(&mut parts, head, limit, "image").await
        })
    }

    #[test]
    fn image_parts_small_and_large_come_out_whole_in_any_chunking() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut image = b"\x89PNG\r\n\x1a\n".to_vec();
        image.extend((0..3 * 1024 * 1024).map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        }));
        for len in [12, 1000, JOIN_AS_READ, JOIN_AS_READ + 1, image.len()] {
            for chunk in [4096, 64 * 1024, 1 << 30] {
                let read = read(&image[..len], chunk, 25 << 20).unwrap();
                assert_eq!(read.kind, ImageKind::Png);
                assert!(read.bytes == image[..len], "len {len} chunk {chunk}");
                // A part of several chunks is joined from an aligned start, so a store can
                // write it direct, uncopied.
                if chunk < len {
                    assert_eq!(
                        read.bytes.as_ptr().align_offset(DIRECT_ALIGN),
                        0,
                        "len {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_image_part_is_cut_off_one_byte_past_its_limit() {
        let mut image = b"\x89PNG\r\n\x1a\n".to_vec();
        image.resize(2 * JOIN_AS_READ, 7);
        let limit = image.len() as u64;
        assert!(read(&image, 64 * 1024, limit).is_ok());
        image.push(7);
        let error = read(&image, 64 * 1024, limit).unwrap_err();
        assert!(
            matches!(error, GatewayError::ImageTooLarge { .. }),
            "{error:?}"
        );
    }
}
