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
    prices: Arc<[PriceRule]>,
    violation_fee: u64,
}

/// A price of one image for requests of one size, one quality, or both.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PriceRule {
    size: Option<String>,
    quality: Option<String>,
    price: u64,
}

impl PriceRule {
    /// How well the rule fits a request: 2 for size and quality, 1 for one of them, `None`
    /// when it does not apply.
    fn fit(&self, size: &str, quality: &str) -> Option<u8> {
        let size_fits = self.size.as_deref().map(|s| s == size);
        let quality_fits = self.quality.as_deref().map(|q| q == quality);
        match (size_fits, quality_fits) {
            (Some(false), _) | (_, Some(false)) | (None, None) => None,
            (Some(true), Some(true)) => Some(2),
            _ => Some(1),
        }
    }
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
            prices: Arc::new([]),
            violation_fee: 0,
        }
    }

    /// The same model charging `fee` (at most what the request held) when its upstream
    /// refuses a request on content policy, for upstreams that bill their refusals. Default
    /// 0: a refusal releases the hold and charges nothing.
    pub fn with_violation_fee(mut self, fee: u64) -> Self {
        self.violation_fee = fee;
        self
    }

    /// What an upstream's content-policy refusal charges (see [`Self::with_violation_fee`]).
    pub fn violation_fee(&self) -> u64 {
        self.violation_fee
    }

    /// The same model priced `price` per image for requests of `size` (`1024x1536`), of
    /// `quality`, or of both. An image pays the price of the rule that names both its size
    /// and quality, else of one naming either (the first added), else
    /// [`Self::price_per_image`]. A rule naming neither is ignored.
    pub fn with_price(mut self, size: Option<&str>, quality: Option<&str>, price: u64) -> Self {
        let mut prices = self.prices.to_vec();
        prices.push(PriceRule {
            size: size.map(str::to_owned),
            quality: quality.map(str::to_owned),
            price,
        });
        self.prices = prices.into();
        self
    }

    /// The price of one image of `size` and `quality` as the job will produce them (see
    /// [`Self::with_price`]). `auto`, which the backend resolves after the hold, is not a
    /// discount: it is priced as the dearest value it could become.
    pub fn price_for(&self, size: &str, quality: &str) -> u64 {
        self.price_bounds(size, quality).1
    }

    /// The cheapest and the dearest price one image of `size` and `quality` may cost: equal
    /// unless one of them is `auto`. A size may become any size (a rule's, or one no rule
    /// names); a quality any of the model's [`Self::qualities`].
    pub fn price_bounds(&self, size: &str, quality: &str) -> (u64, u64) {
        const AUTO: &str = "auto";
        if size != AUTO && quality != AUTO {
            let price = self.rule_price(size, quality);
            return (price, price);
        }
        // "" stands for a size no rule names, which pays what a rule of quality alone says.
        let sizes: Vec<&str> = if size == AUTO {
            let named = self.prices.iter().filter_map(|r| r.size.as_deref());
            named.chain([""]).collect()
        } else {
            vec![size]
        };
        let qualities: Vec<&str> = if quality == AUTO {
            let known = self.qualities.iter().map(String::as_str);
            let mut known: Vec<&str> = known.filter(|q| *q != AUTO).collect();
            if known.is_empty() {
                known.push("");
            }
            known
        } else {
            vec![quality]
        };
        let mut bounds: Option<(u64, u64)> = None;
        for size in &sizes {
            for quality in &qualities {
                let price = self.rule_price(size, quality);
                bounds =
                    Some(bounds.map_or((price, price), |(lo, hi)| (lo.min(price), hi.max(price))));
            }
        }
        bounds.unwrap_or((self.price_per_image, self.price_per_image))
    }

    /// The price of the rule that fits a concrete `size` and `quality` best.
    fn rule_price(&self, size: &str, quality: &str) -> u64 {
        let mut best: Option<(u8, u64)> = None;
        for rule in self.prices.iter() {
            if let Some(fit) = rule.fit(size, quality) {
                if best.is_none_or(|(b, _)| fit > b) {
                    best = Some((fit, rule.price));
                }
            }
        }
        best.map_or(self.price_per_image, |(_, price)| price)
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

    /// The price of one returned image when no size or quality rule applies.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_price_rule_wins() {
        let spec = ModelSpec::new(4, 10)
            .with_price(None, Some("high"), 30)
            .with_price(Some("1536x1024"), None, 15)
            .with_price(Some("1536x1024"), Some("high"), 45)
            .with_price(None, None, 1);
        assert_eq!(spec.price_for("1024x1024", "low"), 10);
        assert_eq!(spec.price_for("1024x1024", "high"), 30);
        assert_eq!(spec.price_for("1536x1024", "low"), 15);
        assert_eq!(spec.price_for("1536x1024", "high"), 45);
        // `auto` is priced as the dearest it could become.
        assert_eq!(spec.price_for("auto", "low"), 15);
        assert_eq!(spec.price_for("1024x1024", "auto"), 30);
        assert_eq!(spec.price_for("auto", "auto"), 45);
        assert_eq!(spec.price_bounds("auto", "auto"), (10, 45));
        assert_eq!(spec.price_bounds("1536x1024", "low"), (15, 15));
    }
}
