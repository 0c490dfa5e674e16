//! Moderation before money: a request's prompt is checked before its hold is taken (and
//! before any image it names is read), and its source images, where the [`Moderation`]
//! looks at images, once they are read and still before the hold; so a refused request
//! costs nothing and holds nothing.
//!
//! # Guarantees
//! - A flagged prompt is `400 content_policy_violation` (`param: prompt`); nothing is read,
//!   held or run. Flagged source images are the same, nothing held or run.
//! - A moderation service that fails is `503 moderation_unavailable` with `Retry-After`
//!   (fail closed), unless the gateway is set to fail open, which lets the request through
//!   and logs the failure.
//! - An upstream's own refusal is apart from this seam: the backend answers it
//!   (`BackendError::ContentPolicy`).
//!
//! Shipped: [`WordList`] (whole words, any case) and, with the `upstream` feature,
//! [`OpenAiModeration`] (an OpenAI-compatible `POST /v1/moderations`). Your own: implement
//! [`Moderation`].

mod layer;
#[cfg(feature = "upstream")]
mod openai;
mod service;

use async_trait::async_trait;

use crate::job::SourceImage;

pub use layer::ModerationLayer;
#[cfg(feature = "upstream")]
pub use openai::{parse_verdict, OpenAiModeration};
pub use service::Moderated;

/// What a [`Moderation`] said of a prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Nothing found.
    Allowed,
    /// Refused, with the reason shown to the client.
    Flagged {
        /// Why, in words (a category, a word), never the prompt itself.
        reason: String,
    },
}

/// Checks prompts, and where it can source images, before money moves.
///
/// # Contract
/// - `check` answers [`Verdict::Allowed`] or [`Verdict::Flagged`]; an `Err` means the check
///   itself failed (the gateway then refuses, or lets through when set to fail open).
/// - It is called once per request, before the hold, and must not keep the prompt.
/// - `check_images` is called once per request that has source images, after they were
///   read and before the hold, under the same rules; it must not keep the images. Its
///   default allows them: a moderation that reads text only keeps it.
#[async_trait]
pub trait Moderation: Send + Sync + 'static {
    /// The verdict on `prompt`.
    async fn check(&self, prompt: &str) -> Result<Verdict, ModerationError>;

    /// The verdict on a request's source `images` (a mask is not content and is not sent).
    async fn check_images(&self, images: &[SourceImage]) -> Result<Verdict, ModerationError> {
        let _ = images;
        Ok(Verdict::Allowed)
    }
}

/// A moderation check that could not be made.
#[derive(Debug)]
pub struct ModerationError(pub String);

impl std::fmt::Display for ModerationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ModerationError {}

/// Refuses a prompt that holds one of its words as a whole word, in any case.
#[derive(Clone, Debug, Default)]
pub struct WordList {
    words: Vec<String>,
}

impl WordList {
    /// The list of `words` (blank ones ignored).
    pub fn new(words: impl IntoIterator<Item = impl AsRef<str>>) -> Self {
        WordList {
            words: words
                .into_iter()
                .map(|w| w.as_ref().trim().to_lowercase())
                .filter(|w| !w.is_empty())
                .collect(),
        }
    }

    fn flags(&self, prompt: &str) -> Option<&str> {
        let lower = prompt.to_lowercase();
        let tokens: Vec<&str> = lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|t| !t.is_empty())
            .collect();
        self.words.iter().map(String::as_str).find(|word| {
            // A listed phrase of several words matches their run in the prompt.
            let parts: Vec<&str> = word
                .split(|c: char| !c.is_alphanumeric())
                .filter(|t| !t.is_empty())
                .collect();
            !parts.is_empty() && tokens.windows(parts.len()).any(|w| w == parts.as_slice())
        })
    }
}

#[async_trait]
impl Moderation for WordList {
    async fn check(&self, prompt: &str) -> Result<Verdict, ModerationError> {
        Ok(match self.flags(prompt) {
            Some(_) => Verdict::Flagged {
                reason: "the prompt holds a word this gateway does not accept".into(),
            },
            None => Verdict::Allowed,
        })
    }
}

#[async_trait]
impl<T: Moderation + ?Sized> Moderation for std::sync::Arc<T> {
    async fn check(&self, prompt: &str) -> Result<Verdict, ModerationError> {
        (**self).check(prompt).await
    }

    async fn check_images(&self, images: &[SourceImage]) -> Result<Verdict, ModerationError> {
        (**self).check_images(images).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_word_list_matches_whole_words_in_any_case() {
        let list = WordList::new(["gore", "Red Wedding", " "]);
        for flagged in ["GORE everywhere", "a red   wedding scene", "gore."] {
            assert!(
                matches!(list.check(flagged).await.unwrap(), Verdict::Flagged { .. }),
                "{flagged}"
            );
        }
        for allowed in ["gorey details", "a red dress at a wedding", "", "   "] {
            assert_eq!(
                list.check(allowed).await.unwrap(),
                Verdict::Allowed,
                "{allowed}"
            );
        }
    }
}
