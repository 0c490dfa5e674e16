//! PNG chunk filtering before a decoder sees the file.
//!
//! A PNG's ancillary chunks (colour profiles, compressed text) are inflated by decoders
//! with generous or no limits: a 1 MB `iCCP` chunk can inflate to 1 GiB. The reference
//! backend needs none of them, so it drops them all, walking the chunk list without
//! inflating anything. Critical chunks and `tRNS` (transparency) are kept.

use crate::media::{png_chunks, PNG_SIGNATURE};

/// `Ok(None)` when `file` is not a PNG or has nothing to drop; `Ok(Some(copy))` without
/// its ancillary chunks; `Err` when its chunk list is cut short.
pub(crate) fn strip_ancillary(file: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
    if !file.starts_with(PNG_SIGNATURE) {
        return Ok(None);
    }
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut dropped = false;
    for chunk in png_chunks(file) {
        let (kind, bytes) = chunk?;
        // Bit 5 of the first letter: lowercase marks an ancillary chunk.
        if kind[0].is_ascii_lowercase() && &kind != b"tRNS" {
            dropped = true;
        } else {
            kept.push(bytes);
        }
    }
    if !dropped {
        return Ok(None);
    }
    let mut out =
        Vec::with_capacity(PNG_SIGNATURE.len() + kept.iter().map(|c| c.len()).sum::<usize>());
    out.extend_from_slice(PNG_SIGNATURE);
    for chunk in kept {
        out.extend_from_slice(chunk);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&[0; 4]);
        out
    }

    fn file(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = PNG_SIGNATURE.to_vec();
        for c in chunks {
            out.extend_from_slice(c);
        }
        out
    }

    #[test]
    fn ancillary_chunks_are_dropped_and_critical_ones_kept_in_order() {
        let (ihdr, idat, iend) = (
            chunk(b"IHDR", &[1; 13]),
            chunk(b"IDAT", b"px"),
            chunk(b"IEND", b""),
        );
        let trns = chunk(b"tRNS", b"t");
        let input = file(&[
            ihdr.clone(),
            chunk(b"iCCP", &[7; 100]),
            trns.clone(),
            idat.clone(),
            chunk(b"zTXt", b"z"),
            iend.clone(),
        ]);
        let stripped = strip_ancillary(&input).unwrap().unwrap();
        assert_eq!(stripped, file(&[ihdr, trns, idat, iend]));
    }

    #[test]
    fn nothing_to_drop_and_not_a_png_are_left_alone() {
        let input = file(&[chunk(b"IHDR", &[1; 13]), chunk(b"IEND", b"")]);
        assert_eq!(strip_ancillary(&input).unwrap(), None);
        assert_eq!(strip_ancillary(b"GIF89a....").unwrap(), None);
    }

    #[test]
    fn a_chunk_past_the_end_is_an_error_not_a_panic() {
        let mut input = file(&[chunk(b"IHDR", &[1; 13])]);
        input.extend_from_slice(&u32::MAX.to_be_bytes());
        input.extend_from_slice(b"iCCP");
        assert!(strip_ancillary(&input).is_err());
        assert!(strip_ancillary(&PNG_SIGNATURE[..]).unwrap().is_none());
        assert!(strip_ancillary(&[PNG_SIGNATURE.as_slice(), &[0, 0]].concat()).is_err());
    }
}
