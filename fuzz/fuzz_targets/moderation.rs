//! A moderation service's answer: read as a verdict or refused, never a panic; a flagged
//! verdict's reason names at most eight categories of a narrow alphabet.
#![no_main]

use image_gateway::moderation::{parse_verdict, Verdict};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Verdict::Flagged { reason }) = parse_verdict(data) {
        assert!(reason.len() <= 64 + 8 * 66);
        assert!(reason.is_ascii());
    }
});
