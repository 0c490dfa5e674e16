//! The typed values of an edit request and the parsers that produce them.

use std::fmt;
use std::str::FromStr;

use crate::GatewayError;

/// The longest prompt, in characters, the spec allows.
pub const MAX_PROMPT_CHARS: usize = 32_000;

/// The output dimensions: `auto` (the source's own) or an exact `WIDTHxHEIGHT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Size {
    /// Let the backend choose; the reference backend keeps the source's dimensions.
    #[default]
    Auto,
    /// Exact pixel dimensions, both at least 1.
    Exact {
        /// Pixels across.
        width: u32,
        /// Pixels down.
        height: u32,
    },
}

impl FromStr for Size {
    type Err = GatewayError;

    /// `auto` or `WIDTHxHEIGHT`, at most 16 characters, both numbers at least 1. Whether a
    /// model supports the size is the backend's call (an unsupported size is refunded).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            GatewayError::invalid_request(
                "size must be `auto` or WIDTHxHEIGHT (at most 16 characters), e.g. 1024x1024",
                Some("size"),
            )
        };
        if s.len() > 16 {
            return Err(bad());
        }
        if s == "auto" {
            return Ok(Size::Auto);
        }
        let (w, h) = s.split_once('x').ok_or_else(bad)?;
        let number = |t: &str| {
            let digits = !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
            digits
                .then(|| t.parse::<u32>().ok())
                .flatten()
                .filter(|&v| v > 0)
        };
        match (number(w), number(h)) {
            (Some(width), Some(height)) => Ok(Size::Exact { width, height }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Auto => f.write_str("auto"),
            Size::Exact { width, height } => write!(f, "{width}x{height}"),
        }
    }
}

/// Declares a closed set of lowercase words that a field accepts.
macro_rules! word_enum {
    ($(#[$doc:meta])* $name:ident, $param:literal,
     { $($(#[$vdoc:meta])* $variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// The word as the API spells it.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $word,)+ }
            }
        }

        impl FromStr for $name {
            type Err = GatewayError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($word => Ok($name::$variant),)+
                    _ => Err(GatewayError::invalid_request(
                        concat!($param, " must be one of: ", $($word, " "),+).trim_end(),
                        Some($param),
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

word_enum!(
    /// Rendering quality.
    Quality, "quality", {
        #[default]
        /// The backend chooses.
        Auto = "auto",
        /// Best quality.
        High = "high",
        /// Balanced.
        Medium = "medium",
        /// Fastest.
        Low = "low",
    }
);

word_enum!(
    /// Background handling.
    Background, "background", {
        #[default]
        /// The backend chooses.
        Auto = "auto",
        /// Keep or produce an alpha channel (PNG and WebP only).
        Transparent = "transparent",
        /// Drop any alpha channel.
        Opaque = "opaque",
    }
);

word_enum!(
    /// The encoding of the returned images.
    OutputFormat, "output_format", {
        #[default]
        /// PNG.
        Png = "png",
        /// JPEG.
        Jpeg = "jpeg",
        /// WebP.
        Webp = "webp",
    }
);

word_enum!(
    /// What the client asked the images to be returned as. Always answered as `b64_json`:
    /// the gateway exposes no URLs, and accepting `url` keeps clients that send it working.
    ResponseFormat, "response_format", {
        #[default]
        /// Base64 in the JSON body.
        B64Json = "b64_json",
        /// Accepted and answered as `b64_json`.
        Url = "url",
    }
);

impl OutputFormat {
    /// The usual file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg => "jpg",
            OutputFormat::Webp => "webp",
        }
    }

    /// The MIME type of the encoding.
    pub fn mime(self) -> &'static str {
        match self {
            OutputFormat::Png => "image/png",
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Webp => "image/webp",
        }
    }
}

/// Checks that a prompt is not empty (after trimming) and at most 32,000 characters.
pub fn parse_prompt(prompt: String) -> Result<String, GatewayError> {
    if prompt.trim().is_empty() {
        return Err(GatewayError::invalid_request(
            "prompt must not be empty",
            Some("prompt"),
        ));
    }
    if prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(GatewayError::invalid_request(
            format!("prompt must be at most {MAX_PROMPT_CHARS} characters"),
            Some("prompt"),
        ));
    }
    Ok(prompt)
}

/// Parses `n` from its text form and checks `1..=max`.
pub fn parse_n(text: &str, max: u32) -> Result<u32, GatewayError> {
    let bad = || {
        GatewayError::invalid_request(
            format!("n must be an integer from 1 to {max} for this model"),
            Some("n"),
        )
    };
    let text = text.trim();
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match text.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!("auto".parse::<Size>().unwrap(), Size::Auto);
        assert_eq!(
            "1024x768".parse::<Size>().unwrap(),
            Size::Exact {
                width: 1024,
                height: 768
            }
        );
        for bad in [
            "",
            "0x5",
            "5x0",
            "x5",
            "5x",
            "1024X768",
            "-1x5",
            "+1x5",
            "1x1x1",
            "12345678x12345678",
            "99999999999x1",
            " 1x1",
            "auto ",
        ] {
            assert!(bad.parse::<Size>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn words() {
        assert_eq!("high".parse::<Quality>().unwrap(), Quality::High);
        assert_eq!("webp".parse::<OutputFormat>().unwrap(), OutputFormat::Webp);
        let err = "HIGH".parse::<Quality>().unwrap_err();
        assert_eq!(err.param(), Some("quality"));
        assert_eq!(
            err.to_string(),
            "quality must be one of: auto high medium low"
        );
        assert_eq!(OutputFormat::default(), OutputFormat::Png);
    }

    #[test]
    fn n_bounds() {
        assert_eq!(parse_n("1", 4).unwrap(), 1);
        assert_eq!(parse_n(" 4 ", 4).unwrap(), 4);
        for bad in ["0", "5", "-1", "1.0", "", "abc", "99999999999999"] {
            assert!(parse_n(bad, 4).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prompts() {
        assert!(parse_prompt("   ".into()).is_err());
        assert!(parse_prompt("é".repeat(MAX_PROMPT_CHARS)).is_ok());
        assert!(parse_prompt("a".repeat(MAX_PROMPT_CHARS + 1)).is_err());
    }
}
