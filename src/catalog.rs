//! The models a gateway serves and what each allows.
//!
//! A request for a model outside the [`Catalog`] is answered `404 model_not_found`; an `n`
//! above the model's [`ModelSpec::max_images`] is `400 invalid_request` (`param: "n"`).

use std::collections::HashMap;
use std::sync::Arc;

use crate::GatewayError;

/// What one model allows and costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    max_images: u32,
    price_per_image: u64,
}

impl ModelSpec {
    /// A model that returns at most `max_images` per call (at least 1) and costs
    /// `price_per_image` in the smallest currency unit.
    pub fn new(max_images: u32, price_per_image: u64) -> Self {
        ModelSpec {
            max_images: max_images.max(1),
            price_per_image,
        }
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
            .copied()
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
