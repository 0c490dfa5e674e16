use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Client, Url};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::{Moderation, ModerationError, Verdict};
use crate::job::SourceImage;

/// The largest moderation answer read: a verdict is a few hundred bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// An OpenAI-compatible moderation endpoint: `POST {base}/v1/moderations` with
/// `{"model", "input"}`; a result with `"flagged": true` refuses the prompt, naming the
/// categories that were flagged. With [`images`](Self::images), a request's source images
/// are checked too, as `image_url` inputs of `data:` URLs (omni-moderation's multimodal
/// input), one call for all of them.
#[derive(Clone)]
pub struct OpenAiModeration {
    client: Client,
    url: Url,
    key: Option<String>,
    model: String,
    images: bool,
}

impl std::fmt::Debug for OpenAiModeration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the URL (it may hold credentials) nor the key.
        f.debug_struct("OpenAiModeration")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl OpenAiModeration {
    /// The endpoint at `base` (with or without its `/v1`), model `omni-moderation-latest`,
    /// no key, a 10 s bound per check.
    pub fn new(base: &str) -> Result<Self, ModerationError> {
        let url = crate::backend::upstream::openai_url(base, "moderations")
            .map_err(|e| ModerationError(format!("moderation URL {e}")))?;
        let client = Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ModerationError(format!("HTTP client: {e}")))?;
        Ok(OpenAiModeration {
            client,
            url,
            key: None,
            model: "omni-moderation-latest".into(),
            images: false,
        })
    }

    /// Checks source images too (default: prompts only). Each image is sent whole, base64
    /// in a `data:` URL: worth it where the moderation model reads images
    /// (`omni-moderation-*`), at the cost of sending every source once more.
    pub fn images(mut self, on: bool) -> Self {
        self.images = on;
        self
    }

    /// Posts `input` and reads the verdict, naming `what` was flagged.
    async fn ask(&self, input: serde_json::Value, what: &str) -> Result<Verdict, ModerationError> {
        let body = serde_json::json!({"model": self.model, "input": input});
        let mut request = self.client.post(self.url.clone()).json(&body);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        let failed =
            |e: reqwest::Error| ModerationError(format!("moderation: {}", e.without_url()));
        let mut response = request.send().await.map_err(failed)?;
        if !response.status().is_success() {
            return Err(ModerationError(format!(
                "moderation answered {}",
                response.status()
            )));
        }
        let mut answer = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(ModerationError("moderation answer is too large".into()));
            }
            answer.extend_from_slice(&chunk);
        }
        verdict_of(&answer, what)
    }

    /// Sent as `Authorization: Bearer`.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The moderation model asked for.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }
}

#[async_trait]
impl Moderation for OpenAiModeration {
    async fn check(&self, prompt: &str) -> Result<Verdict, ModerationError> {
        self.ask(serde_json::Value::from(prompt), "the prompt")
            .await
    }

    async fn check_images(&self, images: &[SourceImage]) -> Result<Verdict, ModerationError> {
        if !self.images || images.is_empty() {
            return Ok(Verdict::Allowed);
        }
        let input: Vec<serde_json::Value> = images
            .iter()
            .map(|image| {
                let url = format!(
                    "data:{};base64,{}",
                    image.kind.mime(),
                    STANDARD.encode(&image.bytes)
                );
                serde_json::json!({"type": "image_url", "image_url": {"url": url}})
            })
            .collect();
        self.ask(serde_json::Value::from(input), "a source image")
            .await
    }
}

/// The verdict of a moderation answer (`{"results": [{"flagged", "categories"}]}`): flagged
/// when any result is, with the flagged categories' names (at most eight, each at most 64
/// characters of `a-z 0-9 / _ -`). Anything else is an error, never a panic.
pub fn parse_verdict(answer: &[u8]) -> Result<Verdict, ModerationError> {
    verdict_of(answer, "the prompt")
}

/// [`parse_verdict`], naming `what` was flagged.
fn verdict_of(answer: &[u8], what: &str) -> Result<Verdict, ModerationError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        results: Vec<Result_>,
    }
    #[derive(serde::Deserialize)]
    struct Result_ {
        flagged: bool,
        #[serde(default)]
        categories: std::collections::BTreeMap<String, serde_json::Value>,
    }
    let answer: Answer = serde_json::from_slice(answer)
        .map_err(|_| ModerationError("moderation answer is not the expected JSON".into()))?;
    if answer.results.is_empty() {
        return Err(ModerationError("moderation answer has no result".into()));
    }
    if !answer.results.iter().any(|r| r.flagged) {
        return Ok(Verdict::Allowed);
    }
    let mut categories: Vec<&str> = answer
        .results
        .iter()
        .flat_map(|r| r.categories.iter())
        .filter(|(_, v)| v.as_bool() == Some(true))
        .map(|(name, _)| name.as_str())
        .filter(|name| {
            name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"/_-".contains(&b))
        })
        .collect();
    categories.dedup();
    categories.truncate(8);
    let reason = match categories.is_empty() {
        true => format!("{what} was flagged by moderation"),
        false => format!(
            "{what} was flagged by moderation ({})",
            categories.join(", ")
        ),
    };
    Ok(Verdict::Flagged { reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_as_verdicts_or_refused() {
        let flagged = br#"{"id":"m","model":"omni","results":[{"flagged":true,"categories":{"violence":true,"sexual":false,"self-harm/intent":true,"BAD NAME":true}}]}"#;
        assert_eq!(
            parse_verdict(flagged).unwrap(),
            Verdict::Flagged {
                reason: "the prompt was flagged by moderation (self-harm/intent, violence)".into()
            }
        );
        let clean = br#"{"results":[{"flagged":false,"categories":{"violence":false}}]}"#;
        assert_eq!(parse_verdict(clean).unwrap(), Verdict::Allowed);
        for bad in [
            &b""[..],
            b"{}",
            br#"{"results":[]}"#,
            b"[1,2]",
            br#"{"results":[{"flagged":"yes"}]}"#,
        ] {
            assert!(parse_verdict(bad).is_err());
        }
    }
}
