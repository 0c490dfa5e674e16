//! The models a gateway serves and what each allows.
//!
//! A request for a model outside the [`Catalog`] is answered `404 model_not_found`; an `n`
//! above the model's [`ModelSpec::max_images`] is `400 invalid_request` (`param: "n"`); a
//! quality outside the model's [`ModelSpec::qualities`] is `400 invalid_request`
//! (`param: "quality"`). Model names and qualities are open strings: a new model or value
//! is a catalog entry, not a code change.

use std::collections::HashMap;
use std::sync::Arc;

use crate::job::Quality;
use crate::GatewayError;

/// The qualities of a model given none: those of OpenAI's GPT image models.
pub const DEFAULT_QUALITIES: &[&str] = &["auto", "low", "medium", "high"];

/// What one model allows and costs. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    max_images: u32,
    price_per_image: u64,
    qualities: Arc<[String]>,
}

impl ModelSpec {
    /// A model that returns at most `max_images` per call (at least 1), costs
    /// `price_per_image` in the smallest currency unit, and takes the
    /// [`DEFAULT_QUALITIES`].
    pub fn new(max_images: u32, price_per_image: u64) -> Self {
        ModelSpec {
            max_images: max_images.max(1),
            price_per_image,
            qualities: DEFAULT_QUALITIES.iter().map(|q| (*q).to_owned()).collect(),
        }
    }

    /// The same model taking exactly `qualities` (e.g. `["standard", "hd"]`).
    pub fn with_qualities(
        mut self,
        qualities: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.qualities = qualities.into_iter().map(Into::into).collect();
        self
    }

    /// The qualities a request may ask for.
    pub fn qualities(&self) -> &[String] {
        &self.qualities
    }

    /// `400 invalid_request` (`param: "quality"`) unless the model takes `quality`.
    pub fn check_quality(&self, quality: &Quality) -> Result<(), GatewayError> {
        if self.qualities.iter().any(|q| q == quality.as_str()) {
            return Ok(());
        }
        Err(GatewayError::invalid_request(
            format!(
                "quality must be one of: {} for this model",
                self.qualities.join(", ")
            ),
            Some("quality"),
        ))
    }

    /// The largest `n` a request may ask for.
    pub fn max_images(&self) -> u32 {
        self.max_images
    }

    /// The price of one returned image.
    pub fn price_per_image(&self) -> u64 {
        self.price_per_image
    }
}

impl Default for ModelSpec {
    /// Up to 10 images per call, free.
    fn default() -> Self {
        ModelSpec::new(10, 0)
    }
}

/// Model name -> [`ModelSpec`]. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    models: Arc<HashMap<String, ModelSpec>>,
}

impl Catalog {
    /// A catalog of the given models.
    pub fn new(models: impl IntoIterator<Item = (String, ModelSpec)>) -> Self {
        Catalog {
            models: Arc::new(models.into_iter().collect()),
        }
    }

    /// The spec of `model`, or `404 model_not_found`.
    pub fn get(&self, model: &str) -> Result<ModelSpec, GatewayError> {
        self.models
            .get(model)
            .cloned()
            .ok_or_else(|| GatewayError::ModelNotFound {
                // The name is echoed back, so keep it short and printable.
                model: model.chars().filter(|c| !c.is_control()).take(64).collect(),
            })
    }

    /// The served model names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// The models as OpenAI's `GET /v1/models` answers them, sorted by name:
    /// `{"object": "list", "data": [{"id", "object": "model", "created", "owned_by"}]}`.
    pub fn to_openai_list(&self) -> serde_json::Value {
        let mut names: Vec<&str> = self.names().collect();
        names.sort_unstable();
        let data: Vec<serde_json::Value> = names
            .into_iter()
            .map(|id| {
                serde_json::json!({
                    "id": id,
                    "object": "model",
                    "created": 0,
                    "owned_by": "image-gateway",
                })
            })
            .collect();
        serde_json::json!({ "object": "list", "data": data })
    }
}
