//! The fields of a request as sent, from either body format, and their validation against
//! the endpoint's [`Rules`].

use crate::catalog::Catalog;
use crate::fetch::ImageUrl;
use crate::id::GenerationId;
use crate::job::{parse_flag, parse_integer, parse_n, parse_prompt, parse_token};
use crate::job::{
    AspectRatio, EditParams, EditRequest, Operation, Reference, RequestContext, ResponseFormat,
    Size, SourceImage, MAX_PARTIAL_IMAGES,
};
use crate::multipart::MultipartLimits;
use crate::store::FileKey;
use crate::GatewayError;

/// What a body is checked against: the endpoint's operation, the served models, and the
/// size limits of its images.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Rules {
    /// Which endpoint the body came to.
    pub operation: Operation,
    /// The models served.
    pub catalog: Catalog,
    /// Bounds on the body and each image in it (a `data:` URI's image included).
    pub limits: MultipartLimits,
}

impl Rules {
    /// Rules of `operation` over `catalog` with the default limits.
    pub fn new(operation: Operation, catalog: Catalog) -> Self {
        Rules {
            operation,
            catalog,
            limits: MultipartLimits::default(),
        }
    }

    /// The same rules with `limits`.
    pub fn limits(mut self, limits: MultipartLimits) -> Self {
        self.limits = limits;
        self
    }
}

/// Declares the text fields the gateway reads, once: the struct that holds them as sent, the
/// list of their names, and the lookup of a field's slot by name all come from this list.
macro_rules! text_fields {
    ($($field:ident),+ $(,)?) => {
        /// The fields the gateway reads, as the client sent them.
        #[derive(Debug, Default)]
        pub(crate) struct RawFields {
            $(pub(crate) $field: Option<String>,)+
            /// Images sent in the body (multipart `image` / `image[]` parts).
            pub(crate) images: Vec<SourceImage>,
            /// Source references of JSON arrays (`images`, `image_keys`, `generation_ids`,
            /// `image_urls`), each with the field it came from.
            pub(crate) references: Vec<(&'static str, Reference)>,
            /// The mask: a multipart `mask` part or JSON's `mask` object.
            pub(crate) mask: Option<Reference>,
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
    aspect_ratio,
    quality,
    background,
    output_format,
    output_compression,
    moderation,
    input_fidelity,
    user,
    partial_images,
    stream,
    response_format,
}

/// The longest `user` passed on to the model.
const MAX_USER_CHARS: usize = 256;

/// The longest passed-through option word (`moderation`, `input_fidelity`).
const MAX_OPTION_CHARS: usize = 32;

impl RawFields {
    /// A reference of a JSON array or object: an uploaded file's key or an image URL.
    pub(crate) fn file_reference(
        key: &str,
        context: &RequestContext,
    ) -> Result<Reference, GatewayError> {
        FileKey::parse_owned(key, context.principal.user_id()).map(Reference::Key)
    }

    /// A reference given as an image URL (`https://` or `data:`) in the field `param`.
    pub(crate) fn url_reference(
        text: &str,
        param: &'static str,
        limits: &MultipartLimits,
    ) -> Result<Reference, GatewayError> {
        Ok(match ImageUrl::parse(text, param, limits.image)? {
            ImageUrl::Data(bytes, kind) => Reference::Inline(SourceImage::new(bytes, kind)),
            ImageUrl::Remote(url) => Reference::Url(url),
        })
    }

    /// Checks every field, in the order a client fixes them: model, prompt, sources, then
    /// the optional fields.
    pub(crate) fn validate(
        self,
        context: RequestContext,
        rules: &Rules,
    ) -> Result<EditRequest, GatewayError> {
        let model = self
            .model
            .clone()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| GatewayError::invalid_request("model is required", Some("model")))?;
        let spec = rules.catalog.get(&model)?;
        let prompt = self
            .prompt
            .clone()
            .ok_or_else(|| GatewayError::invalid_request("prompt is required", Some("prompt")))?;
        let prompt = parse_prompt(prompt)?;
        let sources = self.sources(&context, rules.operation)?;
        if self.mask.is_some() && rules.operation != Operation::Edit {
            return Err(GatewayError::invalid_request(
                "mask is for edits only",
                Some("mask"),
            ));
        }

        let mut params = EditParams::new(model, prompt);
        if let Some(n) = self.n {
            params.n = parse_n(&n, spec.max_images())?;
        }
        if let Some(size) = self.size {
            params.size = size.parse()?;
        }
        if let Some(ratio) = self.aspect_ratio {
            params.size = aspect_size(&ratio, params.size, rules.operation)?;
        }
        if let Some(quality) = self.quality {
            params.quality = quality.parse()?;
            spec.check_quality(&params.quality)?;
        }
        if let Some(background) = self.background {
            params.background = background.parse()?;
        }
        if let Some(format) = self.output_format {
            params.output_format = format.parse()?;
        }
        if let Some(compression) = self.output_compression {
            let value = parse_integer(&compression, "output_compression", 0..=100)?;
            params.output_compression = u8::try_from(value).ok();
        }
        if let Some(moderation) = self.moderation {
            params.moderation = Some(parse_token(moderation, "moderation", MAX_OPTION_CHARS)?);
        }
        if let Some(fidelity) = self.input_fidelity {
            let fidelity = parse_token(fidelity, "input_fidelity", MAX_OPTION_CHARS)?;
            params.input_fidelity = Some(fidelity);
        }
        if let Some(user) = self.user {
            params.user = Some(parse_token(user, "user", MAX_USER_CHARS)?);
        }
        if let Some(partials) = self.partial_images {
            let max = u32::from(MAX_PARTIAL_IMAGES);
            let value = parse_integer(&partials, "partial_images", 0..=max)?;
            params.partial_images = u8::try_from(value).unwrap_or(MAX_PARTIAL_IMAGES);
        }
        if let Some(stream) = self.stream {
            params.stream = parse_flag(&stream, "stream")?;
        }
        if let Some(format) = self.response_format {
            // Validated so a typo is reported; the answer is always b64_json.
            format.parse::<ResponseFormat>()?;
        }
        let mut request = EditRequest::new(context, rules.operation, sources, params);
        request.mask = self.mask;
        Ok(request)
    }

    /// The source references the operation takes, from whichever fields carried them.
    fn sources(
        &self,
        context: &RequestContext,
        operation: Operation,
    ) -> Result<Vec<Reference>, GatewayError> {
        let mut given: Vec<&'static str> = Vec::new();
        if self.image_key.is_some() {
            given.push("image_key");
        }
        if self.generation_id.is_some() {
            given.push("generation_id");
        }
        if !self.images.is_empty() {
            given.push("image");
        }
        for (param, _) in &self.references {
            if !given.contains(param) {
                given.push(param);
            }
        }
        match operation {
            Operation::Generate => {
                if let Some(param) = given.first() {
                    return Err(GatewayError::invalid_request(
                        "a generation takes no source image; use /v1/images/edits or \
                         /v1/images/compose",
                        Some(param),
                    ));
                }
                Ok(Vec::new())
            }
            Operation::Edit => self.edit_sources(context, &given),
            Operation::Compose => self.compose_sources(&given),
        }
    }

    fn edit_sources(
        &self,
        context: &RequestContext,
        given: &[&'static str],
    ) -> Result<Vec<Reference>, GatewayError> {
        match given {
            [] => {
                let param = if self.multipart { "image" } else { "image_key" };
                Err(GatewayError::invalid_request(
                    "a source is required: image_key, generation_id or images (JSON), \
                     or an image file (multipart)",
                    Some(param),
                ))
            }
            ["image_key"] => {
                let key = self.image_key.as_deref().unwrap_or_default();
                Ok(vec![Self::file_reference(key, context)?])
            }
            ["generation_id"] => {
                let id = self.generation_id.as_deref().unwrap_or_default();
                Ok(vec![Reference::Generation(GenerationId::parse(id)?)])
            }
            ["image"] => {
                check_count(self.images.len(), Operation::Edit, "image")?;
                Ok(self.images.iter().cloned().map(Reference::Inline).collect())
            }
            ["images"] => {
                check_count(self.references.len(), Operation::Edit, "images")?;
                self.distinct_references()
            }
            [..] => Err(GatewayError::invalid_request(
                "image_key, generation_id, images and image files are mutually exclusive; \
                 send exactly one",
                Some(given.first().copied().unwrap_or("image_key")),
            )),
        }
    }

    fn compose_sources(&self, given: &[&'static str]) -> Result<Vec<Reference>, GatewayError> {
        let compose_fields = ["image_keys", "generation_ids", "image_urls"];
        if let Some(other) = given.iter().find(|p| !compose_fields.contains(p)) {
            return Err(GatewayError::invalid_request(
                "compose takes its references in image_keys, generation_ids and image_urls",
                Some(other),
            ));
        }
        let param = given.first().copied().unwrap_or("image_keys");
        check_count(self.references.len(), Operation::Compose, param)?;
        self.distinct_references()
    }

    /// The references, refused when one is named twice: a request reads each image it
    /// names before its hold, so a repeated name would only multiply that unpaid work.
    fn distinct_references(&self) -> Result<Vec<Reference>, GatewayError> {
        for (i, (param, reference)) in self.references.iter().enumerate() {
            let earlier = &self.references[..i];
            if earlier.iter().any(|(_, r)| same_reference(r, reference)) {
                return Err(GatewayError::invalid_request(
                    "the same image is referenced twice; each reference must be distinct",
                    Some(param),
                ));
            }
        }
        Ok(self.references.iter().map(|(_, r)| r.clone()).collect())
    }
}

/// One reference to at least one image and at most the operation's maximum.
fn check_count(
    count: usize,
    operation: Operation,
    param: &'static str,
) -> Result<(), GatewayError> {
    let max = operation.max_references();
    if (1..=max).contains(&count) {
        return Ok(());
    }
    let what = if operation == Operation::Compose {
        "image_keys, generation_ids and image_urls together"
    } else {
        "an edit"
    };
    Err(GatewayError::invalid_request(
        format!("{what} must reference 1 to {max} images"),
        Some(param),
    ))
}

/// Whether two references name the same image as written. References that differ in
/// writing but not in bytes (a key and the generation stored under it) are caught once
/// fetched, by source resolution.
fn same_reference(a: &Reference, b: &Reference) -> bool {
    match (a, b) {
        (Reference::Key(a), Reference::Key(b)) => a == b,
        (Reference::Generation(a), Reference::Generation(b)) => a == b,
        (Reference::Url(a), Reference::Url(b)) => a == b,
        (Reference::Inline(a), Reference::Inline(b)) => a.bytes == b.bytes,
        _ => false,
    }
}

/// The size a generation's `aspect_ratio` asks for: the ratio's own size when `size` is
/// `auto`, `size` itself when it has the ratio's shape, and an error when the two disagree.
fn aspect_size(ratio: &str, size: Size, operation: Operation) -> Result<Size, GatewayError> {
    if operation != Operation::Generate {
        return Err(GatewayError::invalid_request(
            "aspect_ratio is for generations only; give an edit or a compose a size",
            Some("aspect_ratio"),
        ));
    }
    let ratio: AspectRatio = ratio.parse()?;
    match size {
        Size::Auto => Ok(ratio.size()),
        exact if ratio.fits(exact) => Ok(exact),
        _ => Err(GatewayError::invalid_request(
            format!("size {size} does not have the aspect_ratio {ratio}; send one or the other"),
            Some("aspect_ratio"),
        )),
    }
}
