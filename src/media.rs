//! Image types, decided from the bytes themselves, never from a client's `Content-Type`.

/// The source image types the gateway accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImageKind {
    /// JPEG (`FF D8 FF`).
    Jpeg,
    /// PNG (the 8-byte PNG signature).
    Png,
    /// GIF (`GIF87a` / `GIF89a`).
    Gif,
    /// WebP (`RIFF....WEBP`).
    Webp,
}

/// How many leading bytes [`ImageKind::sniff`] needs to decide.
pub const SNIFF_LEN: usize = 12;

impl ImageKind {
    /// Decides the type from the first bytes; `None` when they match no accepted type or
    /// are too few to tell.
    pub fn sniff(bytes: &[u8]) -> Option<ImageKind> {
        match bytes {
            [0xFF, 0xD8, 0xFF, ..] => Some(ImageKind::Jpeg),
            [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Some(ImageKind::Png),
            [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Some(ImageKind::Gif),
            [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => {
                Some(ImageKind::Webp)
            }
            _ => None,
        }
    }

    /// The MIME type.
    pub fn mime(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "image/jpeg",
            ImageKind::Png => "image/png",
            ImageKind::Gif => "image/gif",
            ImageKind::Webp => "image/webp",
        }
    }

    /// The width and height an image's header declares, read without decoding it; `None`
    /// when the header is cut short or malformed. Bounded: a JPEG's segments are skipped by
    /// their lengths, so the scan is linear in the bytes and allocates nothing.
    pub fn dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
        let be16 = |at: usize| -> Option<u32> {
            let b = bytes.get(at..at + 2)?;
            Some(u32::from(u16::from_be_bytes([b[0], b[1]])))
        };
        let le16 = |at: usize| -> Option<u32> {
            let b = bytes.get(at..at + 2)?;
            Some(u32::from(u16::from_le_bytes([b[0], b[1]])))
        };
        let be32 = |at: usize| -> Option<u32> {
            let b = bytes.get(at..at + 4)?;
            Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let le24 = |at: usize| -> Option<u32> {
            let b = bytes.get(at..at + 3)?;
            Some(u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16)
        };
        let (width, height) = match ImageKind::sniff(bytes)? {
            // The signature, then IHDR: length, "IHDR", width, height.
            ImageKind::Png if bytes.get(12..16) == Some(b"IHDR") => (be32(16)?, be32(20)?),
            ImageKind::Png => return None,
            ImageKind::Gif => (le16(6)?, le16(8)?),
            ImageKind::Webp => match bytes.get(12..16)? {
                b"VP8 " if bytes.get(23..26) == Some(&[0x9D, 0x01, 0x2A]) => {
                    (le16(26)? & 0x3FFF, le16(28)? & 0x3FFF)
                }
                b"VP8L" if bytes.get(20) == Some(&0x2F) => {
                    let bits = le24(21)? | u32::from(*bytes.get(24)?) << 24;
                    ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
                }
                b"VP8X" => (le24(24)? + 1, le24(27)? + 1),
                _ => return None,
            },
            ImageKind::Jpeg => {
                // Segments after SOI: FF, marker, then (for most) a big-endian length that
                // counts itself. The first start-of-frame carries the size.
                let mut at = 2;
                loop {
                    if *bytes.get(at)? != 0xFF {
                        return None;
                    }
                    let marker = *bytes.get(at + 1)?;
                    match marker {
                        0xFF => at += 1,
                        0xD0..=0xD9 | 0x01 => at += 2,
                        0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                            break (be16(at + 7)?, be16(at + 5)?);
                        }
                        _ => at = at.checked_add(2)?.checked_add(be16(at + 2)? as usize)?,
                    }
                }
            }
        };
        (width > 0 && height > 0).then_some((width, height))
    }

    /// Whether an image's header declares an alpha channel: a PNG of colour type 4 or 6, or
    /// with a `tRNS` chunk before its image data; a WebP whose extended header flags alpha or
    /// whose lossless header hints it.
    pub fn has_alpha(bytes: &[u8]) -> bool {
        match ImageKind::sniff(bytes) {
            Some(ImageKind::Png) => {
                matches!(bytes.get(25), Some(4 | 6))
                    || png_chunks(bytes)
                        .map_while(Result::ok)
                        .take_while(|(kind, _)| kind != b"IDAT")
                        .any(|(kind, _)| &kind == b"tRNS")
            }
            Some(ImageKind::Webp) => match bytes.get(12..16) {
                Some(b"VP8X") => bytes.get(20).is_some_and(|flags| flags & 0x10 != 0),
                Some(b"VP8L") => bytes.get(24).is_some_and(|b| b & 0x10 != 0),
                _ => false,
            },
            _ => false,
        }
    }

    /// The usual file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "jpg",
            ImageKind::Png => "png",
            ImageKind::Gif => "gif",
            ImageKind::Webp => "webp",
        }
    }
}

/// The eight bytes every PNG starts with.
pub(crate) const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// The chunks of a PNG, each as its four-letter kind and its whole bytes (length, kind,
/// data, CRC), walked by their lengths without inflating anything, up to `IEND`; an `Err`
/// (then nothing more) when the list is cut short. Nothing for a file that is not a PNG.
pub(crate) fn png_chunks(
    file: &[u8],
) -> impl Iterator<Item = Result<([u8; 4], &[u8]), &'static str>> {
    let mut rest = file
        .strip_prefix(PNG_SIGNATURE.as_slice())
        .unwrap_or_default();
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some(header) = rest.get(..8) else {
            rest = &[];
            return Some(Err("the PNG's chunk list is cut short"));
        };
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = [header[4], header[5], header[6], header[7]];
        let Some(whole) = length.checked_add(12).filter(|whole| *whole <= rest.len()) else {
            rest = &[];
            return Some(Err("a PNG chunk runs past the end of the file"));
        };
        let (chunk, tail) = rest.split_at(whole);
        rest = if &kind == b"IEND" { &[] } else { tail };
        Some(Ok((kind, chunk)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_numbers() {
        assert_eq!(
            ImageKind::sniff(b"\xFF\xD8\xFF\xE0rest"),
            Some(ImageKind::Jpeg)
        );
        assert_eq!(
            ImageKind::sniff(b"\x89PNG\r\n\x1a\nIHDR"),
            Some(ImageKind::Png)
        );
        assert_eq!(ImageKind::sniff(b"GIF89a..."), Some(ImageKind::Gif));
        assert_eq!(
            ImageKind::sniff(b"RIFF\0\0\0\0WEBPVP8 "),
            Some(ImageKind::Webp)
        );
        assert_eq!(ImageKind::sniff(b"RIFF\0\0\0\0WAVEfmt "), None);
        assert_eq!(ImageKind::sniff(b"hello, I am text.png"), None);
        assert_eq!(ImageKind::sniff(b"\x89PN"), None);
        assert_eq!(ImageKind::sniff(b""), None);
    }

    #[test]
    fn alpha_from_colour_type_or_a_trns_chunk_before_the_data() {
        let chunk = |kind: &[u8; 4], data: &[u8]| {
            let mut out = (data.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            out.extend_from_slice(&[0; 4]);
            out
        };
        // IHDR: 1x1, depth 8, colour type `ty`.
        let png = |ty: u8, middle: &[Vec<u8>]| {
            let mut out = PNG_SIGNATURE.to_vec();
            out.extend(chunk(b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, ty, 0, 0, 0]));
            for c in middle {
                out.extend_from_slice(c);
            }
            out.extend(chunk(b"IDAT", b"x"));
            out.extend(chunk(b"tRNS", b"late"));
            out.extend(chunk(b"IEND", b""));
            out
        };
        assert!(ImageKind::has_alpha(&png(6, &[])));
        assert!(
            !ImageKind::has_alpha(&png(2, &[])),
            "a tRNS after IDAT is not read"
        );
        assert!(ImageKind::has_alpha(&png(2, &[chunk(b"tRNS", b"\0")])));
        // The word inside another chunk's data is not a chunk.
        assert!(!ImageKind::has_alpha(&png(2, &[chunk(b"tEXt", b"tRNS")])));
    }

    #[test]
    fn dimensions_from_headers() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(&3840u32.to_be_bytes());
        png.extend_from_slice(&2160u32.to_be_bytes());
        assert_eq!(ImageKind::dimensions(&png), Some((3840, 2160)));
        assert_eq!(ImageKind::dimensions(&png[..22]), None);
        assert_eq!(
            ImageKind::dimensions(b"GIF89a\x20\x03\x58\x02"),
            Some((800, 600))
        );
        // SOI, an APP0 of 16 bytes, then SOF0: length 17, precision 8, height 480, width 640.
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
        jpeg.extend_from_slice(&[0; 14]);
        jpeg.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08, 0x01, 0xE0, 0x02, 0x80]);
        assert_eq!(ImageKind::dimensions(&jpeg), Some((640, 480)));
        // A segment length that points past the end is no answer, not a panic.
        assert_eq!(
            ImageKind::dimensions(&[0xFF, 0xD8, 0xFF, 0xE0, 0xFF, 0xFF]),
            None
        );
        let mut vp8x = b"RIFF\0\0\0\0WEBPVP8X".to_vec();
        vp8x.extend_from_slice(&[0; 8]);
        vp8x.extend_from_slice(&[0xFF, 0x03, 0x00, 0x7F, 0x02, 0x00]);
        assert_eq!(ImageKind::dimensions(&vp8x), Some((1024, 640)));
    }
}
