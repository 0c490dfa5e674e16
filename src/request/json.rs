//! The JSON method: `{"model", "prompt", "image_key" | "generation_id", ...}`.

use serde_json::{Map, Value};

use super::form::{RawFields, TEXT_FIELDS};

use crate::catalog::Catalog;
use crate::job::{EditRequest, RequestContext};
use crate::GatewayError;

/// The most top-level fields a JSON edit may have, unknown ones included.
const MAX_FIELDS: usize = 64;

/// Parses and validates a JSON edit body.
///
/// Known fields must be strings, except `n`, which may be an integer or a string of digits;
/// `null` counts as absent. Unknown fields are ignored, up to 64 fields in all. serde_json's
/// recursion limit bounds how deep a hostile document can nest.
///
/// `context` is the request's: a [`Principal`](crate::auth::Principal) alone will do.
pub fn parse_json(
    body: &[u8],
    context: impl Into<RequestContext>,
    catalog: &Catalog,
) -> Result<EditRequest, GatewayError> {
    let object: Map<String, Value> = serde_json::from_slice(body).map_err(|e| {
        GatewayError::invalid_request(
            format!("the body is not a JSON object: {}", e.classify_message()),
            None,
        )
    })?;
    if object.len() > MAX_FIELDS {
        return Err(GatewayError::invalid_request(
            format!("a JSON edit may have at most {MAX_FIELDS} fields"),
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
            Value::Number(number) if name == "n" => number.to_string(),
            _ => {
                let kind = if name == "n" {
                    "an integer"
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
    raw.validate(context.into(), catalog)
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
    use crate::catalog::ModelSpec;
    use crate::job::{Size, Source};

    fn catalog() -> Catalog {
        Catalog::new([("gpt-image-2".to_string(), ModelSpec::new(4, 10))])
    }

    fn alice() -> Principal {
        Principal::new(UserId::new("alice").unwrap())
    }

    fn parse(body: &str) -> Result<EditRequest, GatewayError> {
        parse_json(body.as_bytes(), alice(), &catalog())
    }

    #[test]
    fn generation_id_request() {
        let req = parse(
            r#"{"model":"gpt-image-2","prompt":"red shirt",
                "generation_id":"a1b2c3d4-5678-90ab-cdef-1234567890ab","n":2,
                "size":"512x512","mask":"ignored","user":{"deep":[1,2]}}"#,
        )
        .unwrap();
        assert!(matches!(req.source, Source::Generation(_)));
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
