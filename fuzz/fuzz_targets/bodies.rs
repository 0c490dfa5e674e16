//! JSON bodies of every image endpoint: the first byte picks generations, compose or edits
//! (OpenAI's `images` / `mask` shape included); the rest is the body. A request or a spec
//! error (a 4xx), never a panic.
#![no_main]

use image_gateway::auth::{Principal, UserId};
use image_gateway::catalog::{Catalog, ModelSpec};
use image_gateway::job::Operation;
use image_gateway::request::{parse_json, Rules};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let operation = match selector % 3 {
        0 => Operation::Generate,
        1 => Operation::Compose,
        _ => Operation::Edit,
    };
    let catalog = Catalog::new([("gpt-image-2".to_string(), ModelSpec::new(10, 1))]);
    let principal = Principal::new(UserId::new("fuzz").expect("user"));
    match parse_json(body, principal, &Rules::new(operation, catalog)) {
        Ok(request) => {
            assert!(request.sources.len() <= operation.max_references());
            assert_eq!(request.operation, operation);
        }
        Err(error) => assert!(error.status().is_client_error(), "{error:?}"),
    }
});
