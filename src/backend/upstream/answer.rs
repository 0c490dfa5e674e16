//! Reading an upstream's answer into images or a [`BackendError`].

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use super::{describe, UpstreamBackend, MAX_ANSWER_BYTES};
use crate::backend::BackendError;
use crate::job::{EditJob, Image, OutputFormat};
use crate::media::ImageKind;

#[derive(Deserialize)]
struct Answer {
    data: Vec<Datum>,
}

#[derive(Deserialize)]
struct Datum {
    b64_json: Option<String>,
    url: Option<String>,
}

#[derive(Deserialize, Default)]
struct ErrorAnswer {
    #[serde(default)]
    error: ErrorBody,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    code: Option<String>,
    param: Option<String>,
    message: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// Codes by which OpenAI-compatible upstreams report moderation.
const MODERATION_CODES: [&str; 3] = [
    "moderation_blocked",
    "content_policy_violation",
    "content_filter",
];

pub(super) async fn images(
    backend: &UpstreamBackend,
    job: &EditJob,
    response: reqwest::Response,
) -> Result<Vec<Image>, BackendError> {
    let status = response.status();
    let body = read_capped(response, MAX_ANSWER_BYTES).await?;
    if status.is_success() {
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| {
            BackendError::upstream(format!("upstream answered malformed JSON: {e}"))
        })?;
        let mut images = Vec::with_capacity(answer.data.len());
        let mut budget = MAX_ANSWER_BYTES;
        for datum in answer.data {
            let bytes = match (datum.b64_json, datum.url) {
                (Some(b64), _) => Bytes::from(STANDARD.decode(b64.as_bytes()).map_err(|e| {
                    BackendError::upstream(format!("upstream sent bad base64: {e}"))
                })?),
                (None, Some(url)) => fetch(backend, &url, &mut budget).await?,
                (None, None) => return Err(BackendError::upstream("upstream image without data")),
            };
            images.push(Image::new(
                bytes.clone(),
                format_of(&bytes, job.params.output_format)?,
            ));
        }
        return Ok(images);
    }
    let error: ErrorAnswer = serde_json::from_slice(&body).unwrap_or_default();
    let e = error.error;
    let code = e.code.as_deref().unwrap_or_default();
    if status == reqwest::StatusCode::BAD_REQUEST {
        let moderation = MODERATION_CODES.contains(&code)
            || e.kind
                .as_deref()
                .is_some_and(|k| MODERATION_CODES.contains(&k));
        if moderation {
            return Err(BackendError::ContentPolicy {
                message: "the request was rejected by the image model's safety system".into(),
            });
        }
        let blames_size = e.param.as_deref() == Some("size")
            || e.message
                .as_deref()
                .is_some_and(|m| m.to_ascii_lowercase().contains("size"));
        if blames_size {
            return Err(BackendError::UnsupportedSize {
                size: job.params.size,
            });
        }
    }
    Err(BackendError::upstream(format!(
        "upstream answered {status} (code {code:?})"
    )))
}

/// The encoding the bytes show; GIF or anything unknown is not an output.
fn format_of(bytes: &[u8], asked: OutputFormat) -> Result<OutputFormat, BackendError> {
    match ImageKind::sniff(bytes) {
        Some(ImageKind::Png) => Ok(OutputFormat::Png),
        Some(ImageKind::Jpeg) => Ok(OutputFormat::Jpeg),
        Some(ImageKind::Webp) => Ok(OutputFormat::Webp),
        _ => Err(BackendError::upstream(format!(
            "upstream returned bytes that are not a {asked} image"
        ))),
    }
}

/// Fetches an image the upstream answered by URL, charging its size to `budget`.
async fn fetch(
    backend: &UpstreamBackend,
    url: &str,
    budget: &mut usize,
) -> Result<Bytes, BackendError> {
    let url = reqwest::Url::parse(url)
        .map_err(|_| BackendError::upstream("upstream sent a bad image URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(BackendError::upstream("upstream image URL is not http(s)"));
    }
    let response = backend
        .client
        .get(url)
        .send()
        .await
        .map_err(|e| BackendError::upstream(describe(e)))?;
    if !response.status().is_success() {
        return Err(BackendError::upstream(format!(
            "fetching an image URL answered {}",
            response.status()
        )));
    }
    let bytes = read_capped(response, *budget).await?;
    *budget -= bytes.len();
    Ok(bytes)
}

/// Reads a body, failing once it passes `cap` bytes.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Bytes, BackendError> {
    if response
        .content_length()
        .is_some_and(|len| len > cap as u64)
    {
        return Err(BackendError::upstream("upstream answer is too large"));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BackendError::upstream(describe(e)))?
    {
        if body.len() + chunk.len() > cap {
            return Err(BackendError::upstream("upstream answer is too large"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
