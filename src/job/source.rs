//! What a job starts from: the operation asked for and the references to its images.

use bytes::Bytes;

use crate::auth::UserId;
use crate::id::GenerationId;
use crate::media::ImageKind;
use crate::store::FileKey;

/// Which endpoint a job came from: it decides how many sources it takes and how its stream
/// events are named.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `POST /v1/images/edits`: one source or more (up to 16), an optional mask.
    Edit,
    /// `POST /v1/images/generations`: no source, the prompt alone.
    Generate,
    /// `POST /v1/images/compose`: one to three references combined.
    Compose,
}

impl Operation {
    /// The word logs and fingerprints use.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Edit => "edit",
            Operation::Generate => "generate",
            Operation::Compose => "compose",
        }
    }

    /// The operation [`as_str`](Self::as_str) names.
    pub fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "edit" => Operation::Edit,
            "generate" => Operation::Generate,
            "compose" => Operation::Compose,
            _ => return None,
        })
    }

    /// The prefix of its stream events' `type`: OpenAI names generation events
    /// `image_generation.*` and edit events `image_edit.*`; a compose answers like an edit.
    pub fn event_prefix(self) -> &'static str {
        match self {
            Operation::Generate => "image_generation",
            Operation::Edit | Operation::Compose => "image_edit",
        }
    }

    /// The most source references a request of this operation may carry.
    pub fn max_references(self) -> usize {
        match self {
            Operation::Edit => 16,
            Operation::Generate => 0,
            Operation::Compose => 3,
        }
    }
}

/// One image a request points at, as validated by normalization; source resolution fetches
/// it.
#[derive(Clone, Debug)]
pub enum Reference {
    /// A file the caller uploaded (`image_key`, `image_keys[]`, OpenAI's `file_id`).
    Key(FileKey),
    /// An image a previous call produced (`generation_id`, `generation_ids[]`).
    Generation(GenerationId),
    /// Bytes sent in the request itself (a multipart file, a `data:` URI). Stored as an
    /// upload of the caller once the job's hold is taken, so a refused job stores nothing.
    Inline(SourceImage),
    /// An `https://` URL, fetched under the SSRF rules of the fetcher (feature `fetch`).
    Url(super::RemoteUrl),
}

impl Reference {
    /// Hashes what identifies the reference into `hash` (for request fingerprints).
    pub(crate) fn fingerprint(&self, hash: &mut impl sha2::Digest) {
        match self {
            Reference::Key(key) => hash.update(format!("key:{key}")),
            Reference::Generation(id) => hash.update(format!("generation:{id}")),
            Reference::Inline(image) => {
                hash.update(b"inline:");
                hash.update(<sha2::Sha256 as sha2::Digest>::digest(&image.bytes));
            }
            Reference::Url(url) => hash.update(format!("url:{}", url.as_str())),
        }
    }
}

/// Image bytes whose type was checked by their magic number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceImage {
    /// The whole file.
    pub bytes: Bytes,
    /// The type the bytes show.
    pub kind: ImageKind,
    /// The file name the client gave, if any (informational only).
    pub filename: Option<String>,
}

impl SourceImage {
    /// Bytes whose type `kind` was sniffed, without a file name.
    pub fn new(bytes: Bytes, kind: ImageKind) -> Self {
        SourceImage {
            bytes,
            kind,
            filename: None,
        }
    }

    /// A fresh key for storing this image as an upload of `owner`:
    /// `files/{owner}/{uuid}_{sanitised file name}` (`upload.{ext}` when it has no name).
    pub fn upload_key(&self, owner: &UserId) -> FileKey {
        FileKey::new(owner, uuid::Uuid::new_v4(), &self.name())
    }

    /// The file name the client gave, or `upload.{ext}`.
    pub fn name(&self) -> String {
        self.filename
            .clone()
            .unwrap_or_else(|| format!("upload.{}", self.kind.extension()))
    }
}
