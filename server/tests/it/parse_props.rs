//! Property tests: any bytes into the parsers give a request or an error, never a panic.

use bytes::Bytes;
use image_gateway::auth::{Principal, UserId};
use image_gateway::catalog::{Catalog, ModelSpec};
use image_gateway::id::GenerationId;
use image_gateway::job::{Operation, OutputFormat, Quality, Size};
use image_gateway::request::{parse_json, parse_multipart, Rules};
use image_gateway::store::FileKey;
use proptest::prelude::*;

const CLIENT_CODES: [&str; 7] = [
    "invalid_request",
    "invalid_image_key",
    "invalid_generation_id",
    "IMAGE_TYPE_UNSUPPORTED",
    "IMAGE_TOO_LARGE",
    "model_not_found",
    "request_too_large",
];

fn catalog() -> Catalog {
    Catalog::new([("gpt-image-2".to_string(), ModelSpec::new(4, 1))])
}

fn alice() -> Principal {
    Principal::new(UserId::new("alice").unwrap())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn multipart(body: Vec<u8>, boundary: String, chunk: usize) -> Result<(), String> {
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let stream = futures_util::stream::iter(chunks);
    runtime()
        .block_on(parse_multipart(
            stream,
            boundary,
            alice(),
            &Rules::new(Operation::Edit, catalog()),
        ))
        .map(|_| ())
        .map_err(|e| e.code().to_owned())
}

/// One multipart part: a name from the set the gateway knows (and some it does not), and a
/// value that is sometimes an image header.
fn part() -> impl Strategy<Value = (String, Vec<u8>, bool)> {
    let names = prop::sample::select(vec![
        "image",
        "image[]",
        "model",
        "prompt",
        "n",
        "size",
        "quality",
        "background",
        "output_format",
        "response_format",
        "image_key",
        "generation_id",
        "mask",
        "user",
        "",
    ]);
    let values = prop_oneof![
        Just(b"gpt-image-2".to_vec()),
        Just(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec()),
        Just(b"\xFF\xD8\xFF\xE0garbage".to_vec()),
        Just(b"2".to_vec()),
        prop::collection::vec(any::<u8>(), 0..64),
    ];
    (names.prop_map(str::to_owned), values, any::<bool>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn json_never_panics(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_json(&body, alice(), &Rules::new(Operation::Edit, catalog()));
    }

    #[test]
    fn json_objects_never_panic(
        fields in prop::collection::btree_map(
            prop::sample::select(vec!["model", "prompt", "n", "size", "image_key", "generation_id", "quality", "x"]),
            prop_oneof![
                any::<String>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(serde_json::Value::from),
                Just(serde_json::Value::Null),
                Just(serde_json::json!([1, {"a": null}])),
            ],
            0..8,
        )
    ) {
        let body = serde_json::to_vec(&fields).unwrap();
        let _ = parse_json(&body, alice(), &Rules::new(Operation::Edit, catalog()));
    }

    #[test]
    fn raw_multipart_never_panics(
        body in prop::collection::vec(any::<u8>(), 0..1024),
        boundary in "[a-zA-Z0-9'()+_,-./:=?]{1,70}",
        chunk in 1usize..64,
    ) {
        if let Err(code) = multipart(body, boundary, chunk) {
            prop_assert!(CLIENT_CODES.contains(&code.as_str()), "{}", code);
        }
    }

    #[test]
    fn well_framed_multipart_never_panics(
        parts in prop::collection::vec(part(), 0..12),
        chunk in 1usize..97,
    ) {
        let boundary = "XyZ-boundary";
        let mut body = Vec::new();
        for (name, value, as_file) in parts {
            body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes());
            if as_file {
                body.extend_from_slice(b"; filename=\"f.png\"");
            }
            body.extend_from_slice(b"\r\n\r\n");
            body.extend_from_slice(&value);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        // Every failure is a client error of the spec's table, never a server fault.
        if let Err(code) = multipart(body, boundary.to_owned(), chunk) {
            prop_assert!(CLIENT_CODES.contains(&code.as_str()), "{}", code);
        }
    }

    #[test]
    fn field_parsers_never_panic(s in any::<String>()) {
        let _ = s.parse::<Size>();
        let _ = s.parse::<Quality>();
        let _ = s.parse::<OutputFormat>();
        let _ = GenerationId::parse(&s);
        let _ = image_gateway::job::parse_n(&s, 10);
    }

    #[test]
    fn accepted_file_keys_stay_in_their_owners_folder(s in any::<String>(), tail in "[a-zA-Z0-9._/\\\\%-]{0,40}") {
        let candidates = [
            s.clone(),
            format!("files/alice/0b7e7d4c-6f51-4a5b-9d6e-2a0c9b3e8f11_{tail}"),
            format!("files/alice/{tail}"),
        ];
        for raw in candidates {
            if let Some(key) = FileKey::parse(&raw) {
                // Resolve the key as a path would be: no component may climb or vanish.
                let owner = key.owner().as_str().to_owned();
                let parts: Vec<&str> = key.as_str().split('/').collect();
                prop_assert_eq!(parts.len(), 3);
                prop_assert_eq!(parts[0], "files");
                prop_assert_eq!(parts[1], owner.as_str());
                prop_assert!(parts.iter().all(|p| !p.is_empty() && *p != "." && *p != ".."));
                prop_assert!(!key.as_str().contains('\\') && !key.as_str().contains('%'));
            }
        }
    }
}

#[test]
fn sample_multipart_request_parses() {
    let body = b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-image-2\r\n\
--b\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nhi\r\n\
--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.gif\"\r\n\r\nGIF89a-rest\r\n--b--\r\n";
    assert_eq!(multipart(body.to_vec(), "b".into(), 5), Ok(()));
}
