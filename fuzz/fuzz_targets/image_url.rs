//! Image URLs of requests: `data:` URIs and `https://` URLs. Never a panic; an accepted
//! URL is https, carries no credentials, and its literal host (if an address) is public.
#![no_main]

use image_gateway::fetch::{address, ImageUrl};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ImageUrl::parse(text, "image_urls", 1 << 20) {
        Ok(ImageUrl::Remote(remote)) => {
            let url = remote.url();
            assert_eq!(url.scheme(), "https");
            assert!(url.username().is_empty() && url.password().is_none());
            match url.host() {
                Some(url::Host::Ipv4(ip)) => assert!(address::is_public(ip.into()), "{ip}"),
                Some(url::Host::Ipv6(ip)) => assert!(address::is_public(ip.into()), "{ip}"),
                Some(url::Host::Domain(_)) => {}
                None => panic!("accepted without a host: {text}"),
            }
        }
        Ok(ImageUrl::Data(bytes, _)) => assert!(bytes.len() <= 1 << 20),
        Err(error) => assert!(error.status().is_client_error(), "{error:?}"),
    }
});
