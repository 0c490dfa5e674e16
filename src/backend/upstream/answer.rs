//! Reading an upstream's answer into images or a [`BackendError`].

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;

use super::sse::SseReader;
use super::{transport, Reached, UpstreamBackend, MAX_ANSWER_BYTES};
use crate::backend::{BackendError, Failure};
use crate::fetch::capped::{self, CappedError};
use crate::job::{EditJob, Image, OutputFormat};

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
const MODERATION_CODES: [&str; 4] = [
    "moderation_blocked",
    "content_policy_violation",
    "content_filter",
    // Azure OpenAI's content filter.
    "contentFilter",
];

pub(super) async fn images(
    backend: &UpstreamBackend,
    job: &EditJob,
    response: reqwest::Response,
) -> Result<Vec<Image>, BackendError> {
    let status = response.status();
    let retry_after = retry_after(&response);
    let body = read_capped(response, MAX_ANSWER_BYTES).await?;
    if status.is_success() {
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| {
            BackendError::failed(
                Failure::Malformed,
                format!("upstream answered malformed JSON: {e}"),
            )
        })?;
        let mut images = Vec::with_capacity(answer.data.len());
        let mut budget = MAX_ANSWER_BYTES;
        for datum in answer.data {
            let bytes = match (datum.b64_json, datum.url) {
                (Some(b64), _) => Bytes::from(STANDARD.decode(b64.as_bytes()).map_err(|e| {
                    BackendError::failed(
                        Failure::Malformed,
                        format!("upstream sent bad base64: {e}"),
                    )
                })?),
                (None, Some(url)) => fetch(backend, &url, &mut budget).await?,
                (None, None) => {
                    return Err(BackendError::failed(
                        Failure::Malformed,
                        "upstream image without data",
                    ))
                }
            };
            images.push(Image::new(
                bytes.clone(),
                format_of(&bytes, job.params.output_format)?,
            ));
        }
        return Ok(images);
    }
    let error: ErrorAnswer = serde_json::from_slice(&body).unwrap_or_default();
    Err(refusal(job, status, error.error).retry_after(retry_after))
}

/// The longest `Retry-After` taken from an upstream: past it the deployment's own rest
/// decides, so a hostile or broken upstream cannot bench itself for days.
const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// An answer's `Retry-After` in seconds (a date is not read), at most [`MAX_RETRY_AFTER`].
pub(super) fn retry_after(response: &reqwest::Response) -> Option<std::time::Duration> {
    let seconds: u64 = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(std::time::Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// The images of one Gemini `generateContent` answer, reading at most `cap` bytes.
pub(super) async fn gemini(
    job: &EditJob,
    response: reqwest::Response,
    cap: usize,
) -> Result<Vec<Image>, BackendError> {
    let status = response.status().as_u16();
    let retry_after = retry_after(&response);
    let body = read_capped(response, cap).await?;
    super::gemini::parse(status, &body)
        .map_err(|e| e.retry_after(retry_after))?
        .into_iter()
        .map(|bytes| {
            let format = format_of(&bytes, job.params.output_format)?;
            Ok(Image::new(bytes, format))
        })
        .collect()
}

/// What an upstream's error says, as a [`BackendError`]: moderation and size refusals
/// (a 400, or an error event mid-stream) are the client's; anything else is the upstream's.
fn refusal(job: &EditJob, status: reqwest::StatusCode, e: ErrorBody) -> BackendError {
    let code = e.code.as_deref().unwrap_or_default();
    if status == reqwest::StatusCode::BAD_REQUEST {
        let moderation = MODERATION_CODES.contains(&code)
            || e.kind
                .as_deref()
                .is_some_and(|k| MODERATION_CODES.contains(&k));
        if moderation {
            return BackendError::ContentPolicy {
                message: "the request was rejected by the image model's safety system".into(),
            };
        }
        let blames_size = e.param.as_deref() == Some("size")
            || e.message
                .as_deref()
                .is_some_and(|m| m.to_ascii_lowercase().contains("size"));
        if blames_size {
            return BackendError::UnsupportedSize {
                size: job.params.size,
            };
        }
    }
    // These say the request was not taken: nothing rendered, nothing billed.
    let busy = matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504);
    BackendError::failed(
        if busy { Failure::Busy } else { Failure::Status },
        format!("upstream answered {status} (code {code:?})"),
    )
}

/// One event of an upstream's image stream, as OpenAI sends them.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// `*.partial_image`: a preview, `partial_image_index` counting from 0.
    Partial {
        /// The preview's index.
        index: u8,
        /// Its bytes.
        bytes: Bytes,
    },
    /// `*.completed`: one final image.
    Completed(Bytes),
    /// `{"error": {...}}`: the stream failed.
    Failed {
        /// The error's `code`.
        code: Option<String>,
        /// The error's `param`.
        param: Option<String>,
        /// The error's `type`.
        kind: Option<String>,
        /// The error's `message`.
        message: Option<String>,
    },
    /// Anything else (a keep-alive, an event type this gateway does not use).
    Other,
}

#[derive(Deserialize)]
struct StreamDatum {
    #[serde(rename = "type")]
    kind: Option<String>,
    b64_json: Option<String>,
    partial_image_index: Option<u64>,
    error: Option<ErrorBody>,
}

impl StreamEvent {
    /// Reads one event's `data`.
    pub fn parse(data: &str) -> Result<StreamEvent, BackendError> {
        let Ok(datum) = serde_json::from_str::<StreamDatum>(data) else {
            // `[DONE]` and other non-JSON data carry nothing the gateway needs.
            return Ok(StreamEvent::Other);
        };
        if let Some(e) = datum.error {
            return Ok(StreamEvent::Failed {
                code: e.code,
                param: e.param,
                kind: e.kind,
                message: e.message,
            });
        }
        let kind = datum.kind.unwrap_or_default();
        let decode = |b64: Option<String>| -> Result<Bytes, BackendError> {
            let b64 = b64.ok_or_else(|| {
                BackendError::failed(Failure::Malformed, "a stream image without data")
            })?;
            STANDARD
                .decode(b64.as_bytes())
                .map(Bytes::from)
                .map_err(|e| {
                    BackendError::failed(
                        Failure::Malformed,
                        format!("upstream sent bad base64: {e}"),
                    )
                })
        };
        if kind.ends_with(".partial_image") {
            let index = datum
                .partial_image_index
                .unwrap_or(0)
                .min(u64::from(u8::MAX)) as u8;
            return Ok(StreamEvent::Partial {
                index,
                bytes: decode(datum.b64_json)?,
            });
        }
        if kind.ends_with(".completed") {
            return Ok(StreamEvent::Completed(decode(datum.b64_json)?));
        }
        Ok(StreamEvent::Other)
    }
}

/// Relays an upstream's event stream: partials go to the job's progress as they come,
/// completed images are returned at the end. At most [`MAX_ANSWER_BYTES`] are read in all.
pub(super) async fn streamed(
    job: &EditJob,
    mut response: reqwest::Response,
) -> Result<Vec<Image>, BackendError> {
    let mut reader = SseReader::new(MAX_ANSWER_BYTES);
    let mut images = Vec::new();
    let mut read = 0usize;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport(e, Reached::Answered))?
    {
        read += chunk.len();
        if read > MAX_ANSWER_BYTES {
            return Err(BackendError::failed(
                Failure::TooLarge,
                "upstream stream is too large",
            ));
        }
        let events = reader.push(&chunk).map_err(|_| {
            BackendError::failed(Failure::TooLarge, "upstream stream event is too large")
        })?;
        for event in events {
            match StreamEvent::parse(&event.data)? {
                StreamEvent::Partial { index, bytes } => {
                    let format = format_of(&bytes, job.params.output_format)?;
                    job.progress.partial(index, Image::new(bytes, format));
                }
                StreamEvent::Completed(bytes) => {
                    let format = format_of(&bytes, job.params.output_format)?;
                    images.push(Image::new(bytes, format));
                }
                StreamEvent::Failed {
                    code,
                    param,
                    kind,
                    message,
                } => {
                    let body = ErrorBody {
                        code,
                        param,
                        message,
                        kind,
                    };
                    // Mid-stream errors carry no status; a refusal is judged as a 400 would be.
                    return Err(refusal(job, reqwest::StatusCode::BAD_REQUEST, body));
                }
                StreamEvent::Other => {}
            }
        }
    }
    Ok(images)
}

/// The encoding the bytes show; GIF or anything unknown is not an output.
fn format_of(bytes: &[u8], asked: OutputFormat) -> Result<OutputFormat, BackendError> {
    OutputFormat::of(bytes).ok_or_else(|| {
        BackendError::failed(
            Failure::Malformed,
            format!("upstream returned bytes that are not a {asked} image"),
        )
    })
}

/// Fetches an image the upstream answered by URL, charging its size to `budget`.
async fn fetch(
    backend: &UpstreamBackend,
    url: &str,
    budget: &mut usize,
) -> Result<Bytes, BackendError> {
    let url = reqwest::Url::parse(url)
        .map_err(|_| BackendError::failed(Failure::Malformed, "upstream sent a bad image URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(BackendError::failed(
            Failure::Malformed,
            "upstream image URL is not http(s)",
        ));
    }
    let response = backend
        .client
        .get(url)
        .send()
        .await
        .map_err(|e| transport(e, Reached::Answered))?;
    if !response.status().is_success() {
        return Err(BackendError::failed(
            Failure::Status,
            format!("fetching an image URL answered {}", response.status()),
        ));
    }
    let bytes = read_capped(response, *budget).await?;
    *budget -= bytes.len();
    Ok(bytes)
}

/// Reads a body, failing once it passes `cap` bytes.
async fn read_capped(response: reqwest::Response, cap: usize) -> Result<Bytes, BackendError> {
    capped::read_capped(response, cap as u64)
        .await
        .map_err(|error| match error {
            CappedError::TooLarge => {
                BackendError::failed(Failure::TooLarge, "upstream answer is too large")
            }
            CappedError::Transport(e) => transport(e, Reached::Answered),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(retry_after: &str) -> reqwest::Response {
        let response = http::Response::builder()
            .status(429)
            .header("retry-after", retry_after)
            .body(Vec::<u8>::new())
            .unwrap();
        reqwest::Response::from(response)
    }

    #[test]
    fn retry_after_is_whole_seconds_and_at_most_an_hour() {
        use std::time::Duration;
        assert_eq!(
            retry_after(&answered("120")),
            Some(Duration::from_secs(120))
        );
        assert_eq!(retry_after(&answered(" 7 ")), Some(Duration::from_secs(7)));
        // At the cap and past it: an upstream cannot bench itself for longer.
        assert_eq!(retry_after(&answered("3600")), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after(&answered("99999999")), Some(MAX_RETRY_AFTER));
        for unread in ["Wed, 21 Oct 2026 07:28:00 GMT", "-5", "1.5", ""] {
            assert_eq!(retry_after(&answered(unread)), None, "{unread:?}");
        }
    }

    /// Each of a Gemini job's `n` calls may read its share of the answer bound: an answer
    /// of exactly the share is read, one byte more is `TooLarge` (and never buffered whole).
    #[tokio::test]
    async fn a_gemini_answer_past_its_share_of_the_bound_is_too_large() {
        use crate::auth::{Principal, UserId};
        use crate::job::EditParams;
        let job = EditJob::new(
            Principal::new(UserId::new("alice").unwrap()),
            Vec::new(),
            EditParams::new("gemini-image", "a cat"),
        );
        let body = r#"{"candidates":[{"content":{"parts":[{"inlineData":{"mimeType":"image/png","data":"iVBORw0KGgo="}}]}}]}"#;
        let answer = || {
            let response = http::Response::builder()
                .status(200)
                .body(body.as_bytes().to_vec())
                .unwrap();
            reqwest::Response::from(response)
        };
        let read = gemini(&job, answer(), body.len()).await.unwrap();
        assert_eq!(read.len(), 1);
        let refused = gemini(&job, answer(), body.len() - 1).await.unwrap_err();
        assert_eq!(refused.kind(), "upstream_too_large");
    }
}
