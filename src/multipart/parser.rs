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
use super::MultipartLimits;
use crate::BoxError;

/// Why a multipart body could not be read.
#[derive(Debug)]
pub(crate) enum MultipartError {
    /// The body passed its byte limit.
    TooLarge,
    /// A part's header block passed its byte limit.
    HeaderTooLong(usize),
    /// The body has more parts than its limit.
    TooManyParts(usize),
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
            MultipartError::TooManyParts(limit) => {
                write!(f, "a multipart body may have at most {limit} parts")
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
    /// The close delimiter was read, and the rest of the body read past.
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
    parts: usize,
    limits: MultipartLimits,
}

impl<S, E> Parts<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<BoxError>,
{
    /// A reader of `body`, whose parts are separated by `boundary`, held to `limits`' whole
    /// body, part count and part headers. Fails when the boundary is empty, longer than 70
    /// bytes (RFC 2046) or holds a line break.
    pub(crate) fn new(
        body: S,
        boundary: &str,
        limits: MultipartLimits,
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
            parts: 0,
            limits,
        })
    }

    /// The next part's headers, after reading past whatever is left of the current part;
    /// `None` after the close delimiter, once the rest of the body (an epilogue, a chunked
    /// terminator that comes in a write of its own) has been read too, within the body
    /// limit: a server that answered with request bytes unread would close the connection
    /// and the client's kernel would reset it, cutting the answer off.
    pub(crate) async fn next_part(&mut self) -> Result<Option<PartHead>, MultipartError> {
        while self.chunk().await?.is_some() {}
        if self.state == State::Done {
            return Ok(None);
        }
        // After `--boundary`: `--` closes the body; else optional padding, then CRLF.
        let first = self.next_byte().await?;
        if first == b'-' {
            if self.next_byte().await? == b'-' {
                self.pending.clear();
                while self.fill().await? {
                    self.pending.clear();
                }
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
        self.parts += 1;
        if self.parts > self.limits.parts {
            return Err(MultipartError::TooManyParts(self.limits.parts));
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

    /// The most bytes the rest of the body can still hold: what is read but not yet
    /// returned plus what the body limit still allows.
    pub(crate) fn unread_bound(&self) -> u64 {
        self.limits.whole_body.saturating_sub(self.read) + self.pending.len() as u64
    }

    /// Reads the next chunk into `pending`; `false` at the end of the body.
    async fn fill(&mut self) -> Result<bool, MultipartError> {
        loop {
            match self.body.next().await {
                None => return Ok(false),
                Some(Err(error)) => return Err(MultipartError::Read(error.into())),
                Some(Ok(chunk)) => {
                    self.read += chunk.len() as u64;
                    if self.read > self.limits.whole_body {
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
        let limit = self.limits.part_header;
        let cap = limit + 2 + BLANK_LINE.len();
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
                return Err(MultipartError::HeaderTooLong(limit));
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
#[path = "parser_tests.rs"]
mod tests;
