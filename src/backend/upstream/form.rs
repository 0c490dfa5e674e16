//! The multipart form an edit or a compose is sent as, laid out as the OpenAI SDKs send it:
//! the text fields, then one file part per image.
//!
//! Every boundary, part head and text field is written into as few buffers as there are
//! images plus one; each image's `Bytes` is shared, never copied. The body's length is known
//! before it is sent, so the request carries `Content-Length` (not chunked) and hyper hands
//! the socket a handful of buffers per request instead of several small ones per field.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use crate::job::SourceImage;

/// A form being put together; [`finish`](Self::finish) turns it into its body.
pub(super) struct Form {
    boundary: String,
    /// Text not yet cut into a chunk: boundaries, part heads, text fields.
    text: String,
    chunks: VecDeque<Bytes>,
}

impl Form {
    /// An empty form with a fresh random boundary (128 bits: no prompt or image can hold it
    /// by chance, and no client learns it before its request is sent).
    pub(super) fn new() -> Self {
        Form {
            boundary: format!("gateway-{}", uuid::Uuid::new_v4().simple()),
            text: String::with_capacity(512),
            chunks: VecDeque::new(),
        }
    }

    /// `multipart/form-data` with this form's boundary.
    pub(super) fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    /// A text field. `name` is one of the backend's own field names.
    pub(super) fn text(&mut self, name: &str, value: &str) {
        let boundary = &self.boundary;
        let _ = write!(
            self.text,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        );
    }

    /// A file part of `image`'s bytes named `file_name`. `name` and `file_name` are the
    /// backend's own (`image[]`, `image-0.png`), never a client's.
    pub(super) fn image(&mut self, name: &str, file_name: &str, image: &SourceImage) {
        let (boundary, mime) = (&self.boundary, image.kind.mime());
        let _ = write!(
            self.text,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
             filename=\"{file_name}\"\r\nContent-Type: {mime}\r\n\r\n"
        );
        let head = std::mem::take(&mut self.text);
        self.chunks.push_back(Bytes::from(head));
        self.chunks.push_back(image.bytes.clone());
        self.text.push_str("\r\n");
    }

    /// The body; `read` is told once its last chunk has been taken (or dropped with it).
    pub(super) fn finish(mut self, read: oneshot::Sender<()>) -> FormBody {
        let _ = write!(self.text, "--{}--\r\n", self.boundary);
        self.chunks.push_back(Bytes::from(self.text));
        FormBody {
            chunks: self.chunks,
            read: Some(read),
        }
    }
}

impl FormBody {
    /// A body of one chunk, `bytes`; `read` is told once it has been taken.
    pub(super) fn whole(bytes: Bytes, read: oneshot::Sender<()>) -> FormBody {
        FormBody {
            chunks: VecDeque::from([bytes]),
            read: Some(read),
        }
    }
}

/// A finished form: its chunks in order, of a length known up front.
pub(super) struct FormBody {
    /// What is left to send: at most two chunks per image and one more.
    chunks: VecDeque<Bytes>,
    read: Option<oneshot::Sender<()>>,
}

impl Body for FormBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let Some(chunk) = self.chunks.pop_front() else {
            return Poll::Ready(None);
        };
        if self.chunks.is_empty() {
            if let Some(read) = self.read.take() {
                let _ = read.send(());
            }
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.chunks.iter().map(|c| c.len() as u64).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ImageKind;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_form_is_its_exact_length_and_reports_when_read() {
        let image = SourceImage::new(Bytes::from_static(b"\x89PNG..."), ImageKind::Png);
        let mut form = Form::new();
        form.text("prompt", "make it \"blue\"\r\nplease");
        form.image("image", "image-0.png", &image);
        form.text("n", "1");
        let boundary = form.boundary.clone();
        let (read, was_read) = oneshot::channel();
        let body = form.finish(read);
        let length = body.size_hint().exact();
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(length, Some(bytes.len() as u64));
        let expected = [
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\n\
                 make it \"blue\"\r\nplease\r\n\
                 --{boundary}\r\nContent-Disposition: form-data; name=\"image\"; \
                 filename=\"image-0.png\"\r\nContent-Type: image/png\r\n\r\n"
            )
            .as_bytes(),
            &image.bytes,
            format!(
                "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"n\"\r\n\r\n1\r\n\
                 --{boundary}--\r\n"
            )
            .as_bytes(),
        ]
        .concat();
        assert_eq!(bytes, expected);
        assert!(was_read.await.is_ok(), "told once the body was taken");
    }
}
