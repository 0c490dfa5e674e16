//! The edit endpoint's multipart method: the OpenAI SDKs' `image` / `image[]` files plus text
//! fields, read into [`RawFields`].

use bytes::Bytes;
use futures_util::Stream;

use super::form::{RawFields, Rules};
use crate::job::{EditRequest, Reference, RequestContext};
use crate::multipart::{multipart_error, open, read_image, Parts};
use crate::{BoxError, GatewayError};

/// Reads a multipart edit body to its end and validates it.
///
/// Image parts are `image` or `image[]`, in any number and any order among the text parts,
/// and at most one `mask`. Each is checked by its magic number as soon as 12 bytes have
/// arrived, and cut off at [`MultipartLimits::image`](crate::multipart::MultipartLimits::image).
/// A field given twice is an error rather than a silent choice between the two. `context`
/// is the request's: a [`Principal`](crate::auth::Principal) alone will do.
pub async fn parse_multipart<S, E>(
    body: S,
    boundary: String,
    context: impl Into<RequestContext>,
    rules: &Rules,
) -> Result<EditRequest, GatewayError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    let limits = rules.limits;
    let mut parts = open(body, &boundary, &limits)?;
    let mut raw = RawFields {
        multipart: true,
        ..RawFields::default()
    };
    while let Some(head) = parts.next_part().await.map_err(multipart_error)? {
        let name = head.name.as_str();
        if name == "image" || name == "image[]" {
            let image = read_image(&mut parts, head, limits.image, "image").await?;
            raw.images.push(image);
            continue;
        }
        if name == "mask" {
            if raw.mask.is_some() {
                return Err(GatewayError::invalid_request(
                    "mask was sent more than once",
                    Some("mask"),
                ));
            }
            let mask = read_image(&mut parts, head, limits.image, "mask").await?;
            raw.mask = Some(Reference::Inline(mask));
            continue;
        }
        let cap = if name == "prompt" {
            limits.prompt
        } else {
            limits.text
        };
        // Unused fields are read past by the next `next_part`; the whole-body limit bounds
        // them.
        if let Some((param, slot)) = raw.slot(name) {
            if slot.is_some() {
                return Err(GatewayError::invalid_request(
                    format!("{param} was sent more than once"),
                    Some(param),
                ));
            }
            *slot = Some(read_text(&mut parts, param, cap).await?);
        }
    }
    raw.validate(context.into(), rules)
}

async fn read_text<S, E>(
    parts: &mut Parts<S>,
    param: &'static str,
    cap: usize,
) -> Result<String, GatewayError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<BoxError>,
{
    let mut text = Vec::new();
    while let Some(chunk) = parts.chunk().await.map_err(multipart_error)? {
        if text.len() + chunk.len() > cap {
            return Err(GatewayError::invalid_request(
                format!("{param} is longer than {cap} bytes"),
                Some(param),
            ));
        }
        text.extend_from_slice(&chunk);
    }
    String::from_utf8(text)
        .map_err(|_| GatewayError::invalid_request(format!("{param} is not UTF-8"), Some(param)))
}
