//! The body of every answer the gateway's own services give, and the one way their JSON
//! answers are built.
//!
//! Most answers are one small buffer of JSON. An edit's answer carries its images as base64,
//! which for ten 4K outputs is hundreds of megabytes: it is encoded as it is sent, a chunk at
//! a time, so an answer never costs more memory than the images it carries and one chunk.

use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

/// A response with `status` and the JSON `body`.
pub(crate) fn json<B: From<Bytes>>(status: StatusCode, body: Bytes) -> Response<B> {
    let mut response = Response::new(B::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A `200 OK` with `body` as JSON.
pub(crate) fn json_ok<B: From<Bytes>>(body: &serde_json::Value) -> Response<B> {
    json(StatusCode::OK, Bytes::from(body.to_string()))
}

/// Image bytes encoded per chunk: a multiple of 3, so chunks join into one base64 string.
const CHUNK_INPUT: usize = 48 * 1024;

/// A response body: one buffer, or images encoded as base64 between JSON pieces.
pub struct ResponseBody(Kind, Option<Kept>);

/// Something kept as long as the body is being sent (the server's mark that its connection
/// is busy): dropped at the body's end, or with the body when its reader leaves.
type Kept = Box<dyn Send + Sync>;

enum Kind {
    Full(Option<Bytes>),
    Encoded(Encoded),
    /// Frames as a task produces them (a stream of server-sent events); ends when the
    /// task drops its sender.
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}

/// Pieces of a JSON document, some literal and some base64 of bytes, sent in order.
struct Encoded {
    pieces: std::vec::IntoIter<Piece>,
    current: Option<(Bytes, usize)>,
    remaining: u64,
}

/// One piece of an encoded body.
pub(crate) enum Piece {
    /// Sent as is.
    Literal(String),
    /// Sent as standard base64 with padding.
    Base64(Bytes),
}

impl ResponseBody {
    /// An empty body.
    pub fn empty() -> Self {
        ResponseBody(Kind::Full(None), None)
    }

    /// `pieces` in order, base64 ones encoded as they are sent; a small body (at most one
    /// chunk) is encoded at once, as one frame.
    pub(crate) fn encoded(pieces: Vec<Piece>) -> Self {
        let remaining = pieces
            .iter()
            .map(|piece| match piece {
                Piece::Literal(text) => text.len() as u64,
                Piece::Base64(bytes) => base64::encoded_len(bytes.len(), true).unwrap_or(0) as u64,
            })
            .sum();
        let encoded = Encoded {
            pieces: pieces.into_iter(),
            current: None,
            remaining,
        };
        if remaining <= CHUNK_INPUT as u64 {
            return ResponseBody(Kind::Encoded(encoded), None)
                .into_bytes()
                .into();
        }
        ResponseBody(Kind::Encoded(encoded), None)
    }

    /// Frames sent by whoever holds the other end of `frames`, as they come.
    pub(crate) fn stream(frames: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        ResponseBody(Kind::Stream(frames), None)
    }

    /// Keeps `kept` until the body has been sent to its end or dropped: what must last as
    /// long as the answer is in progress, not only until its head.
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) fn keep_while_sent(mut self, kept: impl Send + Sync + 'static) -> Self {
        self.1 = Some(Box::new(kept));
        self
    }

    /// The whole body in one buffer (every frame is ready at once; a streamed body gives
    /// what has arrived so far).
    pub fn into_bytes(self) -> Bytes {
        match self.0 {
            Kind::Full(bytes) => bytes.unwrap_or_default(),
            Kind::Stream(mut frames) => {
                let mut out = Vec::new();
                while let Ok(frame) = frames.try_recv() {
                    out.extend_from_slice(&frame);
                }
                Bytes::from(out)
            }
            Kind::Encoded(encoded) => {
                // Encoded straight into one buffer: no chunk of its own per piece.
                let mut out = String::with_capacity(encoded.remaining as usize);
                if let Some((bytes, at)) = &encoded.current {
                    STANDARD.encode_string(&bytes[*at..], &mut out);
                }
                for piece in encoded.pieces {
                    match piece {
                        Piece::Literal(text) => out.push_str(&text),
                        Piece::Base64(bytes) => STANDARD.encode_string(&bytes, &mut out),
                    }
                }
                Bytes::from(out)
            }
        }
    }
}

impl Default for ResponseBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl From<Bytes> for ResponseBody {
    fn from(bytes: Bytes) -> Self {
        ResponseBody(Kind::Full((!bytes.is_empty()).then_some(bytes)), None)
    }
}

impl From<String> for ResponseBody {
    fn from(text: String) -> Self {
        Bytes::from(text).into()
    }
}

impl From<&'static str> for ResponseBody {
    fn from(text: &'static str) -> Self {
        Bytes::from_static(text.as_bytes()).into()
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("size", &self.size_hint().exact())
            .finish()
    }
}

impl Encoded {
    fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some((bytes, at)) = &mut self.current {
                if *at < bytes.len() {
                    let end = (*at + CHUNK_INPUT).min(bytes.len());
                    let chunk = Bytes::from(STANDARD.encode(&bytes[*at..end]));
                    *at = end;
                    return Some(chunk);
                }
                self.current = None;
            }
            match self.pieces.next()? {
                Piece::Literal(text) if text.is_empty() => {}
                Piece::Literal(text) => return Some(Bytes::from(text)),
                Piece::Base64(bytes) => self.current = Some((bytes, 0)),
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let chunk = match &mut self.0 {
            Kind::Full(bytes) => bytes.take(),
            Kind::Stream(frames) => match frames.poll_recv(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => return Poll::Pending,
            },
            Kind::Encoded(encoded) => {
                let chunk = encoded.next_chunk();
                if let Some(chunk) = &chunk {
                    encoded.remaining = encoded.remaining.saturating_sub(chunk.len() as u64);
                }
                chunk
            }
        };
        if chunk.is_none() {
            self.1 = None;
        }
        Poll::Ready(chunk.map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Encoded(encoded) => encoded.remaining == 0,
            Kind::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Encoded(encoded) => SizeHint::with_exact(encoded.remaining),
            Kind::Stream(_) => SizeHint::default(),
        }
    }
}

/// The error of a request body read past its deadline or below its minimum rate (the
/// server's [`TimedBody`](crate::server::TimedBody)): answered `408`, where a body cut off
/// otherwise is `400`.
#[derive(Debug)]
#[cfg_attr(not(feature = "server"), allow(unreachable_pub))]
pub struct BodyTimeout(());

impl BodyTimeout {
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) fn new() -> Self {
        BodyTimeout(())
    }
}

impl fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request body was not received in time")
    }
}

impl std::error::Error for BodyTimeout {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn encoded_pieces_join_into_the_same_text_as_encoding_at_once() {
        let image: Vec<u8> = (0..CHUNK_INPUT * 2 + 7).map(|i| (i * 31) as u8).collect();
        let body = ResponseBody::encoded(vec![
            Piece::Literal("[\"".into()),
            Piece::Base64(Bytes::from(image.clone())),
            Piece::Literal("\",\"".into()),
            Piece::Base64(Bytes::new()),
            Piece::Literal("\"]".into()),
        ]);
        let announced = body.size_hint().exact();
        let text = http_body_util::BodyExt::collect(body)
            .await
            .unwrap()
            .to_bytes();
        let expected = format!("[\"{}\",\"\"]", STANDARD.encode(&image));
        assert_eq!(text, expected.as_bytes());
        assert_eq!(announced, Some(expected.len() as u64));
    }
}
