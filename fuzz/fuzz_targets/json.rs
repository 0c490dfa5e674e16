//! JSON normalization: any bytes give a request or a spec error, never a panic.
#![no_main]

use image_gateway::auth::{Principal, UserId};
use image_gateway::catalog::{Catalog, ModelSpec};
use image_gateway::job::Operation;
use image_gateway::request::{parse_json, Rules};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let catalog = Catalog::new([("gpt-image-2".to_string(), ModelSpec::new(10, 1))]);
    let principal = Principal::new(UserId::new("fuzz").expect("user"));
    let _ = parse_json(data, principal, &Rules::new(Operation::Edit, catalog));
});
