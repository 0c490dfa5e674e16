//! The OpenAI image answer of a finished job: the body `{"created", "data", ...}` with
//! each image base64-encoded as it is sent, and OpenAI's `usage` object. Shared by the
//! synchronous answer (`request`) and the job API's results and events (`jobs`).

use bytes::Bytes;
use http::{HeaderValue, Response};

use crate::body::Piece;
use crate::job::{Background, EditOutcome, OutputFormat};
use crate::media::ImageKind;
use crate::store::FileKey;
use crate::ResponseBody;

impl EditOutcome {
    /// OpenAI's fields of a GPT image answer beside `created` and `data`, of the images
    /// really produced: `background`, `output_format`, `quality`, `size` (of the first
    /// image; all of one job share them), each left out when unknown.
    fn description(&self) -> String {
        use std::fmt::Write;
        let mut fields = String::new();
        let Some(first) = self.images.first().map(|g| &g.image) else {
            return fields;
        };
        let background = match self.background {
            _ if first.format == OutputFormat::Jpeg => Some("opaque"),
            Some(Background::Auto) | None if ImageKind::has_alpha(&first.bytes) => {
                Some("transparent")
            }
            Some(Background::Auto) => Some("opaque"),
            Some(asked) => Some(asked.as_str()),
            None => None,
        };
        // Every value written is one of the gateway's own words or a number: no escaping.
        if let Some(background) = background {
            let _ = write!(fields, ",\"background\":\"{background}\"");
        }
        let _ = write!(fields, ",\"output_format\":\"{}\"", first.format.as_str());
        if let Some(quality) = &self.quality {
            let _ = write!(fields, ",\"quality\":\"{quality}\"");
        }
        if let Some((width, height)) = ImageKind::dimensions(&first.bytes) {
            let _ = write!(fields, ",\"size\":\"{width}x{height}\"");
        }
        fields
    }

    /// The spec's response body:
    /// `{"created": .., "data": [{"b64_json": ..}], "picklyone_generation_ids": [..]}`,
    /// as the pieces a [`ResponseBody`] sends: each image is base64-encoded as it is sent,
    /// a chunk at a time. Base64 and UUID text never need JSON escaping.
    fn pieces(&self) -> Vec<Piece> {
        let mut pieces = Vec::with_capacity(2 * self.images.len() + 2);
        let mut literal = format!(
            "{{\"created\":{}{},\"data\":[",
            self.created,
            self.description()
        );
        for (i, generated) in self.images.iter().enumerate() {
            if i > 0 {
                literal.push(',');
            }
            literal.push_str("{\"b64_json\":\"");
            pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            pieces.push(Piece::Base64(generated.image.bytes.clone()));
            literal.push_str("\"}");
        }
        literal.push_str("],\"picklyone_generation_ids\":[");
        for (i, generated) in self.images.iter().enumerate() {
            if i > 0 {
                literal.push(',');
            }
            literal.push('"');
            literal.push_str(&generated.id.to_string());
            literal.push('"');
        }
        literal.push_str("],\"usage\":");
        literal.push_str(&usage(self.images.len()));
        literal.push('}');
        pieces.push(Piece::Literal(literal));
        pieces
    }

    /// The body as one buffer (the answer itself is encoded as it is sent).
    pub fn to_json(&self) -> Bytes {
        ResponseBody::encoded(self.pieces()).into_bytes()
    }

    /// The outcome as a `200 OK` JSON response.
    pub fn into_response(self) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::encoded(self.pieces()));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let keys: Vec<&str> = self.source_keys.iter().map(FileKey::as_str).collect();
        // Keys are ASCII without control characters, so they always make a header value.
        if let Ok(value) = HeaderValue::from_str(&keys.join(",")) {
            if !keys.is_empty() {
                response.headers_mut().insert("x-source-image-keys", value);
            }
        }
        response
    }
}

/// OpenAI's `usage` object for `images` images. It counts tokens; the gateway bills by
/// image, so its token counts are zero and `images` says what the answer is billed as.
pub(crate) fn usage(images: usize) -> String {
    format!(
        "{{\"input_tokens\":0,\"input_tokens_details\":{{\"image_tokens\":0,\"text_tokens\":0}},\
         \"output_tokens\":0,\"total_tokens\":0,\"images\":{images}}}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::GenerationId;
    use crate::job::{GeneratedImage, Image};

    #[test]
    fn body_is_the_spec_shape() {
        let id = GenerationId::new();
        let outcome = EditOutcome::new(
            1_776_864_985,
            vec![GeneratedImage::new(
                id,
                Image::new(Bytes::from_static(b"\x89PNG"), OutputFormat::Png),
            )],
        );
        let value: serde_json::Value = serde_json::from_slice(&outcome.to_json()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "created": 1_776_864_985u64,
                "output_format": "png",
                "data": [{"b64_json": "iVBORw=="}],
                "picklyone_generation_ids": [id.to_string()],
                "usage": {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0,
                    "text_tokens": 0}, "output_tokens": 0, "total_tokens": 0, "images": 1},
            })
        );
    }
}
