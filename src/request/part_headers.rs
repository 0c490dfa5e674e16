//! A bound on the header block of each multipart part, checked on the raw stream.
//!
//! multer reads a part's headers until the blank line, however long that takes, bounded only
//! by the whole-body limit. [`HeaderLimit`] passes the body's chunks through untouched (no
//! copy) while it follows where part headers begin (`CRLF--boundary`) and end
//! (`CRLF CRLF`), and fails the stream once one header block passes its limit.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use memchr::memmem;
use pin_project_lite::pin_project;

use crate::BoxError;

/// The error a [`HeaderLimit`] stream fails with.
#[derive(Debug)]
pub(crate) struct PartHeaderTooLong(pub(crate) usize);

impl fmt::Display for PartHeaderTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a multipart part header is longer than {} bytes", self.0)
    }
}

impl std::error::Error for PartHeaderTooLong {}

const END_OF_HEADERS: &[u8] = b"\r\n\r\n";

#[derive(Debug)]
enum Scan {
    /// Looking for the next `CRLF--boundary`.
    Data,
    /// Inside a header block, this many bytes in.
    Header(usize),
}

pin_project! {
    pub(crate) struct HeaderLimit<S> {
        #[pin]
        inner: S,
        marker: Vec<u8>,
        limit: usize,
        scan: Scan,
        // The last bytes of what was scanned, so a pattern split across chunks is found.
        tail: Vec<u8>,
        failed: bool,
    }
}

impl<S> HeaderLimit<S> {
    pub(crate) fn new(inner: S, boundary: &str, limit: usize) -> Self {
        HeaderLimit {
            inner,
            marker: [b"\r\n--".as_slice(), boundary.as_bytes()].concat(),
            limit,
            scan: Scan::Data,
            // The body's first boundary has no CRLF before it: pretend one.
            tail: b"\r\n".to_vec(),
            failed: false,
        }
    }
}

/// The end (in `chunk`, from `from`) of the first `pattern` in `tail ++ chunk[from..]`.
fn find_end(tail: &[u8], chunk: &[u8], from: usize, pattern: &[u8]) -> Option<usize> {
    let rest = &chunk[from..];
    // A match that starts in the tail ends within the first `pattern.len() - 1` bytes.
    let reach = rest.len().min(pattern.len().saturating_sub(1));
    let mut junction = Vec::with_capacity(tail.len() + reach);
    junction.extend_from_slice(tail);
    junction.extend_from_slice(&rest[..reach]);
    let straddling = memmem::find(&junction, pattern)
        .filter(|start| *start < tail.len())
        .map(|start| from + start + pattern.len() - tail.len());
    straddling.or_else(|| memmem::find(rest, pattern).map(|start| from + start + pattern.len()))
}

fn keep_tail(tail: &mut Vec<u8>, chunk: &[u8], keep: usize) {
    tail.extend_from_slice(&chunk[chunk.len().saturating_sub(keep)..]);
    let excess = tail.len().saturating_sub(keep);
    tail.drain(..excess);
}

impl<S> HeaderLimit<S> {
    fn check(
        scan: &mut Scan,
        tail: &mut Vec<u8>,
        marker: &[u8],
        limit: usize,
        chunk: &[u8],
    ) -> Result<(), PartHeaderTooLong> {
        let mut pos = 0;
        loop {
            match *scan {
                Scan::Data => match find_end(tail, chunk, pos, marker) {
                    Some(end) => {
                        *scan = Scan::Header(0);
                        tail.clear();
                        pos = end;
                    }
                    None => {
                        keep_tail(tail, &chunk[pos..], marker.len() - 1);
                        return Ok(());
                    }
                },
                Scan::Header(seen) => match find_end(tail, chunk, pos, END_OF_HEADERS) {
                    Some(end) => {
                        if seen + (end - pos) > limit {
                            return Err(PartHeaderTooLong(limit));
                        }
                        *scan = Scan::Data;
                        tail.clear();
                        pos = end;
                    }
                    None => {
                        let seen = seen + chunk.len() - pos;
                        if seen > limit {
                            return Err(PartHeaderTooLong(limit));
                        }
                        *scan = Scan::Header(seen);
                        keep_tail(tail, &chunk[pos..], END_OF_HEADERS.len() - 1);
                        return Ok(());
                    }
                },
            }
        }
    }
}

impl<S, E> Stream for HeaderLimit<S>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<BoxError>,
{
    type Item = Result<Bytes, BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        match this.inner.poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                match Self::check(this.scan, this.tail, this.marker, *this.limit, &chunk) {
                    Ok(()) => Poll::Ready(Some(Ok(chunk))),
                    Err(too_long) => {
                        *this.failed = true;
                        Poll::Ready(Some(Err(Box::new(too_long))))
                    }
                }
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn body(header_pad: usize) -> Vec<u8> {
        format!(
            "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue\r\n\
             --b\r\nContent-Disposition: form-data; name=\"pad\"\r\nX-Pad: {}\r\n\r\nv\r\n--b--\r\n",
            "p".repeat(header_pad)
        )
        .into_bytes()
    }

    fn run(body: &[u8], chunk: usize, limit: usize) -> Result<usize, String> {
        let chunks: Vec<Result<Bytes, std::io::Error>> = body
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let stream = HeaderLimit::new(futures_util::stream::iter(chunks), "b", limit);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut total = 0;
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                total += item.map_err(|e| e.to_string())?.len();
            }
            Ok(total)
        })
    }

    #[test]
    fn passes_short_headers_in_any_chunking_and_refuses_long_ones() {
        for chunk in [1, 2, 3, 5, 7, 64, 4096] {
            let ok = body(100);
            assert_eq!(run(&ok, chunk, 200), Ok(ok.len()), "chunk {chunk}");
            let long = body(300);
            assert!(
                run(&long, chunk, 200)
                    .unwrap_err()
                    .contains("longer than 200"),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn boundary_text_inside_data_without_crlf_is_data() {
        let body =
            b"--b\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nxx--b yy--b zz\r\n--b--\r\n";
        assert_eq!(run(body, 3, 64), Ok(body.len()));
    }
}
