//! The fields of a request as text, from either body format, and their validation.

use crate::catalog::Catalog;
use crate::id::GenerationId;
use crate::job::{parse_n, parse_prompt};
use crate::job::{EditParams, EditRequest, RequestContext, ResponseFormat, Source, SourceImage};
use crate::store::FileKey;
use crate::GatewayError;

/// Declares the text fields the gateway reads, once: the struct that holds them as sent, the
/// list of their names, and the lookup of a field's slot by name all come from this list.
macro_rules! text_fields {
    ($($field:ident),+ $(,)?) => {
        /// The fields the gateway reads, as the client sent them.
        #[derive(Debug, Default)]
        pub(crate) struct RawFields {
            $(pub(crate) $field: Option<String>,)+
            pub(crate) images: Vec<SourceImage>,
            /// Whether the body was multipart, where a missing source is a missing `image`.
            pub(crate) multipart: bool,
        }

        /// The text fields the gateway reads, by name. Everything else is ignored.
        pub(crate) const TEXT_FIELDS: &[&str] = &[$(stringify!($field)),+];

        impl RawFields {
            /// The name (as a `'static` param) and slot of a known text field; `None` for a
            /// field the gateway ignores.
            pub(crate) fn slot(
                &mut self,
                name: &str,
            ) -> Option<(&'static str, &mut Option<String>)> {
                match name {
                    $(stringify!($field) => Some((stringify!($field), &mut self.$field)),)+
                    _ => None,
                }
            }
        }
    };
}

text_fields! {
    model,
    prompt,
    image_key,
    generation_id,
    n,
    size,
    quality,
    background,
    output_format,
    response_format,
}

impl RawFields {
    /// Checks every field, in the order a client fixes them: model, prompt, source, then
    /// the optional fields.
    pub(crate) fn validate(
        self,
        context: RequestContext,
        catalog: &Catalog,
    ) -> Result<EditRequest, GatewayError> {
        let principal = &context.principal;
        let model = self
            .model
            .filter(|m| !m.is_empty())
            .ok_or_else(|| GatewayError::invalid_request("model is required", Some("model")))?;
        let spec = catalog.get(&model)?;
        let prompt = self
            .prompt
            .ok_or_else(|| GatewayError::invalid_request("prompt is required", Some("prompt")))?;
        let prompt = parse_prompt(prompt)?;

        let source = match (self.image_key, self.generation_id, self.images.is_empty()) {
            (Some(key), None, true) => {
                Source::ImageKey(FileKey::parse_owned(&key, principal.user_id())?)
            }
            (None, Some(id), true) => Source::Generation(GenerationId::parse(&id)?),
            (None, None, false) => Source::Upload(self.images),
            (None, None, true) => {
                let param = if self.multipart { "image" } else { "image_key" };
                return Err(GatewayError::invalid_request(
                    "a source is required: image_key or generation_id (JSON), \
                     or an image file (multipart)",
                    Some(param),
                ));
            }
            _ => {
                return Err(GatewayError::invalid_request(
                    "image_key, generation_id and an image file are mutually exclusive; \
                     send exactly one",
                    Some("image_key"),
                ))
            }
        };

        let mut params = EditParams::new(model, prompt);
        if let Some(n) = self.n {
            params.n = parse_n(&n, spec.max_images())?;
        }
        if let Some(size) = self.size {
            params.size = size.parse()?;
        }
        if let Some(quality) = self.quality {
            params.quality = quality.parse()?;
        }
        if let Some(background) = self.background {
            params.background = background.parse()?;
        }
        if let Some(format) = self.output_format {
            params.output_format = format.parse()?;
        }
        if let Some(format) = self.response_format {
            // Validated so a typo is reported; the answer is always b64_json.
            format.parse::<ResponseFormat>()?;
        }
        Ok(EditRequest::new(context, source, params))
    }
}
