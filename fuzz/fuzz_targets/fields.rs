//! The parsers of `size`, `quality`, `background`, `output_format`, `n` and
//! `generation_id`: never a panic, and what they accept prints back the same.
#![no_main]

use image_gateway::id::GenerationId;
use image_gateway::job::{parse_n, Background, OutputFormat, Quality, Size};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(size) = s.parse::<Size>() {
        assert!(s.len() <= 16);
        assert_eq!(size.to_string().parse::<Size>().ok(), Some(size));
    }
    if let Ok(q) = s.parse::<Quality>() {
        assert_eq!(q.as_str(), s);
    }
    if let Ok(b) = s.parse::<Background>() {
        assert_eq!(b.as_str(), s);
    }
    if let Ok(f) = s.parse::<OutputFormat>() {
        assert_eq!(f.as_str(), s);
    }
    if let Ok(n) = parse_n(s, 10) {
        assert!((1..=10).contains(&n));
    }
    if let Ok(id) = GenerationId::parse(s) {
        assert_eq!(id.to_string(), s.to_ascii_lowercase());
    }
});
