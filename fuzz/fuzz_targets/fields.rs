//! The parsers of `size`, `quality`, `background`, `output_format`, `n` and
//! `generation_id`: never a panic, and what they accept prints back the same. The same text
//! as a forwarding header (`X-Forwarded-For`, `Forwarded`): never a panic, and the client
//! is the peer unless the peer is a trusted proxy.
#![no_main]

use image_gateway::auth::{Cidr, ClientIp};
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
    if let Ok(value) = http::HeaderValue::from_str(s) {
        let proxies = [Cidr::parse("10.0.0.0/8").expect("a CIDR")];
        let (proxy, stranger) = ([10, 0, 0, 1].into(), [192, 0, 2, 1].into());
        for name in ["x-forwarded-for", "forwarded"] {
            let mut headers = http::HeaderMap::new();
            headers.insert(name, value.clone());
            let client = ClientIp::resolve(proxy, &headers, &proxies).0;
            assert!(client == proxy || !ClientIp::is_trusted(&proxies, client));
            assert_eq!(ClientIp::resolve(stranger, &headers, &proxies).0, stranger);
        }
    }
});
