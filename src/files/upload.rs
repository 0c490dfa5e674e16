use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::BodyDataStream;
use serde::Serialize;

use crate::auth::Principal;
use crate::multipart::{boundary_of, multipart_error, open, read_image, MultipartLimits};
use crate::store::{put_all, FileKey, FileStore};
use crate::{GatewayError, RequestBody, ResponseBody};

#[derive(Serialize)]
struct Uploaded {
    key: String,
    size: u64,
    content_type: &'static str,
    filename: String,
}

/// Reads every `files` part, then stores them all or none.
pub(super) async fn upload<B>(
    req: Request<B>,
    store: &dyn FileStore,
    principal: &Principal,
    limits: MultipartLimits,
) -> Result<Response<ResponseBody>, GatewayError>
where
    B: RequestBody,
{
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let boundary = boundary_of(content_type)?;
    let mut multipart = open(BodyDataStream::new(req.into_body()), &boundary, &limits)?;

    // The whole batch is read (and checked) before anything is written.
    let mut images = Vec::new();
    while let Some(head) = multipart.next_part().await.map_err(multipart_error)? {
        // Other parts are read past by the next `next_part`.
        if head.name == "files" || head.name == "files[]" {
            images.push(read_image(&mut multipart, head, limits.image, "files").await?);
        }
    }
    if images.is_empty() {
        return Err(GatewayError::invalid_request(
            "send one or more files in the multipart field `files`",
            Some("files"),
        ));
    }

    let owner = principal.user_id();
    let files: Vec<(FileKey, Bytes)> = images
        .iter()
        .map(|image| (image.upload_key(owner), image.bytes.clone()))
        .collect();
    // All or nothing, checked against the quota before anything is written.
    put_all(store, owner, &files).await?;
    let answer: Vec<Uploaded> = images
        .iter()
        .zip(&files)
        .map(|(image, (key, _))| Uploaded {
            key: key.as_str().to_owned(),
            size: image.bytes.len() as u64,
            content_type: image.kind.mime(),
            filename: image.name(),
        })
        .collect();
    let body = serde_json::to_value(&answer).map_err(|_| GatewayError::Internal)?;
    Ok(crate::body::json_ok(
        &serde_json::json!({ "uploaded": body }),
    ))
}
