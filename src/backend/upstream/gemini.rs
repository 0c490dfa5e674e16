//! Google's Gemini image models through `generateContent`, as the Gemini API `v1beta`
//! documents it (ai.google.dev/api, the `google-genai` SDK's types): the prompt and the
//! source images go as the parts of one user turn, the images come back as `inlineData`
//! parts, and a refusal is a `promptFeedback.blockReason` or a safety `finishReason`.
//!
//! # Each OpenAI field's fate
//! | field | on Gemini |
//! |---|---|
//! | `prompt` | sent: the first part's `text` |
//! | `image`, `image[]` | sent: one `inline_data` part each, in order |
//! | `model` | mapped: the path, `models/{model}:generateContent` |
//! | `n` | mapped: `n` calls at once (one image each); fewer images are charged as they came |
//! | `size` | mapped: `imageConfig.aspectRatio` (the size's reduced ratio, one of [`ASPECT_RATIOS`]) and `imageSize` `2K`/`4K` when the longer side passes 1024/2048; `auto` sends neither; any other ratio is refused |
//! | `response_format` | mapped: images always come back as inline data, answered as the client asked |
//! | `stream` | mapped: the gateway's stream, with the final images only |
//! | `mask` | refused: Gemini edits by the prompt alone |
//! | `quality`, `background`, `moderation` | refused unless `auto` |
//! | `output_format` | refused unless `png`; the image is answered as Gemini encoded it |
//! | `output_compression`, `input_fidelity`, `user` | refused when set |
//! | `partial_images` | refused when more than 0 |
//!
//! A field in the deployment's `drop_fields` is not refused: its operator chose to render
//! without it.

// `parse` is `pub` for the fuzz targets, which see the module only under `--cfg fuzzing`.
#![cfg_attr(not(fuzzing), allow(unreachable_pub))]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::backend::{BackendError, Failure};
use crate::job::{Background, EditJob, OutputFormat, Size, SourceImage};

/// The aspect ratios Gemini's image models take (`imageConfig.aspectRatio`).
pub(super) const ASPECT_RATIOS: [&str; 10] = [
    "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9",
];

/// The longest side Gemini renders (`imageSize` `4K`).
const MAX_SIDE: u32 = 4096;

/// The finish and block reasons that are the model's safety system refusing.
const REFUSALS: [&str; 8] = [
    "SAFETY",
    "PROHIBITED_CONTENT",
    "BLOCKLIST",
    "SPII",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "IMAGE_RECITATION",
    "RECITATION",
];

/// The first value of `job` Gemini cannot take, unless its field is in `dropped`.
pub(super) fn refusal(job: &EditJob, dropped: &[&'static str]) -> Option<BackendError> {
    let p = &job.params;
    // Each field Gemini has no place for: whether the request set it, and why it is refused.
    let fields: [(&'static str, bool, &str); 9] = [
        (
            "mask",
            job.mask.is_some(),
            "edits by the prompt alone and takes no mask",
        ),
        (
            "quality",
            p.quality.as_str() != "auto",
            "takes no quality; send auto",
        ),
        (
            "background",
            p.background != Background::Auto,
            "takes no background; send auto",
        ),
        (
            "output_format",
            p.output_format != OutputFormat::Png,
            "answers PNG; send png",
        ),
        (
            "output_compression",
            p.output_compression.is_some(),
            "takes no output_compression",
        ),
        (
            "moderation",
            p.moderation.as_deref().is_some_and(|m| m != "auto"),
            "takes no moderation level; send auto",
        ),
        (
            "input_fidelity",
            p.input_fidelity.is_some(),
            "takes no input_fidelity",
        ),
        ("user", p.user.is_some(), "takes no user"),
        (
            "partial_images",
            p.partial_images > 0 && p.stream,
            "sends no partial images; stream with partial_images 0",
        ),
    ];
    let refused = fields
        .into_iter()
        .find(|(param, set, _)| *set && !dropped.contains(param));
    if let Some((param, _, what)) = refused {
        return Some(BackendError::Unsupported {
            param,
            message: format!("this model's upstream (Gemini) {what}"),
        });
    }
    if dropped.contains(&"size") {
        return None;
    }
    image_config(p.size).err()
}

/// `imageConfig` for `size`: its reduced ratio, and its tier when past 1K.
fn image_config(size: Size) -> Result<Option<ImageConfig>, BackendError> {
    let Size::Exact { width, height } = size else {
        return Ok(None);
    };
    let divisor = gcd(width, height);
    let ratio = format!("{}:{}", width / divisor, height / divisor);
    let unsupported = || {
        BackendError::Unsupported {
        param: "size",
        message: format!(
            "this model's upstream (Gemini) makes the aspect ratios {} up to {MAX_SIDE} pixels, not {size}",
            ASPECT_RATIOS.join(", ")
        ),
    }
    };
    let Some(ratio) = ASPECT_RATIOS.iter().find(|r| **r == ratio) else {
        return Err(unsupported());
    };
    let tier = match width.max(height) {
        0..=1024 => None,
        1025..=2048 => Some("2K"),
        2049..=MAX_SIDE => Some("4K"),
        _ => return Err(unsupported()),
    };
    Ok(Some(ImageConfig {
        aspect_ratio: ratio,
        image_size: tier,
    }))
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

#[derive(Serialize)]
struct Request<'a> {
    contents: [Content<'a>; 1],
    #[serde(rename = "generationConfig")]
    generation_config: GenerationConfig,
}

#[derive(Serialize)]
struct Content<'a> {
    role: &'static str,
    parts: Vec<Part<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Part<'a> {
    Text { text: &'a str },
    Image { inline_data: InlineData },
}

#[derive(Serialize)]
struct InlineData {
    mime_type: &'static str,
    data: String,
}

#[derive(Serialize)]
struct GenerationConfig {
    #[serde(rename = "responseModalities")]
    response_modalities: [&'static str; 1],
    #[serde(rename = "imageConfig", skip_serializing_if = "Option::is_none")]
    image_config: Option<ImageConfig>,
}

#[derive(Serialize)]
struct ImageConfig {
    #[serde(rename = "aspectRatio")]
    aspect_ratio: &'static str,
    #[serde(rename = "imageSize", skip_serializing_if = "Option::is_none")]
    image_size: Option<&'static str>,
}

/// The `generateContent` body of `job` with `images`, made once and shared by the `n`
/// calls. Call [`refusal`] first: a size it refuses is sent without `imageConfig`.
pub(super) fn body(job: &EditJob, images: &[SourceImage], dropped: &[&'static str]) -> Bytes {
    let mut parts = Vec::with_capacity(images.len() + 1);
    parts.push(Part::Text {
        text: &job.params.prompt,
    });
    parts.extend(images.iter().map(|image| Part::Image {
        inline_data: InlineData {
            mime_type: image.kind.mime(),
            data: STANDARD.encode(&image.bytes),
        },
    }));
    let image_config = if dropped.contains(&"size") {
        None
    } else {
        image_config(job.params.size).ok().flatten()
    };
    let request = Request {
        contents: [Content {
            role: "user",
            parts,
        }],
        generation_config: GenerationConfig {
            response_modalities: ["IMAGE"],
            image_config,
        },
    };
    // Serialising strings and numbers into a Vec cannot fail.
    Bytes::from(serde_json::to_vec(&request).unwrap_or_default())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Answer {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(alias = "prompt_feedback")]
    prompt_feedback: Option<PromptFeedback>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(alias = "block_reason")]
    block_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Option<CandidateContent>,
    #[serde(alias = "finish_reason")]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct CandidateContent {
    #[serde(default)]
    parts: Vec<AnswerPart>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerPart {
    #[serde(alias = "inline_data")]
    inline_data: Option<AnswerData>,
    #[serde(default)]
    thought: bool,
}

#[derive(Deserialize)]
struct AnswerData {
    data: String,
}

#[derive(Deserialize, Default)]
struct ErrorAnswer {
    #[serde(default)]
    error: ErrorBody,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    status: Option<String>,
    message: Option<String>,
}

/// The images of one `generateContent` answer of `status` and `body`: the `inlineData`
/// parts that are not thoughts. A blocked prompt or a safety finish reason is
/// [`BackendError::ContentPolicy`]; an answer without an image for any other reason is a
/// malformed answer (nothing came, nothing is charged).
pub fn parse(status: u16, body: &[u8]) -> Result<Vec<Bytes>, BackendError> {
    if !(200..300).contains(&status) {
        let error: ErrorAnswer = serde_json::from_slice(body).unwrap_or_default();
        return Err(error_of(status, error.error));
    }
    let answer: Answer = serde_json::from_slice(body).map_err(|e| {
        BackendError::failed(
            Failure::Malformed,
            format!("upstream answered malformed JSON: {e}"),
        )
    })?;
    let blocked = answer
        .prompt_feedback
        .as_ref()
        .and_then(|f| f.block_reason.as_deref());
    if blocked.is_some() {
        return Err(refused());
    }
    let mut images = Vec::new();
    let mut reasons = Vec::new();
    for candidate in answer.candidates {
        reasons.extend(candidate.finish_reason);
        let parts = candidate.content.map(|c| c.parts).unwrap_or_default();
        for part in parts.into_iter().filter(|p| !p.thought) {
            let Some(data) = part.inline_data else {
                continue;
            };
            let bytes = STANDARD.decode(data.data.as_bytes()).map_err(|e| {
                BackendError::failed(Failure::Malformed, format!("upstream sent bad base64: {e}"))
            })?;
            images.push(Bytes::from(bytes));
        }
    }
    if images.is_empty() {
        if reasons.iter().any(|r| REFUSALS.contains(&r.as_str())) {
            return Err(refused());
        }
        return Err(BackendError::failed(
            Failure::Malformed,
            format!("upstream answered no image (finish reasons {reasons:?})"),
        ));
    }
    Ok(images)
}

fn refused() -> BackendError {
    BackendError::ContentPolicy {
        message: "the request was rejected by the image model's safety system".into(),
    }
}

/// A Gemini error answer (`{"error": {"code", "message", "status"}}`) as a
/// [`BackendError`]: statuses that say the work was not taken are `Busy`, the rest the
/// upstream's. Its message stays in the operator's log.
fn error_of(status: u16, e: ErrorBody) -> BackendError {
    let busy = matches!(status, 429 | 500 | 502 | 503 | 504);
    let text = e.status.unwrap_or_default();
    let message = e.message.unwrap_or_default();
    BackendError::failed(
        if busy { Failure::Busy } else { Failure::Status },
        format!("upstream answered {status} ({text}: {message})"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Principal, UserId};
    use crate::job::EditParams;
    use crate::media::ImageKind;

    fn job(size: &str) -> EditJob {
        let mut params = EditParams::new("m", "a fox");
        params.size = size.parse().unwrap();
        let principal = Principal::new(UserId::new("alice").unwrap());
        EditJob::new(principal, Vec::new(), params)
    }

    #[test]
    fn sizes_map_to_a_ratio_and_a_tier_or_are_refused() {
        for (size, config) in [
            ("auto", None),
            ("1024x1024", Some(("1:1", None))),
            ("1536x1024", Some(("3:2", Some("2K")))),
            ("1024x1536", Some(("2:3", Some("2K")))),
            ("3840x2160", Some(("16:9", Some("4K")))),
            ("512x640", Some(("4:5", None))),
        ] {
            let got = image_config(size.parse().unwrap())
                .unwrap()
                .map(|c| (c.aspect_ratio, c.image_size));
            assert_eq!(got, config, "{size}");
        }
        for size in ["1000x333", "1792x1024", "8192x8192"] {
            let refused = refusal(&job(size), &[]).expect(size);
            assert!(
                matches!(refused, BackendError::Unsupported { param: "size", .. }),
                "{size}"
            );
        }
        assert!(refusal(&job("1000x333"), &["size"]).is_none());
    }

    #[test]
    fn the_body_is_the_prompt_then_each_image_as_inline_data() {
        let image = SourceImage::new(Bytes::from_static(b"\x89PNG"), ImageKind::Png);
        let body = body(&job("1536x1024"), &[image], &[]);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "contents": [{"role": "user", "parts": [
                    {"text": "a fox"},
                    {"inline_data": {"mime_type": "image/png", "data": "iVBORw=="}},
                ]}],
                "generationConfig": {
                    "responseModalities": ["IMAGE"],
                    "imageConfig": {"aspectRatio": "3:2", "imageSize": "2K"},
                },
            })
        );
    }

    #[test]
    fn answers_are_images_refusals_or_failures() {
        let ok = br#"{"candidates":[{"content":{"role":"model","parts":[
            {"text":"here"},{"inlineData":{"mimeType":"image/png","data":"iVBORw=="}},
            {"thought":true,"inlineData":{"mimeType":"image/png","data":"AAAA"}}]},
            "finishReason":"STOP"}]}"#;
        assert_eq!(
            parse(200, ok).unwrap(),
            vec![Bytes::from_static(b"\x89PNG")]
        );
        let snake = br#"{"candidates":[{"content":{"parts":[{"inline_data":{"mime_type":"image/png","data":"iVBORw=="}}]}}]}"#;
        assert_eq!(parse(200, snake).unwrap().len(), 1);
        for refusal in [
            &br#"{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"}}"#[..],
            br#"{"candidates":[{"finishReason":"IMAGE_SAFETY"}]}"#,
        ] {
            assert!(matches!(
                parse(200, refusal),
                Err(BackendError::ContentPolicy { .. })
            ));
        }
        let kind = |status, body: &[u8]| parse(status, body).unwrap_err().kind();
        assert_eq!(
            kind(
                200,
                br#"{"candidates":[{"content":{"parts":[{"text":"no"}]},"finishReason":"STOP"}]}"#
            ),
            "upstream_malformed"
        );
        assert_eq!(kind(200, b"not json"), "upstream_malformed");
        assert_eq!(
            kind(
                429,
                br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED"}}"#
            ),
            "upstream_busy"
        );
        assert_eq!(
            kind(
                400,
                br#"{"error":{"code":400,"status":"INVALID_ARGUMENT"}}"#
            ),
            "upstream_status"
        );
    }
}
