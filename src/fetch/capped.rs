//! Reading an HTTP answer's body within a byte cap: the one loop the URL fetcher and the
//! upstream backend share.

use bytes::{Bytes, BytesMut};

/// Why a capped read stopped.
#[derive(Debug)]
pub(crate) enum CappedError {
    /// The body is (or announced it would be) longer than the cap.
    TooLarge,
    /// The transfer failed.
    Transport(reqwest::Error),
}

/// The whole body of `response`, refused once it passes `cap` bytes (at once when its
/// `Content-Length` says so), so a large answer is never buffered past the cap.
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    cap: u64,
) -> Result<Bytes, CappedError> {
    if response.content_length().is_some_and(|len| len > cap) {
        return Err(CappedError::TooLarge);
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(CappedError::Transport)? {
        if (body.len() + chunk.len()) as u64 > cap {
            return Err(CappedError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
