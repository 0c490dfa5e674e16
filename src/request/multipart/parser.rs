//! A streaming `multipart/form-data` reader that hands out slices of the body's own chunks.
//!
//! The body arrives as `Bytes` chunks cut from the connection's read buffer. Part data is
//! returned as sub-slices of those chunks, so the reader itself copies no part data; the only
//! bytes it copies are part headers (bounded per part) and the few bytes of a possible
//! delimiter that straddles two chunks. A delimiter can only start at a CR (the boundary holds
//! none), so at most one partial delimiter is ever carried.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use memchr::memmem;

use super::params::{parameter, parameters};
use crate::BoxError;

/// Why a multipart body could not be read.
#[derive(Debug)]
pub(crate) enum MultipartError {
    /// The body passed its byte limit.
    TooLarge,
    /// A part's header block passed its byte limit.
    HeaderTooLong(usize),
    /// The body is not well-formed multipart.
    Malformed(&'static str),
    /// The body stream failed (client gone, deadline, an outer limit).
    Read(BoxError),
}

impl fmt::Display for MultipartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MultipartError::TooLarge => f.write_str("the multipart body is too large"),
            MultipartError::HeaderTooLong(limit) => {
                write!(f, "a multipart part header is longer than {limit} bytes")
            }
            MultipartError::Malformed(what) => write!(f, "malformed multipart body: {what}"),
            MultipartError::Read(_) => f.write_str("the request body could not be read"),
        }
    }
}

/// What a part's headers say about it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PartHead {
    /// The `name` of its `Content-Disposition`; empty when there is none.
    pub(crate) name: String,
    /// The `filename` of its `Content-Disposition`.
    pub(crate) filename: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Reading data up to the next delimiter (a part's, or the preamble before the first).
    Data,
    /// A delimiter was just read; the next part (or the end) follows.
    Delimited,
    /// The close delimiter was read; the rest of the body is ignored.
    Done,
}

/// Reads the parts of one multipart body in order.
pub(crate) struct Parts<S> {
    body: S,
    /// `CRLF--boundary`.
    delimiter: Box<[u8]>,
    // Boxed: its SIMD state is 32-byte aligned, and inline it would make every future that
    // holds a reader over-aligned (allocated by the slower aligned allocator).
    finder: Box<memmem::Finder<'static>>,
    /// What is left of the last chunk read.
    pending: Bytes,
    /// A proper prefix of the delimiter seen at the end of a chunk: data or delimiter, as the
    /// next bytes decide.
    carry: BytesMut,
    state: State,
    read: u64,
    body_limit: u64,
    header_limit: usize,
}

impl<S, E> Parts<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<BoxError>,
{
    /// A reader of `body`, whose parts are separated by `boundary`. Fails when the boundary
    /// is empty, longer than 70 bytes (RFC 2046) or holds a line break.
    pub(crate) fn new(
        body: S,
        boundary: &str,
        body_limit: u64,
        header_limit: usize,
    ) -> Result<Self, MultipartError> {
        if boundary.is_empty() || boundary.len() > 70 || boundary.contains(['\r', '\n']) {
            return Err(MultipartError::Malformed(
                "the boundary must be 1 to 70 characters",
            ));
        }
        let delimiter: Box<[u8]> = [b"\r\n--".as_slice(), boundary.as_bytes()].concat().into();
        let finder = Box::new(memmem::Finder::new(&delimiter).into_owned());
        Ok(Parts {
            body,
            finder,
            pending: Bytes::new(),
            // The first delimiter has no line break before it: the preamble starts with one.
            carry: BytesMut::from(&b"\r\n"[..]),
            delimiter,
            state: State::Data,
            read: 0,
            body_limit,
            header_limit,
        })
    }

    /// The next part's headers, after reading past whatever is left of the current part;
    /// `None` after the close delimiter.
    pub(crate) async fn next_part(&mut self) -> Result<Option<PartHead>, MultipartError> {
        while self.chunk().await?.is_some() {}
        if self.state == State::Done {
            return Ok(None);
        }
        // After `--boundary`: `--` closes the body; else optional padding, then CRLF.
        let first = self.next_byte().await?;
        if first == b'-' {
            if self.next_byte().await? == b'-' {
                self.state = State::Done;
                return Ok(None);
            }
            return Err(MultipartError::Malformed("a delimiter is followed by text"));
        }
        let mut byte = first;
        while byte == b' ' || byte == b'\t' {
            byte = self.next_byte().await?;
        }
        if byte != b'\r' || self.next_byte().await? != b'\n' {
            return Err(MultipartError::Malformed("a delimiter is followed by text"));
        }
        let head = self.header_block().await?;
        self.state = State::Data;
        Ok(Some(head))
    }

    /// The next piece of the current part's data; `None` at its end.
    pub(crate) async fn chunk(&mut self) -> Result<Option<Bytes>, MultipartError> {
        if self.state != State::Data {
            return Ok(None);
        }
        loop {
            if self.pending.is_empty() && !self.fill().await? {
                return Err(MultipartError::Malformed("the body ended inside a part"));
            }
            if !self.carry.is_empty() {
                let matched = self.carry.len();
                let take = (self.delimiter.len() - matched).min(self.pending.len());
                if self.pending[..take] == self.delimiter[matched..matched + take] {
                    self.pending.advance(take);
                    if matched + take == self.delimiter.len() {
                        self.carry.clear();
                        self.state = State::Delimited;
                        return Ok(None);
                    }
                    self.carry
                        .extend_from_slice(&self.delimiter[matched..matched + take]);
                    continue;
                }
                // Not a delimiter after all: what was carried is data.
                return Ok(Some(self.carry.split().freeze()));
            }
            if let Some(at) = self.finder.find(&self.pending) {
                let data = self.pending.split_to(at);
                self.pending.advance(self.delimiter.len());
                self.state = State::Delimited;
                return Ok((!data.is_empty()).then_some(data));
            }
            // No whole delimiter: keep back a tail that may begin one.
            let window = self.pending.len().saturating_sub(self.delimiter.len() - 1);
            let keep = memchr::memrchr(b'\r', &self.pending[window..])
                .map(|at| window + at)
                .filter(|&at| self.delimiter.starts_with(&self.pending[at..]))
                .unwrap_or(self.pending.len());
            let data = self.pending.split_to(keep);
            self.carry.extend_from_slice(&self.pending);
            self.pending.clear();
            if !data.is_empty() {
                return Ok(Some(data));
            }
        }
    }

    /// Reads the next chunk into `pending`; `false` at the end of the body.
    async fn fill(&mut self) -> Result<bool, MultipartError> {
        loop {
            match self.body.next().await {
                None => return Ok(false),
                Some(Err(error)) => return Err(MultipartError::Read(error.into())),
                Some(Ok(chunk)) => {
                    self.read += chunk.len() as u64;
                    if self.read > self.body_limit {
                        return Err(MultipartError::TooLarge);
                    }
                    if !chunk.is_empty() {
                        self.pending = chunk;
                        return Ok(true);
                    }
                }
            }
        }
    }

    async fn next_byte(&mut self) -> Result<u8, MultipartError> {
        if self.pending.is_empty() && !self.fill().await? {
            return Err(MultipartError::Malformed(
                "the body ended after a delimiter",
            ));
        }
        Ok(self.pending.get_u8())
    }

    /// Reads header lines up to the blank line and picks out the `Content-Disposition`.
    async fn header_block(&mut self) -> Result<PartHead, MultipartError> {
        const BLANK_LINE: &[u8] = b"\r\n\r\n";
        // The CRLF that ended the delimiter line lets an empty block end at once.
        let mut block = b"\r\n".to_vec();
        let cap = self.header_limit + 2 + BLANK_LINE.len();
        let end = loop {
            if self.pending.is_empty() && !self.fill().await? {
                return Err(MultipartError::Malformed(
                    "the body ended inside part headers",
                ));
            }
            let from = block.len().saturating_sub(BLANK_LINE.len() - 1);
            let take = self.pending.len().min(cap - block.len());
            block.extend_from_slice(&self.pending[..take]);
            if let Some(at) = memmem::find(&block[from..], BLANK_LINE) {
                let end = from + at + BLANK_LINE.len();
                self.pending.advance(take - (block.len() - end));
                break end;
            }
            self.pending.advance(take);
            if block.len() == cap {
                return Err(MultipartError::HeaderTooLong(self.header_limit));
            }
        };
        let mut head = PartHead::default();
        for line in block[2..end - 2].split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            if !line[..colon]
                .trim_ascii()
                .eq_ignore_ascii_case(b"content-disposition")
            {
                continue;
            }
            let value = String::from_utf8_lossy(&line[colon + 1..]);
            let (_, params) = parameters(&value);
            head.name = parameter(&params, "name").unwrap_or_default();
            head.filename = parameter(&params, "filename");
        }
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    type Chunks = futures_util::stream::Iter<std::vec::IntoIter<Result<Bytes, std::io::Error>>>;

    fn chunked(body: &[u8], cuts: &[usize]) -> Chunks {
        let mut chunks = Vec::new();
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
            let cut = cut.clamp(at, body.len());
            chunks.push(Ok(Bytes::copy_from_slice(&body[at..cut])));
            at = cut;
        }
        futures_util::stream::iter(chunks)
    }

    /// Every part as (name, filename, data), or the error's text.
    fn read_all(
        body: Chunks,
        boundary: &str,
        header_limit: usize,
    ) -> Result<Vec<(PartHead, Vec<u8>)>, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut parts =
                Parts::new(body, boundary, u64::MAX, header_limit).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            while let Some(head) = parts.next_part().await.map_err(|e| e.to_string())? {
                let mut data = Vec::new();
                while let Some(chunk) = parts.chunk().await.map_err(|e| e.to_string())? {
                    assert!(!chunk.is_empty());
                    data.extend_from_slice(&chunk);
                }
                out.push((head, data));
            }
            Ok(out)
        })
    }

    fn every_chunking(body: &[u8]) -> impl Iterator<Item = Chunks> + '_ {
        [1, 2, 3, 5, 7, 64, 4096].into_iter().map(move |size| {
            let cuts: Vec<usize> = (size..body.len()).step_by(size).collect();
            chunked(body, &cuts)
        })
    }

    fn padded(header_pad: usize) -> Vec<u8> {
        format!(
            "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue\r\n\
             --b\r\nContent-Disposition: form-data; name=\"pad\"\r\nX-Pad: {}\r\n\r\nv\r\n--b--\r\n",
            "p".repeat(header_pad)
        )
        .into_bytes()
    }

    #[test]
    fn short_headers_pass_and_long_ones_fail_in_any_chunking() {
        for body in every_chunking(&padded(100)) {
            let parts = read_all(body, "b", 200).unwrap();
            assert_eq!(parts.len(), 2);
            assert_eq!(parts[1].0.name, "pad");
            assert_eq!(parts[1].1, b"v");
        }
        let long = padded(300);
        for body in every_chunking(&long) {
            assert!(read_all(body, "b", 200)
                .unwrap_err()
                .contains("longer than 200"));
        }
    }

    #[test]
    fn delimiter_lookalikes_inside_data_are_data_in_any_chunking() {
        let data = b"xx--b \r\n--c \r\r\n-\r\n--\r\n-b zz\r\r\n--";
        let mut body = b"preamble\r\n--b\r\nContent-Disposition: form-data; name=\"f\"; \
                         filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n"
            .to_vec();
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n--b--\r\nepilogue");
        for chunks in every_chunking(&body) {
            let parts = read_all(chunks, "b", 256).unwrap();
            assert_eq!(parts.len(), 1);
            assert_eq!(parts[0].0.filename.as_deref(), Some("x.png"));
            assert_eq!(parts[0].1, data);
        }
        // `CRLF--` and the boundary begin a delimiter even when more text follows.
        let body = b"--b\r\n\r\nxx\r\n--bb zz\r\n--b--";
        for chunks in every_chunking(body) {
            assert!(read_all(chunks, "b", 256)
                .unwrap_err()
                .contains("followed by text"));
        }
    }

    #[test]
    fn a_part_without_headers_or_data_and_transport_padding() {
        let body =
            b"--b \t\r\n\r\n\r\n--b\r\nContent-Disposition: form-data; name=n\r\n\r\n\r\n--b--";
        for chunks in every_chunking(body) {
            let parts = read_all(chunks, "b", 64).unwrap();
            assert_eq!(parts.len(), 2);
            assert_eq!(parts[0], (PartHead::default(), Vec::new()));
            assert_eq!(parts[1].0.name, "n");
            assert!(parts[1].1.is_empty());
        }
    }

    #[test]
    fn truncated_bodies_and_bad_boundaries_are_errors() {
        for body in [
            &b""[..],
            b"no delimiter at all",
            b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nunterminated",
            b"--b\r\nContent-Disposition: form-data; name=a\r\n",
            b"--b",
            b"--b-",
        ] {
            assert!(read_all(chunked(body, &[]), "b", 64).is_err(), "{body:?}");
        }
        for boundary in ["", "a\rb", &"x".repeat(71)] {
            assert!(read_all(chunked(b"", &[]), boundary, 64).is_err());
        }
    }

    #[test]
    fn the_body_limit_counts_every_byte() {
        let body = padded(10);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let limit = body.len() as u64 - 1;
        let error = runtime.block_on(async {
            let mut parts = Parts::new(chunked(&body, &[7, 50]), "b", limit, 1024).unwrap();
            loop {
                match parts.next_part().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return None,
                    Err(error) => return Some(error),
                }
            }
        });
        assert!(matches!(error, Some(MultipartError::TooLarge)));
    }

    /// A part as (name, filename, data).
    type Field = (String, Option<String>, Vec<u8>);

    /// What multer, a reader written independently, makes of the same body.
    fn multer_reads(body: &[u8], boundary: &str) -> Option<Vec<Field>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let stream = chunked(body, &[]);
        runtime.block_on(async {
            let mut form = multer::Multipart::new(stream, boundary);
            let mut out = Vec::new();
            while let Some(field) = form.next_field().await.ok()? {
                let name = field.name().unwrap_or_default().to_owned();
                let filename = field.file_name().map(str::to_owned);
                out.push((name, filename, field.bytes().await.ok()?.to_vec()));
            }
            Some(out)
        })
    }

    fn part_data() -> impl Strategy<Value = Vec<u8>> {
        // Bytes that often look like the start of a delimiter.
        proptest::collection::vec(
            prop_oneof![
                Just(b"\r".to_vec()),
                Just(b"\r\n".to_vec()),
                Just(b"\r\n-".to_vec()),
                Just(b"\r\n--".to_vec()),
                Just(b"\r\n--bound".to_vec()),
                Just(b"--boundary".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..40),
            ],
            0..12,
        )
        .prop_map(|pieces| pieces.concat())
        .prop_filter("data must not hold the delimiter", |data| {
            memmem::find(
                &[b"\r\n".as_slice(), data, b"\r\n"].concat(),
                b"\r\n--boundary",
            )
            .is_none()
        })
    }

    proptest! {
        #[test]
        fn reads_what_multer_reads_in_any_chunking(
            parts in proptest::collection::vec(("[a-z\\[\\]]{0,8}", proptest::option::of("[a-z.]{1,8}"), part_data()), 0..5),
            cuts in proptest::collection::vec(0usize..2000, 0..30),
        ) {
            let mut body = b"preamble".to_vec();
            for (name, filename, data) in &parts {
                body.extend_from_slice(b"\r\n--boundary\r\nContent-Disposition: form-data; name=\"");
                body.extend_from_slice(name.as_bytes());
                body.push(b'"');
                if let Some(filename) = filename {
                    body.extend_from_slice(format!("; filename=\"{filename}\"").as_bytes());
                }
                body.extend_from_slice(b"\r\n\r\n");
                body.extend_from_slice(data);
            }
            body.extend_from_slice(b"\r\n--boundary--\r\n");
            let mut cuts = cuts;
            cuts.sort_unstable();
            let ours = read_all(chunked(&body, &cuts), "boundary", 8192);
            let expected: Vec<_> = parts.clone();
            let ours: Vec<_> = ours.unwrap().into_iter().map(|(h, d)| (h.name, h.filename, d)).collect();
            prop_assert_eq!(&ours, &expected);
            if !parts.is_empty() {
                prop_assert_eq!(Some(ours), multer_reads(&body, "boundary"));
            }
        }
    }
}
