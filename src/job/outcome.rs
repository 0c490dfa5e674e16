//! What a finished job made: its images, each with its generation id. How it is answered
//! (OpenAI's JSON, encoded as it is sent) is `crate::answer`'s.

use super::{Background, Image};
use crate::id::GenerationId;
use crate::store::FileKey;

/// The result of one successful edit.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EditOutcome {
    /// Unix seconds at which the edit finished.
    pub created: u64,
    /// The images, each with the id a later edit can chain from.
    pub images: Vec<GeneratedImage>,
    /// The keys the edit's sources are stored under, sent as `x-source-image-keys`.
    pub source_keys: Vec<FileKey>,
    /// The quality the job was made at, when known (the answer's `quality`).
    pub quality: Option<String>,
    /// The background the job asked for, when known; the answer's `background` is what the
    /// first image really has where the request left it to the backend.
    pub background: Option<Background>,
}

/// One produced image and its generation id.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GeneratedImage {
    /// The id listed in `picklyone_generation_ids`.
    pub id: GenerationId,
    /// The encoded image.
    pub image: Image,
}

impl GeneratedImage {
    /// Pairs an image with its id.
    pub fn new(id: GenerationId, image: Image) -> Self {
        GeneratedImage { id, image }
    }
}

impl EditOutcome {
    /// An outcome created at `created` (Unix seconds).
    pub fn new(created: u64, images: Vec<GeneratedImage>) -> Self {
        EditOutcome {
            created,
            images,
            source_keys: Vec::new(),
            quality: None,
            background: None,
        }
    }

    /// The same outcome of a job made at `quality` with `background` asked.
    pub fn described(mut self, quality: &str, background: Background) -> Self {
        self.quality = Some(quality.to_owned());
        self.background = Some(background);
        self
    }
}
