//! What an async job's record keeps so that another process can run it again: its ticket
//! (hold and stored images) and its request's parameters, as one JSON text column.

use crate::id::RequestId;
use crate::job::{EditParams, Ticket};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use {
    crate::ledger::HoldId,
    crate::store::{FileKey, StoreError},
    serde::{Deserialize, Serialize},
};

/// An async job's request, as a process that did not receive it runs it again.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rerun {
    /// Its hold and its stored images.
    pub ticket: Ticket,
    /// The request it came from (its logs and usage records keep the id).
    pub request_id: RequestId,
    /// What the client asked for.
    pub params: EditParams,
}

/// Who runs an open async job, until when: renewed while its process lives; once it has
/// passed, any process may take the job over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The process (a random id per start).
    pub runner: String,
    /// Unix seconds.
    pub until: u64,
}

/// The column's shape. Fields are text as the request's parsers read them, so a record
/// written by one version is read by the next.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(Serialize, Deserialize)]
struct Kept {
    hold: String,
    request_id: String,
    sources: Vec<String>,
    mask: Option<String>,
    model: String,
    prompt: String,
    n: u32,
    size: String,
    quality: String,
    background: String,
    output_format: String,
    output_compression: Option<u8>,
    moderation: Option<String>,
    input_fidelity: Option<String>,
    user: Option<String>,
    partial_images: u8,
    stream: bool,
}

impl Rerun {
    /// The rerun of a job holding `ticket`, asked by `request_id` with `params`.
    pub fn new(ticket: Ticket, request_id: RequestId, params: EditParams) -> Self {
        Rerun {
            ticket,
            request_id,
            params,
        }
    }

    /// The column's text.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn to_column(&self) -> String {
        let p = &self.params;
        let kept = Kept {
            hold: self.ticket.hold.to_string(),
            request_id: self.request_id.as_str().to_owned(),
            sources: self.ticket.sources.iter().map(|k| k.to_string()).collect(),
            mask: self.ticket.mask.as_ref().map(ToString::to_string),
            model: p.model.clone(),
            prompt: p.prompt.clone(),
            n: p.n,
            size: p.size.to_string(),
            quality: p.quality.to_string(),
            background: p.background.as_str().to_owned(),
            output_format: p.output_format.as_str().to_owned(),
            output_compression: p.output_compression,
            moderation: p.moderation.clone(),
            input_fidelity: p.input_fidelity.clone(),
            user: p.user.clone(),
            partial_images: p.partial_images,
            stream: p.stream,
        };
        // A struct of strings and integers always serializes.
        serde_json::to_string(&kept).unwrap_or_default()
    }

    /// The rerun a column holds; text that does not parse is corruption.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn from_column(text: &str) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::new(format!("corrupt job record: rerun {what}"));
        let kept: Kept = serde_json::from_str(text).map_err(|_| corrupt("json"))?;
        let key = |raw: &str| FileKey::parse(raw).ok_or_else(|| corrupt("key"));
        let sources = kept
            .sources
            .iter()
            .map(|raw| key(raw))
            .collect::<Result<_, _>>()?;
        let mask = kept.mask.as_deref().map(key).transpose()?;
        let hold = HoldId::parse(&kept.hold).ok_or_else(|| corrupt("hold"))?;
        let mut params = EditParams::new(kept.model, kept.prompt);
        params.n = kept.n;
        params.size = kept.size.parse().map_err(|_| corrupt("size"))?;
        params.quality = kept.quality.parse().map_err(|_| corrupt("quality"))?;
        params.background = kept.background.parse().map_err(|_| corrupt("background"))?;
        params.output_format = kept
            .output_format
            .parse()
            .map_err(|_| corrupt("output_format"))?;
        params.output_compression = kept.output_compression;
        params.moderation = kept.moderation;
        params.input_fidelity = kept.input_fidelity;
        params.user = kept.user;
        params.partial_images = kept.partial_images;
        params.stream = kept.stream;
        Ok(Rerun {
            ticket: Ticket::new(hold, sources, mask),
            request_id: RequestId::kept(&kept.request_id),
            params,
        })
    }
}

#[cfg(all(test, any(feature = "sqlite", feature = "postgres")))]
mod tests {
    use super::*;
    use crate::auth::UserId;

    #[test]
    fn a_rerun_reads_back_as_written() {
        let owner = UserId::new("alice").unwrap();
        let key = FileKey::new(&owner, uuid::Uuid::new_v4(), "a.png");
        let mask = FileKey::new(&owner, uuid::Uuid::new_v4(), "m.png");
        let mut params = EditParams::new("gpt-image-2", "a \"quoted\" prompt\nwith lines");
        params.n = 3;
        params.size = "1024x1536".parse().unwrap();
        params.quality = "high".parse().unwrap();
        params.output_format = "webp".parse().unwrap();
        params.output_compression = Some(40);
        params.user = Some("u-1".into());
        params.partial_images = 2;
        params.stream = true;
        let rerun = Rerun::new(
            Ticket::new(HoldId::new(), vec![key.clone(), key], Some(mask)),
            RequestId::kept("req-1"),
            params,
        );
        assert_eq!(Rerun::from_column(&rerun.to_column()).unwrap(), rerun);
        assert!(Rerun::from_column("{}").is_err());
        assert!(Rerun::from_column("not json").is_err());
    }
}
