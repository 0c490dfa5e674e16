//! The JSON bodies: the spec's `{"model", "prompt", "image_key" | "generation_id", ...}`,
//! OpenAI's edit shape (`images: [{image_url} | {file_id}]`, `mask`), compose's
//! `image_keys` / `generation_ids` / `image_urls`, and a generation's fields.

use serde_json::{Map, Value};

use super::form::{RawFields, Rules, TEXT_FIELDS};

use crate::id::GenerationId;
use crate::job::{EditRequest, Reference, RequestContext};
use crate::GatewayError;

/// The most top-level fields a JSON body may have, unknown ones included.
const MAX_FIELDS: usize = 64;

/// Fields that may be sent as a JSON number as well as a string of digits.
const NUMBER_FIELDS: &[&str] = &["n", "output_compression", "partial_images"];

/// Parses and validates a JSON body for the endpoint of `rules`.
///
/// Known text fields must be strings, except `n`, `output_compression` and
/// `partial_images`, which may be integers, and `stream`, which may be a boolean; `null`
/// counts as absent. The reference fields are arrays (`images` of objects with exactly one
/// of `image_url` / `file_id`; `image_keys`, `generation_ids`, `image_urls` of strings) and
/// `mask` is one such object. Unknown fields are ignored, up to 64 fields in all.
/// serde_json's recursion limit bounds how deep a hostile document can nest.
///
/// `context` is the request's: a [`Principal`](crate::auth::Principal) alone will do.
pub fn parse_json(
    body: &[u8],
    context: impl Into<RequestContext>,
    rules: &Rules,
) -> Result<EditRequest, GatewayError> {
    let context = context.into();
    let object: Map<String, Value> = serde_json::from_slice(body).map_err(|e| {
        GatewayError::invalid_request(
            format!("the body is not a JSON object: {}", e.classify_message()),
            None,
        )
    })?;
    if object.len() > MAX_FIELDS {
        return Err(GatewayError::invalid_request(
            format!("a JSON body may have at most {MAX_FIELDS} fields"),
            None,
        ));
    }
    let mut raw = RawFields::default();
    for &name in TEXT_FIELDS {
        let Some(value) = object.get(name) else {
            continue;
        };
        let text = match value {
            Value::Null => continue,
            Value::String(s) => s.clone(),
            Value::Number(number) if NUMBER_FIELDS.contains(&name) => number.to_string(),
            Value::Bool(flag) if name == "stream" => flag.to_string(),
            _ => {
                let kind = if NUMBER_FIELDS.contains(&name) {
                    "an integer"
                } else if name == "stream" {
                    "a boolean"
                } else {
                    "a string"
                };
                return Err(GatewayError::invalid_request(
                    format!("{name} must be {kind}"),
                    raw.slot(name).map(|(n, _)| n),
                ));
            }
        };
        if let Some((_, slot)) = raw.slot(name) {
            *slot = Some(text);
        }
    }
    for param in ["images", "image_keys", "generation_ids", "image_urls"] {
        let Some(items) = array(&object, param)? else {
            continue;
        };
        for item in items {
            let reference = match param {
                "images" => image_ref(item, param, &context, rules)?,
                _ => {
                    let text = item.as_str().ok_or_else(|| {
                        GatewayError::invalid_request(
                            format!("{param} must be an array of strings"),
                            Some(param),
                        )
                    })?;
                    match param {
                        "image_keys" => RawFields::file_reference(text, &context)?,
                        "generation_ids" => Reference::Generation(GenerationId::parse(text)?),
                        _ => RawFields::url_reference(text, param, &rules.limits)?,
                    }
                }
            };
            raw.references.push((param, reference));
        }
    }
    match object.get("mask") {
        None | Some(Value::Null) => {}
        Some(mask) => raw.mask = Some(image_ref(mask, "mask", &context, rules)?),
    }
    raw.validate(context, rules)
}

/// The most entries a reference array is read for; the operation's own maximum (16 for an
/// edit, 3 for a compose) is checked after.
const MAX_ARRAY: usize = 16;

/// The array `param`, or `None` when absent or null.
fn array<'a>(
    object: &'a Map<String, Value>,
    param: &'static str,
) -> Result<Option<&'a Vec<Value>>, GatewayError> {
    match object.get(param) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) if items.len() <= MAX_ARRAY => Ok(Some(items)),
        Some(Value::Array(_)) => Err(GatewayError::invalid_request(
            format!("{param} may have at most {MAX_ARRAY} entries"),
            Some(param),
        )),
        Some(_) => Err(GatewayError::invalid_request(
            format!("{param} must be an array"),
            Some(param),
        )),
    }
}

/// OpenAI's image reference: an object with exactly one of `image_url` (an `https://` URL
/// or a `data:` URI) and `file_id` (here: a key from the upload endpoint).
fn image_ref(
    value: &Value,
    param: &'static str,
    context: &RequestContext,
    rules: &Rules,
) -> Result<Reference, GatewayError> {
    let bad = || {
        GatewayError::invalid_request(
            format!("{param} entries must be objects with exactly one of image_url and file_id"),
            Some(param),
        )
    };
    let object = value.as_object().ok_or_else(bad)?;
    if object.len() != 1 {
        return Err(bad());
    }
    match (object.get("image_url"), object.get("file_id")) {
        (Some(Value::String(url)), None) => RawFields::url_reference(url, param, &rules.limits),
        (None, Some(Value::String(id))) => RawFields::file_reference(id, context),
        _ => Err(bad()),
    }
}

trait ClassifyMessage {
    fn classify_message(&self) -> &'static str;
}

impl ClassifyMessage for serde_json::Error {
    /// A short reason that never echoes the client's bytes back.
    fn classify_message(&self) -> &'static str {
        use serde_json::error::Category;
        match self.classify() {
            Category::Io => "read error",
            Category::Syntax => "syntax error",
            Category::Data => "expected an object",
            Category::Eof => "unexpected end of input",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Principal;
    use crate::auth::UserId;
    use crate::catalog::{Catalog, ModelSpec};
    use crate::job::{Operation, Size};

    fn rules(operation: Operation) -> Rules {
        let catalog = Catalog::new([("gpt-image-2".to_string(), ModelSpec::new(4, 10))]);
        Rules::new(operation, catalog)
    }

    fn alice() -> Principal {
        Principal::new(UserId::new("alice").unwrap())
    }

    fn parse(body: &str) -> Result<EditRequest, GatewayError> {
        parse_json(body.as_bytes(), alice(), &rules(Operation::Edit))
    }

    fn parse_as(operation: Operation, body: &str) -> Result<EditRequest, GatewayError> {
        parse_json(body.as_bytes(), alice(), &rules(operation))
    }

    #[test]
    fn generation_id_request() {
        let req = parse(
            r#"{"model":"gpt-image-2","prompt":"red shirt",
                "generation_id":"a1b2c3d4-5678-90ab-cdef-1234567890ab","n":2,
                "size":"512x512","extra":{"deep":[1,2]}}"#,
        )
        .unwrap();
        assert!(matches!(req.sources[..], [Reference::Generation(_)]));
        assert_eq!(req.params.n, 2);
        assert_eq!(
            req.params.size,
            Size::Exact {
                width: 512,
                height: 512
            }
        );
    }

    #[test]
    fn errors_name_their_field() {
        let cases = [
            ("not json", "invalid_request", None),
            ("[1,2]", "invalid_request", None),
            (
                r#"{"prompt":"p","image_key":"k"}"#,
                "invalid_request",
                Some("model"),
            ),
            (
                r#"{"model":"dall-e-9","prompt":"p"}"#,
                "model_not_found",
                Some("model"),
            ),
            (
                r#"{"model":"gpt-image-2","prompt":" ","image_key":"k"}"#,
                "invalid_request",
                Some("prompt"),
            ),
            (
                r#"{"model":"gpt-image-2","prompt":"p"}"#,
                "invalid_request",
                Some("image_key"),
            ),
            (
                r#"{"model":"gpt-image-2","prompt":"p","image_key":"files/alice/x","generation_id":"y"}"#,
                "invalid_request",
                Some("image_key"),
            ),
            (
                r#"{"model":"gpt-image-2","prompt":"p","generation_id":"nope"}"#,
                "invalid_generation_id",
                Some("generation_id"),
            ),
            (
                r#"{"model":"gpt-image-2","prompt":"p","image_key":"../etc/passwd"}"#,
                "invalid_image_key",
                Some("image_key"),
            ),
            (
                r#"{"model":"gpt-image-2","prompt":"p","generation_id":"a1b2c3d4-5678-90ab-cdef-1234567890ab","n":5}"#,
                "invalid_request",
                Some("n"),
            ),
            (
                r#"{"model":"gpt-image-2","prompt":"p","generation_id":"a1b2c3d4-5678-90ab-cdef-1234567890ab","n":1.5}"#,
                "invalid_request",
                Some("n"),
            ),
            (
                r#"{"model":"gpt-image-2","prompt":7}"#,
                "invalid_request",
                Some("prompt"),
            ),
        ];
        for (body, code, param) in cases {
            let err = parse(body).unwrap_err();
            assert_eq!((err.code(), err.param()), (code, param), "{body}");
        }
    }

    const PNG_URI: &str = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==";
    const ID: &str = "a1b2c3d4-5678-90ab-cdef-1234567890ab";

    #[test]
    fn openai_edit_shape_with_mask_and_options() {
        let req = parse(&format!(
            r#"{{"model":"gpt-image-2","prompt":"p","images":[{{"image_url":"{PNG_URI}"}},
                {{"file_id":"files/alice/9b2f0c55-2a7e-4a0e-9c39-0f1b7d1b8d11_a.png"}},
                {{"image_url":"https://example.com/a.png"}}],
                "mask":{{"image_url":"{PNG_URI}"}},"stream":true,"partial_images":2,
                "output_compression":80,"moderation":"low","input_fidelity":"high","user":"u-1"}}"#
        ))
        .unwrap();
        assert!(matches!(
            req.sources[..],
            [Reference::Inline(_), Reference::Key(_), Reference::Url(_)]
        ));
        assert!(matches!(req.mask, Some(Reference::Inline(_))));
        let p = &req.params;
        assert!(p.stream);
        assert_eq!(p.partial_images, 2);
        assert_eq!(p.output_compression, Some(80));
        assert_eq!(p.moderation.as_deref(), Some("low"));
        assert_eq!(p.input_fidelity.as_deref(), Some("high"));
        assert_eq!(p.user.as_deref(), Some("u-1"));
    }

    #[test]
    fn generations_take_no_source_and_map_aspect_ratios() {
        let req = parse_as(
            Operation::Generate,
            r#"{"model":"gpt-image-2","prompt":"a cat","aspect_ratio":"16:9"}"#,
        )
        .unwrap();
        assert!(req.sources.is_empty());
        assert_eq!(req.params.size.to_string(), "1792x1008");
        for (body, param) in [
            (
                format!(r#"{{"model":"gpt-image-2","prompt":"p","generation_id":"{ID}"}}"#),
                "generation_id",
            ),
            (
                r#"{"model":"gpt-image-2","prompt":"p","aspect_ratio":"16:9","size":"1024x1024"}"#
                    .into(),
                "aspect_ratio",
            ),
            (
                r#"{"model":"gpt-image-2","prompt":"p","aspect_ratio":"5:4"}"#.into(),
                "aspect_ratio",
            ),
            (
                r#"{"model":"gpt-image-2","prompt":"p","size":"1024 x 1024"}"#.into(),
                "size",
            ),
            (
                r#"{"model":"gpt-image-2","prompt":"p","size":1024}"#.into(),
                "size",
            ),
            (
                r#"{"model":"gpt-image-2","prompt":"p","stream":"yes"}"#.into(),
                "stream",
            ),
            (
                r#"{"model":"gpt-image-2","prompt":"p","partial_images":4}"#.into(),
                "partial_images",
            ),
            (
                format!(
                    r#"{{"model":"gpt-image-2","prompt":"p","mask":{{"image_url":"{PNG_URI}"}}}}"#
                ),
                "mask",
            ),
        ] {
            let err = parse_as(Operation::Generate, &body).unwrap_err();
            assert_eq!(
                (err.code(), err.param()),
                ("invalid_request", Some(param)),
                "{body}"
            );
        }
    }

    #[test]
    fn compose_takes_one_to_three_distinct_references() {
        let key = "files/alice/9b2f0c55-2a7e-4a0e-9c39-0f1b7d1b8d11_a.png";
        let req = parse_as(
            Operation::Compose,
            &format!(
                r#"{{"model":"gpt-image-2","prompt":"p","image_keys":["{key}"],
                    "generation_ids":["{ID}"],"image_urls":["{PNG_URI}"]}}"#
            ),
        )
        .unwrap();
        assert_eq!(req.sources.len(), 3);
        for (body, param) in [
            (
                r#"{"model":"gpt-image-2","prompt":"p"}"#.to_string(),
                "image_keys",
            ),
            (
                format!(
                    r#"{{"model":"gpt-image-2","prompt":"p","generation_ids":["{ID}","{ID}"]}}"#
                ),
                "generation_ids",
            ),
            (
                format!(
                    r#"{{"model":"gpt-image-2","prompt":"p","image_urls":["{PNG_URI}","{PNG_URI}"]}}"#
                ),
                "image_urls",
            ),
            (
                format!(
                    r#"{{"model":"gpt-image-2","prompt":"p","image_keys":["{key}"],"generation_ids":["{ID}"],"image_urls":["{PNG_URI}","https://example.com/b.png"]}}"#
                ),
                "image_keys",
            ),
            (
                r#"{"model":"gpt-image-2","prompt":"p","image_urls":["http://example.com/a.png"]}"#
                    .into(),
                "image_urls",
            ),
            (
                r#"{"model":"gpt-image-2","prompt":"p","image_urls":["https://169.254.169.254/"]}"#
                    .into(),
                "image_urls",
            ),
            (
                format!(r#"{{"model":"gpt-image-2","prompt":"p","image_key":"{key}"}}"#),
                "image_key",
            ),
            (
                r#"{"model":"gpt-image-2","prompt":"p","image_keys":"x"}"#.into(),
                "image_keys",
            ),
        ] {
            let err = parse_as(Operation::Compose, &body).unwrap_err();
            assert_eq!(
                (err.code(), err.param()),
                ("invalid_request", Some(param)),
                "{body}"
            );
        }
    }

    #[test]
    fn at_most_64_fields() {
        let body = |extra: usize| {
            let mut fields: Vec<String> = (0..extra).map(|i| format!(r#""x{i}":1"#)).collect();
            fields.push(r#""model":"gpt-image-2","prompt":"p""#.into());
            fields.push(r#""generation_id":"a1b2c3d4-5678-90ab-cdef-1234567890ab""#.into());
            format!("{{{}}}", fields.join(","))
        };
        assert!(parse(&body(61)).is_ok(), "64 fields");
        let err = parse(&body(62)).unwrap_err();
        assert_eq!((err.code(), err.param()), ("invalid_request", None));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let body = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse(&body).unwrap_err().code(), "invalid_request");
    }
}
