use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::BodyDataStream;
use serde::Serialize;

use crate::auth::Principal;
use crate::multipart::{boundary_of, multipart_error, open, read_image, MultipartLimits};
use crate::store::{put_all, FileKey, FileStore};
use crate::{GatewayError, RequestBody, ResponseBody};

/// The most files one upload may carry.
pub const MAX_FILES: usize = 5;

/// The default limit of one uploaded file: 10 MB (edit sources sent inline keep 25 MiB).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;

/// One stored file, as the File Upload API answers it.
#[derive(Serialize)]
struct Uploaded {
    key: String,
    filename: String,
    #[serde(rename = "mimeType")]
    mime_type: &'static str,
    size: u64,
    #[serde(rename = "isImage")]
    is_image: bool,
}

/// One file that failed its checks, listed beside the stored ones.
#[derive(Serialize)]
struct Refused {
    filename: Option<String>,
    code: &'static str,
    message: String,
}

/// Reads every `files` part (at most [`MAX_FILES`], each at most `max_file` bytes), stores
/// those that pass their checks in one all-or-nothing write, and lists the others in
/// `errors`. When none passes, the first file's error is the answer.
pub(super) async fn upload<B>(
    req: Request<B>,
    store: &dyn FileStore,
    principal: &Principal,
    limits: MultipartLimits,
    max_file: u64,
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
    let mut refused: Vec<(Refused, GatewayError)> = Vec::new();
    while let Some(head) = multipart.next_part().await.map_err(multipart_error)? {
        // Other parts are read past by the next `next_part`.
        if head.name != "files" && head.name != "files[]" {
            continue;
        }
        if images.len() + refused.len() == MAX_FILES {
            return Err(GatewayError::invalid_request(
                format!("an upload carries at most {MAX_FILES} files"),
                Some("files"),
            ));
        }
        let filename = head.filename.clone();
        match read_image(&mut multipart, head, max_file, "files").await {
            Ok(image) => images.push(image),
            // A file of the wrong type or size is refused alone; the rest of its part is
            // read past by the next `next_part`.
            Err(
                error @ (GatewayError::ImageTooLarge { .. }
                | GatewayError::ImageTypeUnsupported { .. }),
            ) => {
                let entry = Refused {
                    filename,
                    code: error.code(),
                    message: error.to_string(),
                };
                refused.push((entry, error));
            }
            Err(error) => return Err(error),
        }
    }
    if images.is_empty() {
        return Err(match refused.into_iter().next() {
            Some((_, error)) => error,
            None => GatewayError::invalid_request(
                "send one or more files in the multipart field `files`",
                Some("files"),
            ),
        });
    }

    let owner = principal.user_id();
    let files: Vec<(FileKey, Bytes)> = images
        .iter()
        .map(|image| (image.upload_key(owner), image.bytes.clone()))
        .collect();
    // All or nothing for the files that passed, checked against the quota first.
    put_all(store, owner, &files).await?;
    let uploaded: Vec<Uploaded> = images
        .iter()
        .zip(&files)
        .map(|(image, (key, _))| Uploaded {
            key: key.as_str().to_owned(),
            filename: image.name(),
            mime_type: image.kind.mime(),
            size: image.bytes.len() as u64,
            is_image: true,
        })
        .collect();
    let mut answer = serde_json::json!({ "success": true, "uploaded": uploaded });
    if !refused.is_empty() {
        let errors: Vec<Refused> = refused.into_iter().map(|(entry, _)| entry).collect();
        answer["errors"] = serde_json::to_value(errors)
            .map_err(|e| GatewayError::internal(format!("an upload's answer: {e}")))?;
    }
    Ok(crate::body::json_ok(&answer))
}
