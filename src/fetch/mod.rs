//! Image URLs from untrusted requests, and the rules that keep fetching them from reaching
//! anything but the public internet.
//!
//! # Guarantees
//! - Only `https://` URLs of at most 2,048 bytes, without credentials, are accepted
//!   ([`RemoteUrl::parse`]); everything else is `400 invalid_request` naming the field.
//! - No connection is made to an address [`address::is_public`] refuses: private,
//!   loopback, link-local (cloud metadata at 169.254.169.254 included), CGN
//!   (100.64.0.0/10), multicast, unspecified, reserved and documentation ranges, and every
//!   IPv6 form that embeds one of them (IPv4-mapped, -compatible, NAT64, 6to4). A literal
//!   address is checked as parsed by the WHATWG URL rules, so decimal (`2130706433`), octal
//!   (`0177.0.0.1`), hex (`0x7f.1`) and short (`127.1`) spellings are the address they
//!   mean. A host name is resolved once, its addresses checked, and the connection made to
//!   a checked address; a redirect is checked the same way before it is followed.
//! - A fetch reads at most its size cap, within its timeout, and its bytes are sniffed like
//!   any source.

pub use crate::address;
#[cfg(any(feature = "fetch", feature = "upstream"))]
pub(crate) mod capped;
#[cfg(feature = "fetch")]
mod client;

#[cfg(feature = "fetch")]
pub(crate) use client::CheckedResolver;
#[cfg(feature = "fetch")]
pub use client::{FetchConfig, FetchConfigError, UrlFetcher};

use base64::Engine;
use bytes::Bytes;

pub use crate::job::{RemoteUrl, MAX_URL_LEN};
use crate::media::ImageKind;
use crate::GatewayError;

/// An image named by URL in a request: inline bytes of a `data:` URI, or a URL to fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageUrl {
    /// The decoded bytes of `data:image/(jpeg|png|gif|webp);base64,...`, their type sniffed.
    Data(Bytes, ImageKind),
    /// An `https://` URL.
    Remote(RemoteUrl),
}

impl ImageUrl {
    /// Checks `text` for the field `param`: a `data:` URI decoded to at most `max_bytes`,
    /// or an `https://` URL.
    pub fn parse(
        text: &str,
        param: &'static str,
        max_bytes: u64,
    ) -> Result<ImageUrl, GatewayError> {
        // `get`, not indexing: the fifth byte may fall inside a multi-byte character.
        let scheme = text.get(..5).filter(|s| s.eq_ignore_ascii_case("data:"));
        if let (Some(_), Some(rest)) = (scheme, text.get(5..)) {
            return data_uri(rest, param, max_bytes);
        }
        RemoteUrl::parse(text, param).map(ImageUrl::Remote)
    }
}

/// The rest of a `data:` URI after its scheme: `image/<type>;base64,<data>`.
fn data_uri(rest: &str, param: &'static str, max_bytes: u64) -> Result<ImageUrl, GatewayError> {
    let refuse =
        |why: String| GatewayError::invalid_request(format!("{param}: {why}"), Some(param));
    let (header, data) = rest
        .split_once(',')
        .ok_or_else(|| refuse("a data URI needs a comma before its data".into()))?;
    let header = header.to_ascii_lowercase();
    let media = header
        .strip_suffix(";base64")
        .ok_or_else(|| refuse("a data URI must be base64 (data:image/png;base64,...)".into()))?;
    if !matches!(
        media,
        "image/jpeg" | "image/png" | "image/gif" | "image/webp"
    ) {
        return Err(refuse(
            "a data URI must be image/jpeg, image/png, image/gif or image/webp".into(),
        ));
    }
    // Checked before decoding: base64 is 4 characters per 3 bytes.
    if (data.len() as u64 / 4).saturating_mul(3) > max_bytes {
        return Err(GatewayError::ImageTooLarge {
            limit: max_bytes,
            param,
        });
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| refuse("the data URI's base64 is malformed".into()))?;
    let kind = ImageKind::sniff(&bytes).ok_or(GatewayError::ImageTypeUnsupported { param })?;
    Ok(ImageUrl::Data(Bytes::from(bytes), kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_addresses_are_refused_in_every_spelling() {
        for url in [
            "https://127.0.0.1/a.png",
            "https://2130706433/a.png",
            "https://0x7f.1/a.png",
            "https://0177.0.0.1/a.png",
            "https://127.1/a.png",
            "https://0x7f000001/a.png",
            "https://0/a.png",
            "https://10.1.2.3/a.png",
            "https://172.16.0.1/a.png",
            "https://192.168.1.1/a.png",
            "https://169.254.169.254/latest/meta-data",
            "https://0xa9fea9fe/",
            "https://100.64.0.1/",
            "https://224.0.0.1/",
            "https://[::1]/",
            "https://[::]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:7f00:1]/",
            "https://[::127.0.0.1]/",
            "https://[fe80::1]/",
            "https://[fd00::1]/",
            "https://[64:ff9b::a9fe:a9fe]/",
            "https://[2002:7f00:1::]/",
            "https://[ff02::1]/",
        ] {
            let error = RemoteUrl::parse(url, "image_urls").unwrap_err();
            assert_eq!(error.param(), Some("image_urls"), "{url}");
        }
    }

    #[test]
    fn data_uris_decode_to_sniffed_images() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        let encoded = base64::engine::general_purpose::STANDARD.encode(png);
        let parsed = ImageUrl::parse(
            &format!("data:image/png;base64,{encoded}"),
            "image_urls",
            1024,
        );
        assert_eq!(
            parsed.unwrap(),
            ImageUrl::Data(Bytes::from_static(png), ImageKind::Png)
        );
        for (uri, code) in [
            ("data:image/svg+xml;base64,PHN2Zz4=", "invalid_request"),
            ("data:image/png,rawdata", "invalid_request"),
            ("data:image/png;base64", "invalid_request"),
            ("data:image/png;base64,!!!!", "invalid_request"),
            (
                "data:image/png;base64,aGVsbG8gd29ybGQh",
                "IMAGE_TYPE_UNSUPPORTED",
            ),
            ("data:text/plain;base64,aGk=", "invalid_request"),
        ] {
            let error = ImageUrl::parse(uri, "image_urls", 1024).unwrap_err();
            assert_eq!(error.code(), code, "{uri}");
        }
        // Found by fuzzing: a multi-byte character across the scheme's length.
        for text in ["dat\u{e9}x", "\u{1F600}\u{1F600}", "data\u{e9}"] {
            assert!(ImageUrl::parse(text, "image_urls", 1024).is_err(), "{text}");
        }
        let big = format!("data:image/png;base64,{}", "A".repeat(2000));
        let error = ImageUrl::parse(&big, "image_urls", 1024).unwrap_err();
        assert_eq!(error.code(), "IMAGE_TOO_LARGE");
    }

    #[test]
    fn only_https_without_credentials() {
        for url in [
            "http://example.com/a.png",
            "ftp://example.com/a.png",
            "file:///etc/passwd",
            "https://user:pw@example.com/a.png",
            "//example.com/a.png",
            "https://",
        ] {
            assert!(RemoteUrl::parse(url, "image_urls").is_err(), "{url}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(RemoteUrl::parse(&long, "image_urls").is_err());
        let ok = RemoteUrl::parse("https://example.com/a.png", "image_urls").unwrap();
        assert_eq!(ok.as_str(), "https://example.com/a.png");
        assert!(RemoteUrl::parse("https://8.8.8.8/a.png", "image_urls").is_ok());
    }
}
